"""The table a user reads before renting a TPU pod: each model's real training step compiled for
each topology on this CPU host (`python -m data2vec_jax.compile_for`), one row per compile.

  nohup .venv/bin/python bench/bench_compile_tpu.py > bench_compile_tpu.log 2>&1 &

Each row runs the command shown in its `command` column as a subprocess, appends its report to
bench/results.jsonl (bench 'compile_tpu') and rewrites the markdown table in --table, so a run
cut short keeps the rows it finished. Needs libtpu (`pip install -e '.[tpu]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODELS = {
  # name -> config arg (the paper's 256 x 512 batch for v1 and MLM; v2's 64 sentences x 8 clones)
  "v1 base": "model=base,recipe=release",
  "v1 large": "model=large,recipe=release",
  "v2 base": "model=base,recipe=data2vec2",
  "MLM base": "model=base,recipe=roberta",
}
TOPOLOGIES = [("v5e-256", 1), ("v5e-256", 2), ("v5p-128", 1), ("v6e-256", 1)]
# One scanned block: the same step for a compile several times shorter than the default
# fully unrolled blocks (bench/README.md, "Before you rent a pod").
EXTRA = ["--config.execution.scan_unroll=1"]


def command_for(model: str, topology: str, slices: int, out: str, search: int) -> list[str]:
  cmd = [
    "python",
    "-m",
    "data2vec_jax.compile_for",
    f"--config=configs/pretrain.py:{MODELS[model]}",
    f"--topology={topology}",
    *EXTRA,
    f"--search_compiles={search}",
    f"--out={out}",
  ]
  if slices > 1:
    cmd.insert(5, f"--slices={slices}")
  return cmd


def row_of(model: str, report: dict, command: list[str], wall_s: float) -> dict:
  gib = 2**30
  if not report.get("compiled"):
    return {"model": model, "topology": report.get("topology", "?"), "error": report.get("error")}
  m, e, s = report["memory_per_chip"], report["roofline_estimate"], report["largest_batch_search"]
  collectives = sum(r["count"] for r in report["collectives"])
  traffic = sum(r["traffic_bytes"] for r in report["collectives"])
  largest = f"~{report['largest_batch_linear_estimate']} (est.)"
  if s:
    largest = str(s["largest_fitting"])
    if s["smallest_not_fitting"]:
      largest += f" (< {s['smallest_not_fitting']})"
    elif s["largest_fitting"]:
      largest = f">= {largest}"
  mesh = report["mesh"]
  return {
    "model": model,
    "topology": report["topology"],
    "mesh": f"data={mesh['data']} fsdp={mesh['fsdp']} tensor={mesh['tensor']}"
    + (f" ({mesh['slices']} slices)" if mesh["slices"] > 1 else ""),
    "batch": report["global_batch"],
    "state_gib": (m["parameters"] + m["optimizer_state"] + m["ema"]) / gib,
    "temp_gib": m["temp"] / gib,
    "total_gib": m["total"] / gib,
    "hbm_gib": m["hbm"] / gib,
    "fits": m["fits"],
    "largest": largest,
    "collectives": collectives,
    "traffic_mib": traffic / 2**20,
    "step_ms": e["step_s"] * 1e3,
    "compute_ms": e["compute_s"] * 1e3,
    "comm_ms": (e["ici_s"] + e["dcn_s"]) * 1e3,
    "mfu": e["estimated_mfu"],
    "compile_s": report["compile_s"],
    "search_s": s["search_s"] if s else 0.0,
    "wall_s": wall_s,
    "command": " ".join(shlex.quote(c) for c in command),
  }


def markdown(rows: list[dict]) -> str:
  head = (
    "| model | topology | mesh | per-chip state / temp / total (GiB) | fits | largest batch "
    "| collectives/step (link MiB/chip) | est. step (compute + comm) | est. MFU | compile here "
    "(+ search) |\n|---|---|---|---|---|---|---|---|---|---|\n"
  )
  lines = []
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['model']} | {r['topology']} | - | did not compile: {r['error']} |||||||")
      continue
    lines.append(
      f"| {r['model']} | {r['topology']} | {r['mesh']} | {r['state_gib']:.2f} / "
      f"{r['temp_gib']:.2f} / {r['total_gib']:.2f} of {r['hbm_gib']:.0f} | "
      f"{'yes' if r['fits'] else 'NO'} | {r['largest']} | {r['collectives']} "
      f"({r['traffic_mib']:.0f}) | {r['step_ms']:.0f} ms ({r['compute_ms']:.0f} + "
      f"{r['comm_ms']:.0f}) | {r['mfu']:.0%} | {r['compile_s']:.0f} s (+{r['search_s']:.0f} s) |"
    )
  commands = "\n".join(
    f"- {r['model']}, {r['topology']}: `{r['command']}`" for r in rows if "command" in r
  )
  return head + "\n".join(lines) + "\n\nCommands:\n\n" + commands + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--topologies", default=",".join(f"{t}x{s}" for t, s in TOPOLOGIES))
  # 0: the largest batch is the linear estimate from the one compile (each search compile
  # costs minutes on a loaded 2-core host).
  parser.add_argument("--search_compiles", type=int, default=0)
  parser.add_argument("--out", default="/tmp/compile_tpu")
  parser.add_argument("--table", default=os.path.join(common.BENCH_DIR, "compile_tpu_table.md"))
  args = parser.parse_args(argv)
  rows = []
  models, specs = args.models.split(","), args.topologies.split(",")
  # Every model on the first topology, then the first model on the others, then the rest: a
  # run cut short still has one full column and one full row.
  order = [(m, specs[0]) for m in models] + [(models[0], t) for t in specs[1:]]
  order += [(m, t) for t in specs[1:] for m in models[1:]]
  for model, spec in order:
    topology, slices = spec.rsplit("x", 1)
    out = os.path.join(args.out, f"{model.replace(' ', '_')}_{topology}_x{slices}")
    command = command_for(model, topology, int(slices), out, args.search_compiles)
    t0 = time.time()
    proc = subprocess.run(
      [sys.executable] + command[1:], cwd=common.REPO_ROOT, capture_output=True, text=True
    )
    wall = time.time() - t0
    print(proc.stdout[-3000:], flush=True)
    try:
      with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    except FileNotFoundError:
      report = {"compiled": False, "topology": spec, "error": proc.stderr.strip()[-300:]}
    row = row_of(model, report, command, wall)
    rows.append(row)
    common.append_result(
      "compile_tpu",
      f"{report.get('topology', spec)} (described; compiled on this host's CPU)",
      report | {"row": row},
      row_command=row.get("command"),
    )
    with open(args.table, "w") as f:
      f.write(markdown(rows))
    print(f"row done: {model} {spec} in {wall:.0f} s", flush=True)


if __name__ == "__main__":
  main()
