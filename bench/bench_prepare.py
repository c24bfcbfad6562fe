"""Corpus preparation speed: `data.prepare` with 1..N encoding workers, and as shards.

    python bench/bench_prepare.py [--copies 40] [--workers 1,2] [--shards 2] [--rounds 2]

The corpus is the offline Python-docs corpus (`data.offline_corpus`, ~86k tokens) written
`--copies` times into one text file; a sentencepiece model (--vocab_size) is trained on one copy
first and given to every run, so each run only reads, encodes and writes. Every setting runs
`python -m data2vec_jax.data.prepare` as a subprocess (wall clock, best of --rounds; and the CPU
seconds its prepare_stats.json records, which on a machine busy with other work say what idle
cores would give) and must write byte-identical outputs; `--shards n` runs n shard processes
at once (what n hosts of a pod do, here sharing this machine's cores) into one folder. Appends one record to
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


def _stats(out: str) -> dict:
  with open(os.path.join(out, sources.PREPARE_STATS_FILE)) as f:
    return json.load(f)


def _tokens(out: str) -> int:
  return int(_stats(out)["splits"]["train"]["tokens"])


def _best(commands: list[list[str]], outs: list[str], rounds: int) -> dict:
  """The fastest of `rounds` runs: wall seconds and the CPU seconds prepare_stats.json records
  (reading/writing process, encoding workers), summed over the processes run at once."""
  best = None
  for _ in range(rounds):
    seconds = _run_all(commands)
    if best is None or seconds < best["seconds"]:
      cpu = [_stats(o)["cpu_seconds"] for o in outs]
      best = {
        "seconds": seconds,
        "cpu_main": sum(c["main"] for c in cpu),
        "cpu_workers": sum(c["workers"] for c in cpu),
      }
  return best


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
    cores = common.available_cores()
    for workers in [int(w) for w in args.workers.split(",")]:
      out = os.path.join(tmp, f"w{workers}")
      cmd = _prepare_command(text, model, out, "--workers", str(workers))
      best = _best([cmd], [out], args.rounds)
      tokens = _tokens(out)
      if reference is None:
        reference = out
      for name in ("train.bin", "train.idx", "dict.txt"):  # the output is the same whatever N
        assert filecmp.cmp(os.path.join(reference, name), os.path.join(out, name), shallow=False)
      # On idle cores the run takes at least its busiest process's CPU time (the reader/writer's,
      # or one worker's share of the encoding) and all its CPU time spread over the cores: a
      # lower bound from CPU times, labelled as such.
      cpu = best["cpu_main"] + best["cpu_workers"]
      bound = (
        max(best["cpu_main"], best["cpu_workers"] / workers, cpu / cores) if workers > 1 else None
      )
      rows.append(
        {"setting": f"--workers {workers}", "processes": workers, **best, "idle_bound_s": bound}
      )
    if args.shards > 1:
      out = os.path.join(tmp, "sharded")
      n = args.shards
      cmds = [
        _prepare_command(text, model, out, "--shard", str(i), "--num_shards", str(n))
        for i in range(n)
      ]
      shard_outs = [os.path.join(out, f"shard-{i:05d}-of-{n:05d}") for i in range(n)]
      best = _best(cmds, shard_outs, args.rounds)
      shard_tokens = sum(_tokens(os.path.join(out, f"shard-{i:05d}-of-{n:05d}")) for i in range(n))
      # The same lines; the n - 1 separators between shards are added when they are read.
      assert shard_tokens + n - 1 == tokens, (shard_tokens, tokens)
      rows.append(
        {
          "setting": f"{n} shards at once",
          "processes": n,
          **best,
          "idle_bound_s": best["cpu_main"] / min(n, cores),
        }
      )

  base, base_cpu = rows[0]["seconds"], rows[0]["cpu_main"]
  for r in rows:
    r["tokens_per_s"] = round(tokens / r["seconds"])
    r["speedup"] = round(base / r["seconds"], 2)
    if r["idle_bound_s"]:
      r["idle_bound_speedup"] = round(base_cpu / r["idle_bound_s"], 2)
    for key in ("seconds", "cpu_main", "cpu_workers", "idle_bound_s"):
      r[key] = round(r[key], 2) if r[key] is not None else None
  common.print_table(
    rows,
    ["setting", "seconds", "tokens_per_s", "speedup", "cpu_main", "cpu_workers"]
    + ["idle_bound_s", "idle_bound_speedup"],
  )
  common.append_result(
    "prepare",
    f"host CPU, {common.available_cores()} cores (sentencepiece encoding; no accelerator)",
    {
      "corpus": f"offline corpus x {args.copies}",
      "note": "seconds = wall (best of rounds); cpu_* = CPU seconds of the reading/writing "
      "process(es) and of the encoding workers; idle_bound_s = max(cpu_main, cpu_workers / N, "
      "(cpu_main + cpu_workers) / cores): the least wall time on this machine's cores if idle "
      "(a bound from CPU times, not a measurement)",
      "tokens": tokens,
      "vocab_size": args.vocab_size,
      "rounds": args.rounds,
      "settings": rows,
    },
  )
  print(f"appended to {common.RESULTS_PATH}")


if __name__ == "__main__":
  main()
