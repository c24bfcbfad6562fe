"""The table a user reads before renting a TPU pod: each model's real training step compiled for
each topology on this CPU host (`python -m data2vec_jax.compile_for`), one row per compile.

  nohup .venv/bin/python bench/bench_compile_tpu.py > bench_compile_tpu.log 2>&1 &

Each row runs the command shown in its `command` column as a subprocess, appends its report to
bench/results.jsonl (bench 'compile_tpu') and rewrites the markdown table in --table (the one
in bench/README.md), so a run cut short keeps the rows it finished. Needs libtpu (`pip install -e '.[tpu]'`).
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
CHIPS = {"v5e-256": 256, "v5p-128": 64, "v6e-256": 256}
BATCH = {"v2 base": 64}  # sentences per update; 256 for the others (the paper's)
# One scanned block: the same step for a compile several times shorter than the default
# fully unrolled blocks (bench/README.md, "Before you rent a pod").
EXTRA = ["--config.execution.scan_unroll=1"]


def mesh_flags(model: str, topology: str, slices: int) -> list[str]:
  """Data parallel over as many chips as the batch has rows (the batch splits over data x
  fsdp), the rest tensor parallel; the default (data = every chip) where the batch covers them."""
  chips, batch = CHIPS[topology] * slices, BATCH.get(model, 256)
  if batch >= chips:
    return []
  return [f"--config.mesh.data={batch}", f"--config.mesh.tensor={chips // batch}"]


def default_rows() -> list[tuple[str, str, int, tuple[str, ...]]]:
  """(model, topology, slices, extra flags) in the order run: every model on v5e-256, v1 base
  on the other topologies, FSDP variants, then the rest (a run cut short keeps the first)."""
  rows = [(m, "v5e-256", 1, ()) for m in MODELS]
  rows += [("v1 base", t, s, ()) for t, s in TOPOLOGIES[1:]]
  rows += [
    ("v1 base", "v5e-256", 1, ("--config.mesh.data=16", "--config.mesh.fsdp=16")),
    ("v1 large", "v5e-256", 1, ("--config.mesh.data=16", "--config.mesh.fsdp=16")),
  ]
  rows += [(m, t, s, ()) for t, s in TOPOLOGIES[1:] for m in list(MODELS)[1:]]
  return rows


def command_for(
  model: str, topology: str, slices: int, extra: tuple[str, ...], out: str, search: int
) -> list[str]:
  cmd = [
    "python",
    "-m",
    "data2vec_jax.compile_for",
    f"--config=configs/pretrain.py:{MODELS[model]}",
    f"--topology={topology}",
    *([f"--slices={slices}"] if slices > 1 else []),
    *EXTRA,
    *(list(extra) or mesh_flags(model, topology, slices)),
    f"--search_compiles={search}",
    f"--out={out}",
  ]
  return cmd


def row_of(model: str, label: str, report: dict, command: list[str], wall_s: float) -> dict:
  gib = 2**30
  if not report.get("compiled"):
    return {"model": model, "topology": label, "error": report.get("error")}
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
    "topology": label,
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
  parser.add_argument(
    "--reuse", action="store_true", help="keep the rows whose report.json is already in --out"
  )
  # 0: the largest batch is the linear estimate from the one compile (each search compile
  # costs minutes on a loaded 2-core host).
  parser.add_argument("--search_compiles", type=int, default=0)
  parser.add_argument("--out", default="/tmp/compile_tpu")
  parser.add_argument("--table", default="", help="markdown table (default: <out>/table.md)")
  args = parser.parse_args(argv)
  args.table = args.table or os.path.join(args.out, "table.md")
  rows = []
  wanted = set(args.models.split(","))
  for model, topology, slices, extra in default_rows():
    if model not in wanted:
      continue
    spec = f"{topology}x{slices}"
    label = topology if slices == 1 else f"{slices} x {topology}"
    tag = "_".join(x.split(".")[-1] for x in extra)
    out = os.path.join(args.out, f"{model.replace(' ', '_')}_{topology}_x{slices}{tag}")
    command = command_for(model, topology, slices, extra, out, args.search_compiles)
    done = os.path.join(out, "report.json")
    if args.reuse and os.path.exists(done) and json.load(open(done)).get("compiled"):
      report = json.load(open(done))  # compiled by an earlier run of this script
      rows.append(row_of(model, label, report, command, report["compile_s"]))
      continue
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
      last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
      report = {"compiled": False, "topology": spec, "error": last[0][-300:]}
    row = row_of(model, label, report, command, wall)
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
  with open(args.table, "w") as f:
    f.write(markdown(rows))


if __name__ == "__main__":
  main()
