"""Host input-pipeline throughput: batches of masked sequences per second, on the offline corpus.

Builds the offline demo corpus (Python reference-manual prose), trains an ~8k sentencepiece
vocabulary, binarizes it (fairseq .bin/.idx), then times `BatchIterator` (fairseq span masking,
0.35 x 4, from `data2vec_jax.objective.masking`) in several settings. Prints a table and appends one JSON line
{command, git_commit, machine, device, results} to bench/results.jsonl.

    python bench/bench_input_pipeline.py [--seconds 3] [--global_batch_size 64] [--vocab_size 8000]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from data2vec_jax.data import pipeline, prepare
from data2vec_jax.data.offline_corpus import write_offline_corpus
from data2vec_jax.data.pipeline import BatchIterator, PipelineConfig, PrefetchIterator
from data2vec_jax.data.workers import WorkerPoolIterator


def _mask_fn(vocab, seed: int):
  try:
    from data2vec_jax.objective.masking import MaskingConfig, mask_tokens

    return functools.partial(
      mask_tokens,
      config=MaskingConfig(),
      seed=seed,
      mask_id=vocab.mask_id,
      vocab_size=vocab.vocab_size,
    ), "data2vec_jax.objective.masking.mask_tokens (0.35 x 4)"
  except ImportError:  # masking module not present: an equivalent fairseq span mask

    def fn(tokens, *, epoch, index):
      rng = np.random.default_rng(int(hash((seed, epoch, index)) % 1e6))
      sz = len(tokens)
      starts = rng.choice(sz, int(0.35 * sz / 4 + rng.random()), replace=False)
      idx = np.concatenate([starts + i for i in range(4)])
      sel = np.zeros(sz, bool)
      sel[idx[idx < sz]] = True
      return np.where(sel, vocab.mask_id, tokens).astype(np.int32), sel

    return fn, "local fairseq span mask (0.35 x 4)"


def _time(it, seconds: float, pad_id: int) -> dict:
  next(it)  # warm-up (first permutation, page-in of the memmap)
  n = real = padded = rows = 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    b = next(it)
    n += 1
    rows += b["target"].shape[0]
    real += int((b["target"] != pad_id).sum())
    padded += b["target"].size
  dt = time.perf_counter() - t0
  return {
    "batches": n,
    "seconds": round(dt, 3),
    "batches_per_s": round(n / dt, 2),
    "sequences_per_s": round(rows / dt, 1),
    "real_tokens_per_s": round(real / dt),
    "padded_tokens_per_s": round(padded / dt),
    "real_token_fraction": round(real / max(1, padded), 3),
  }


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--seconds", type=float, default=3.0, help="timing window per setting")
  p.add_argument("--global_batch_size", type=int, default=64)
  p.add_argument("--tokens_per_sample", type=int, default=512)
  p.add_argument("--vocab_size", type=int, default=8000)
  p.add_argument(
    "--workers", default="1,2", help="worker-process counts to time (data.workers), comma list"
  )
  p.add_argument(
    "--target_tokens_per_s",
    type=float,
    default=5.2e6,
    help="a host's need, for the worker-count projection (8 H100s at 50%% MFU, data2vec base)",
  )
  p.add_argument("--workdir", default=None, help="where to write the corpus (default: a temp dir)")
  p.add_argument(
    "--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl")
  )
  args = p.parse_args()

  work = args.workdir or tempfile.mkdtemp(prefix="d2v_bench_")
  t0 = time.perf_counter()
  corpus = write_offline_corpus(os.path.join(work, "corpus.txt"))
  t_corpus = time.perf_counter() - t0
  t0 = time.perf_counter()
  # sentencepiece 'bpe': the ~465 KB corpus is too small for an 8k unigram model (spm caps it ~3.3k).
  stats = prepare.main(
    [
      "--source",
      "text",
      "--path",
      corpus["path"],
      "--tokenizer",
      "sentencepiece",
      "--spm_vocab_size",
      str(args.vocab_size),
      "--spm_model_type",
      "bpe",
      "--output_dir",
      os.path.join(work, "bin"),
      "--log_seconds",
      "1e9",
    ]
  )
  t_prepare = time.perf_counter() - t0
  t0 = time.perf_counter()
  blocks, vocab = pipeline.build_block_dataset(
    {"source": "fairseq_bin", "path": os.path.join(work, "bin", "train")},
    tokens_per_sample=args.tokens_per_sample,
    break_mode="complete_doc",
  )
  t_blocks = time.perf_counter() - t0
  mask_fn, mask_name = _mask_fn(vocab, seed=1)
  identity = lambda tokens, *, epoch, index: (tokens, np.zeros(len(tokens), bool))  # noqa: E731

  settings = [
    ("no masking, pad=max", identity, "max", 0, 0),
    ("masking, pad=max", mask_fn, "max", 0, 0),
    ("masking, pad=bucket/64", mask_fn, "bucket", 0, 0),
    ("masking, pad=max, prefetch 2", mask_fn, "max", 2, 0),
  ]
  for workers in [int(w) for w in args.workers.split(",") if w]:
    settings.append((f"masking, pad=max, {workers} worker(s)", mask_fn, "max", 2, workers))
  results = []
  for name, fn, pad_to, prefetch, workers in settings:
    cfg = PipelineConfig(
      tokens_per_sample=args.tokens_per_sample,
      global_batch_size=args.global_batch_size,
      pad_to=pad_to,
    )
    it = BatchIterator(blocks, cfg, mask_fn=fn, pad_id=vocab.pad_id, bos_id=vocab.bos_id)
    if workers:
      it = WorkerPoolIterator(it, workers, buffer_per_worker=prefetch)
      for _ in range(2 * workers * prefetch):  # start-up: every worker up and its queue full
        next(it)
    elif prefetch:
      it = PrefetchIterator(it, buffer_size=prefetch)
    r = _time(it, args.seconds, vocab.pad_id)
    if prefetch or workers:
      it.close()
    results.append({"setting": name, "workers": workers, **r})
  by_workers = {r["workers"]: r["real_tokens_per_s"] for r in results if r["workers"]}
  projection = None
  if 1 in by_workers:
    per_worker = by_workers[1]
    projection = {
      "target_real_tokens_per_s": args.target_tokens_per_s,
      "real_tokens_per_s_per_worker": per_worker,
      "workers_needed_at_linear_scaling": int(np.ceil(args.target_tokens_per_s / per_worker)),
      "speedup_by_workers": {w: round(v / per_worker, 2) for w, v in sorted(by_workers.items())},
    }

  print(
    f"corpus: {corpus['documents']} docs, {corpus['sentences']} sentences, {corpus['bytes']} bytes "
    f"({t_corpus:.2f} s); prepare (spm train + binarize): {t_prepare:.2f} s, "
    f"{stats['splits']['train']['tokens']} tokens; blocks: {len(blocks)} sequences, "
    f"{blocks.num_tokens} tokens, {blocks.num_dropped} dropped ({t_blocks * 1e3:.1f} ms)"
  )
  print(
    f"masking: {mask_name}; global batch {args.global_batch_size} x {args.tokens_per_sample}, "
    f"vocab {vocab.vocab_size}"
  )
  hdr = f"{'setting':<32} {'batches/s':>10} {'seq/s':>9} {'real tok/s':>12} {'padded tok/s':>13} {'real %':>7}"
  print(hdr)
  print("-" * len(hdr))
  for r in results:
    print(
      f"{r['setting']:<32} {r['batches_per_s']:>10.2f} {r['sequences_per_s']:>9.1f} "
      f"{r['real_tokens_per_s']:>12,} {r['padded_tokens_per_s']:>13,} {100 * r['real_token_fraction']:>6.1f}"
    )
  if projection:
    print(
      f"workers: speed-up over 1 worker {projection['speedup_by_workers']}; at "
      f"{projection['real_tokens_per_s_per_worker']:,} real tokens/s per worker, "
      f"{projection['target_real_tokens_per_s']:,.0f}/s needs "
      f"{projection['workers_needed_at_linear_scaling']} workers (if they scale linearly)"
    )

  try:
    commit = (
      subprocess.run(
        ["git", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
      ).stdout.strip()
      or None
    )
  except OSError:
    commit = None
  record = {
    "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    "git_commit": commit,
    "machine": {
      "hostname": platform.node(),
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
    },
    "device": "host CPU (input pipeline only; no accelerator involved)",
    "results": {
      "benchmark": "input_pipeline",
      "masking": mask_name,
      "global_batch_size": args.global_batch_size,
      "tokens_per_sample": args.tokens_per_sample,
      "vocab_size": vocab.vocab_size,
      "num_sequences": len(blocks),
      "corpus_tokens": blocks.num_tokens,
      "prepare_seconds": round(t_prepare, 2),
      "settings": results,
      "worker_projection": projection,
    },
  }
  with open(args.results, "a") as f:
    f.write(json.dumps(record) + "\n")
  print(f"appended to {args.results}")


if __name__ == "__main__":
  main()
