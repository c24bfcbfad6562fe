"""Corpus preparation speed: `data.prepare` with 1..N encoding workers, and as shards.

    python bench/bench_prepare.py [--copies 40] [--workers 1,2] [--shards 2] [--rounds 2]

The corpus is the offline Python-docs corpus (`data.offline_corpus`, ~86k tokens) written
`--copies` times into one text file; a sentencepiece model (--vocab_size) is trained on one copy
first and given to every run, so each run only reads, encodes and writes. Every setting runs
`python -m data2vec_jax.data.prepare` as a subprocess (wall clock, best of --rounds) and must
write byte-identical outputs; `--shards n` runs n shard processes at once (what n hosts of a pod
do, here sharing this machine's cores) into one folder. Appends one record to
bench/results.jsonl (common.append_result).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time

import common
from data2vec_jax.data import offline_corpus, sources
from data2vec_jax.data.tokenizer import train_sentencepiece


def _prepare_command(text: str, model: str, out: str, *extra: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "data2vec_jax.data.prepare",
    "--source",
    "text",
    "--path",
    text,
    "--tokenizer",
    "sentencepiece",
    "--sentencepiece_model",
    model,
    "--output_dir",
    out,
    "--log_seconds",
    "1000",
    *extra,
  ]


def _run_all(commands: list[list[str]]) -> float:
  """Wall seconds for the commands run at once (all must succeed)."""
  t0 = time.perf_counter()
  procs = [subprocess.Popen(c, cwd=common.REPO_ROOT, stderr=subprocess.PIPE) for c in commands]
  for p in procs:
    _, err = p.communicate()
    if p.returncode:
      raise SystemExit(f"bench_prepare: prepare failed: {err.decode()[-2000:]}")
  return time.perf_counter() - t0


def _tokens(out: str) -> int:
  with open(os.path.join(out, sources.PREPARE_STATS_FILE)) as f:
    return int(json.load(f)["splits"]["train"]["tokens"])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--copies", type=int, default=40, help="copies of the offline corpus")
  p.add_argument("--workers", default="1,2", help="comma list of --workers settings")
  p.add_argument("--shards", type=int, default=2, help="also run this many shards at once (0: no)")
  p.add_argument("--vocab_size", type=int, default=3000)
  p.add_argument("--rounds", type=int, default=2, help="runs per setting; the best is reported")
  args = p.parse_args()

  with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
    one_copy = os.path.join(tmp, "one.txt")
    offline_corpus.write_offline_corpus(one_copy)
    text = os.path.join(tmp, "corpus.txt")
    with open(one_copy, encoding="utf-8") as f:
      body = f.read().rstrip("\n")
    with open(text, "w", encoding="utf-8") as f:
      f.write("\n\n".join([body] * args.copies) + "\n")
    model = os.path.join(tmp, "spm.model")
    docs = sources.read_text_documents(one_copy)
    train_sentencepiece((s for d in docs for s in d), model, vocab_size=args.vocab_size)

    rows = []
    reference = None
    for workers in [int(w) for w in args.workers.split(",")]:
      out = os.path.join(tmp, f"w{workers}")
      cmd = _prepare_command(text, model, out, "--workers", str(workers))
      seconds = min(_run_all([cmd]) for _ in range(args.rounds))
      tokens = _tokens(out)
      if reference is None:
        reference = out
      for name in ("train.bin", "train.idx", "dict.txt"):  # the output is the same whatever N
        assert filecmp.cmp(os.path.join(reference, name), os.path.join(out, name), shallow=False)
      rows.append({"setting": f"--workers {workers}", "processes": workers, "seconds": seconds})
    if args.shards > 1:
      out = os.path.join(tmp, "sharded")
      n = args.shards
      cmds = [
        _prepare_command(text, model, out, "--shard", str(i), "--num_shards", str(n))
        for i in range(n)
      ]
      seconds = min(_run_all(cmds) for _ in range(args.rounds))
      shard_tokens = sum(_tokens(os.path.join(out, f"shard-{i:05d}-of-{n:05d}")) for i in range(n))
      # The same lines; the n - 1 separators between shards are added when they are read.
      assert shard_tokens + n - 1 == tokens, (shard_tokens, tokens)
      rows.append({"setting": f"{n} shards at once", "processes": n, "seconds": seconds})

  base = rows[0]["seconds"]
  for r in rows:
    r["tokens_per_s"] = round(tokens / r["seconds"])
    r["speedup"] = round(base / r["seconds"], 2)
    r["seconds"] = round(r["seconds"], 2)
  common.print_table(rows, ["setting", "processes", "seconds", "tokens_per_s", "speedup"])
  common.append_result(
    "prepare",
    f"host CPU, {common.available_cores()} cores (sentencepiece encoding; no accelerator)",
    {
      "corpus": f"offline corpus x {args.copies}",
      "tokens": tokens,
      "vocab_size": args.vocab_size,
      "rounds": args.rounds,
      "settings": rows,
    },
  )
  print(f"appended to {common.RESULTS_PATH}")


if __name__ == "__main__":
  main()
