"""Compile the step a config would run for a TPU topology, on any machine, before renting it.

  python -m data2vec_jax.compile_for --config configs/pretrain.py:model=base,recipe=release \
      --topology v5e-256 [--slices 2] [--config.mesh.fsdp=8] [--out compile_report]
  python -m data2vec_jax.compile_for --config configs/finetune.py:task=rte --model base \
      --topology v5e-8

It builds the exact jitted step `train.py` (or `finetune.py`) would run for the config (same
recipe, execution plan, mesh and axis rules, micro-batches, remat, dtypes; `train.step_setup`),
lowers it with `jax.ShapeDtypeStruct` inputs (nothing is allocated) and compiles it with the TPU
compiler of the `libtpu` wheel for abstract devices of the described topology
(`speed.tpu_topology`). It prints and writes to `--out`: whether it compiled; per-chip memory
(parameters, optimizer state, EMA, batch, temporaries) against the chip's HBM; whether it fits
and the largest global batch that does (a short search, one compile per batch tried); the
collectives of one step read from the optimized HLO (`speed.hlo_collectives`); and a roofline
step time with an ESTIMATED MFU (`speed.roofline`; FLOPs from `model.flops`, since XLA's
cost_analysis counts a loop body once). Files: report.json, step.hlo.txt (optimized HLO).

Pretraining rows are assumed full (T real tokens each, as the paper's complete_doc blocks nearly
are); `--packing largest` compiles the largest packed capacity instead of the unpacked step.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable

from absl import app, flags
from ml_collections import config_flags

from data2vec_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=False)
flags.DEFINE_string("topology", None, "TPU slice: v5e-256, v5p-128, v6e-256, v5e:16x16, ...")
flags.DEFINE_integer("slices", 1, "Slices of that topology joined over DCN (multi-slice).")
flags.DEFINE_string("out", "compile_report", "Folder for report.json and step.hlo.txt.")
flags.DEFINE_integer(
  "global_batch", 0, "Global batch to compile (0: the config's data / train batch size)."
)
flags.DEFINE_integer(
  "search_compiles",
  3,
  "Extra compiles spent finding the largest global batch that fits (0: no search).",
)
flags.DEFINE_enum(
  "packing", "none", ["none", "largest"], "Pretraining: unpacked rows or the largest capacity."
)
flags.DEFINE_integer(
  "vocab_size", 50265, "Vocabulary where the config takes it from the tokenizer (released BPE)."
)
flags.DEFINE_string("model", "base", "Fine-tuning: the pretrained architecture (tiny..large).")
flags.DEFINE_integer("seq_len", 512, "Fine-tuning: padded sentence length.")
flags.mark_flags_as_required(["config", "topology"])

PROG = "compile_for"


class CompileForError(ValueError):
  """The config, topology or flags cannot be compiled; the message says what to change."""


# --------------------------------------------------------------------------------------------
# What a compiled step reports


def shard_bytes(tree: Any) -> int:
  """Bytes one chip holds of a tree of ShapeDtypeStructs with NamedShardings (the largest
  shard, which is every shard for even splits)."""
  import jax
  import numpy as np

  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def full_bytes(tree: Any) -> int:
  """Bytes of a tree of ShapeDtypeStructs, unsharded."""
  import jax
  import numpy as np

  return sum(
    math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    for leaf in jax.tree_util.tree_leaves(tree)
  )


def compile_report(
  compiled: Any,
  *,
  mesh: Any,
  chip: Any,
  parts: dict[str, int],
  model_flops: float,
  devices_slice: list[int] | None,
) -> dict[str, Any]:
  """Memory, collectives and roofline of one compiled step (see the module docstring).

  parts: per-chip bytes of parameters / optimizer_state / ema / batch; model_flops: the
  step's FLOPs over all chips; devices_slice: slice index of each mesh position (flat).
  """
  from data2vec_jax.speed import hlo_collectives, roofline

  memory = roofline.memory_per_chip(compiled.memory_analysis(), parts, chip.hbm_bytes)
  hlo = compiled.as_text()
  ops = hlo_collectives.collectives(hlo, tuple(mesh.devices.shape), tuple(mesh.axis_names))
  ici, dcn = _link_traffic(ops, devices_slice)
  cost = _xla_cost(compiled)
  xla_bytes = float(cost.get("bytes accessed", 0.0))
  loops = " while(" in hlo
  # XLA counts a loop body once: with loops its bytes are a floor; the state is read and written
  # and every temporary written and read at least once in any case.
  hbm_bytes = max(xla_bytes, 2.0 * memory.arguments + 2.0 * memory.temp)
  estimate = roofline.estimate(
    chip,
    flops_per_chip=model_flops / mesh.devices.size,
    hbm_bytes=hbm_bytes,
    ici_bytes=ici,
    dcn_bytes=dcn,
  )
  return {
    "memory_per_chip": memory.to_dict(),
    "collectives": hlo_collectives.summarize(ops),
    "roofline_estimate": estimate.to_dict(),
    "xla_cost_analysis": {
      "flops": float(cost.get("flops", 0.0)),
      "bytes_accessed": xla_bytes,
      "has_loops_counted_once": loops,
      "note": "per chip; a loop body is counted once: not used for the estimate's FLOPs",
    },
    "hlo": hlo,
  }


def _link_traffic(ops: list, devices_slice: list[int] | None) -> tuple[float, float]:
  """(ICI bytes, DCN bytes) per chip of one step's collectives `ops` (hlo_collectives)."""
  from data2vec_jax.speed import hlo_collectives

  ici, dcn = 0.0, 0.0
  for op in ops:
    crosses = devices_slice is not None and "data" in op.axes and len(set(devices_slice)) > 1
    traffic = op.traffic_bytes * op.count
    if crosses:
      # Hierarchical: within the slice over ICI, then 1/(chips of the group in a slice) of
      # the buffer across the slices over DCN.
      slices = len(set(devices_slice))
      per_slice = max(1, op.group_size // slices)
      across = hlo_collectives.Collective(op.kind, op.bytes // per_slice, slices, (), 1)
      dcn += across.traffic_bytes * op.count
      ici += traffic
    else:
      ici += traffic
  return ici, dcn


def _xla_cost(compiled: Any) -> dict[str, Any]:
  """XLA's cost analysis of the compiled step (empty where it gives none)."""
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):  # older JAX: one dict per program
    cost = cost[0] if cost else {}
  return cost


def search_largest_batch(
  fits_at: Callable[[int], tuple[bool, int]],
  start: int,
  first: tuple[bool, int],
  granule: int,
  hbm: float,
  compiles: int,
) -> dict[str, Any]:
  """The largest multiple of `granule` whose step fits, in at most `compiles` extra compiles.

  fits_at(B) -> (fits, total bytes per chip); `first` is its value at `start`. Each guess is the
  straight line through the two nearest measured points (memory is affine in the batch), kept
  strictly between the largest batch known to fit and the smallest known not to; when the line
  leaves that interval, the guess doubles (or halves) or bisects.
  """
  t0 = time.time()
  points = {start: first}
  tried = [{"global_batch": start, "fits": first[0], "total_bytes": first[1]}]
  for _ in range(compiles):
    fit = [b for b, (ok, _) in points.items() if ok]
    over = [b for b, (ok, _) in points.items() if not ok]
    lo, hi = max(fit, default=0), min(over, default=None)
    if hi is not None and hi - lo <= granule:
      break
    guess = _kept_between(_line_guess(points, start, hbm), lo, hi, granule)
    if guess <= 0 or guess in points:
      break
    points[guess] = fits_at(guess)
    tried.append({"global_batch": guess, "fits": points[guess][0], "total_bytes": points[guess][1]})
  fit = [b for b, (ok, _) in points.items() if ok]
  over = [b for b, (ok, _) in points.items() if not ok]
  return {
    "largest_fitting": max(fit, default=None),
    "smallest_not_fitting": min(over, default=None),
    "exact": bool(fit and over and min(over) - max(fit) <= granule),
    "granule": granule,
    "tried": tried,
    "search_s": time.time() - t0,
  }


def _line_guess(points: dict[int, tuple[bool, int]], start: int, hbm: float) -> float | None:
  """The batch where the line through the smallest and largest measured batches reaches `hbm`
  (from one point, `start`: in proportion to its memory); None where no line rises."""
  ordered = sorted(points)
  guess = None
  if len(ordered) >= 2:
    (b0, (_, m0)), (b1, (_, m1)) = (
      (ordered[0], points[ordered[0]]),
      (ordered[-1], points[ordered[-1]]),
    )
    if m1 != m0:
      slope = (m1 - m0) / (b1 - b0)
      guess = b0 + (hbm - m0) / slope if slope > 0 else None
  else:
    ok, used = points[start]
    if used > 0:
      guess = start * hbm / used  # proportional: a first guess above or below
  return guess


def _kept_between(guess: float | None, lo: int, hi: int | None, granule: int) -> int:
  """`guess` as a multiple of `granule` strictly between `lo` (fits) and `hi` (does not; None:
  unknown); without a usable guess, double `lo` or bisect."""
  if guess is None or not math.isfinite(guess):
    guess = 2 * lo if hi is None else (lo + hi) / 2
  guess = int(guess // granule) * granule
  upper = hi - granule if hi is not None else None
  if guess <= lo:
    guess = lo + granule if hi is None else (lo + hi) // 2 // granule * granule
  if upper is not None and guess > upper:
    guess = upper
  return guess


def linear_largest_batch(memory: dict[str, Any], batch: int, granule: int) -> int | None:
  """The largest multiple of `granule` that fits if the temporaries grow in proportion to the
  batch and nothing else does (an estimate from one compile, a lower bound where part of the
  temporaries is fixed; the search compiles to check). None without temporaries to scale."""
  fixed = memory["total"] - memory["temp"]
  per_row = memory["temp"] / batch
  if per_row <= 0:
    return None
  return max(0, int((memory["hbm"] - fixed) / per_row) // granule * granule)


# --------------------------------------------------------------------------------------------
# Building the step of a config


def _is_finetune(config) -> bool:
  return "task" in config and "init" in config


def _pretrain_case(config, devices, vocab_size: int, packing_mode: str) -> dict[str, Any]:
  """(compile(B) -> report, granule, default batch) for a pretraining config."""
  from data2vec_jax.runtime import sharding as sharding_lib
  from data2vec_jax.train import step_setup
  from data2vec_jax.train.run import resolve

  if int(config.model.get("vocab_size", -1) or -1) <= 0:
    config.model.vocab_size = vocab_size
  if not config.data.get("path"):
    config.data.path = "(not read by compile_for)"  # validation asks for one; nothing reads it
  try:
    run = resolve(config, devices=devices)
  except ValueError as e:
    raise CompileForError(str(e)) from e
  seq_len = int(config.data.tokens_per_sample)
  vocab = int(config.model.vocab_size)
  setup = step_setup.build(run.with_vocabulary(vocab, vocab - 1), seq_len)
  step = setup.make_step()
  groups = sharding_lib.data_parallel_size(setup.mesh)
  granule = groups * setup.plan.micro_batches
  objective = setup.recipe.objective
  masked = float(config.masking.mask_prob)
  flops_per_token = setup.plan.flops_per_token(
    setup.recipe.model, objective, masked_fraction=masked
  )
  state_parts = _state_bytes(setup.abstract_state, shard_bytes)

  def lower(batch: int):
    packing = None
    if packing_mode == "largest" and setup.plan.pack_tokens:
      packing = _largest_packing(setup.plan, batch, groups, seq_len)
    structs = setup.batch_structs(batch, seq_len)
    with sharding_lib.activate(setup.mesh):
      lowered = step.lower(setup.abstract_state, structs, packing)
    parts = dict(state_parts, batch=shard_bytes(structs))
    return lowered, parts, {"packing": None if packing is None else vars(packing)}

  return {
    "lower": lower,
    "mesh": setup.mesh,
    "granule": granule,
    "default_batch": int(config.data.global_batch_size),
    "flops": lambda batch: flops_per_token * batch * seq_len,
    "full_state_bytes": _state_bytes(setup.abstract_state, full_bytes),
    "describe": {
      "kind": "pretrain",
      "objective": objective.kind,
      **_model_description(setup.recipe.model),
      "micro_batches": setup.plan.micro_batches,
      "seq_len": seq_len,
      "flops_per_token": flops_per_token,
      "flops_note": "model.flops at masked_fraction = masking.mask_prob, every row full",
    },
  }


def _state_bytes(
  abstract_state: Any, measure: Callable[[Any], int], *, ema: bool = True
) -> dict[str, int]:
  """Bytes of the train state's parts as `measure` (shard_bytes, full_bytes) counts them; no
  EMA teacher (0) with `ema=False`."""
  return {
    "parameters": measure(abstract_state.params),
    "optimizer_state": measure(abstract_state.opt_state),
    "ema": measure(abstract_state.ema_params) if ema else 0,
  }


def _largest_packing(plan: Any, batch: int, groups: int, seq_len: int) -> Any:
  """The PackingSpec of the plan's largest packed capacity for a global `batch` of full rows
  (None where one bucket step covers a group's tokens)."""
  from data2vec_jax.speed.packing import PackingSpec

  per_group = batch // (groups * plan.micro_batches) * seq_len
  step_size = max(1, math.ceil(per_group / plan.pack_buckets))
  return PackingSpec(groups, per_group - step_size) if per_group > step_size else None


def _model_description(model: Any) -> dict[str, Any]:
  """The report's facts of a pretraining model config: its sizes, dtype and remat settings."""
  return {
    "model": {
      k: getattr(model, k)
      for k in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size")
    },
    "dtype": model.dtype,
    "remat_policy": model.remat_policy,
    "scan_unroll": model.scan_unroll,
  }


def _finetune_case(
  config, devices, vocab_size: int, model_name: str, seq_len: int
) -> dict[str, Any]:
  """The fine-tuning step of `config` for the `model_name` architecture (no weights read)."""
  from data2vec_jax.configs import pretrain  # packaged: in a checkout and without one
  from data2vec_jax.finetune import step_setup as finetune_setup
  from data2vec_jax.model import flops as flops_lib
  from data2vec_jax.model.config import EncoderConfig
  from data2vec_jax.runtime import sharding as sharding_lib

  if model_name not in pretrain.MODEL_SIZES:
    raise CompileForError(f"--model={model_name!r}; known: {sorted(pretrain.MODEL_SIZES)}")
  model_config = EncoderConfig(
    vocab_size=vocab_size, max_positions=514, pad_id=1, **pretrain.MODEL_SIZES[model_name]
  )
  # The settings ask for weights and data; neither is read here.
  if not config.init:
    config.init = "(not read by compile_for)"
  if not config.data.get("path"):
    config.data.path = "(not read by compile_for)"
  try:
    setup = finetune_setup.build(config, model_config, devices=devices)
  except ValueError as e:
    raise CompileForError(str(e)) from e
  step = setup.make_step()
  granule = sharding_lib.data_parallel_size(setup.mesh)
  per_token = 3.0 * flops_lib.encoder_forward_flops_per_token(model_config, seq_len)
  parts_state = _state_bytes(setup.abstract_state, shard_bytes, ema=False)

  def lower(batch: int):
    structs = setup.batch_structs(batch, seq_len)
    with sharding_lib.activate(setup.mesh):
      lowered = step.lower(setup.abstract_state, structs)
    return lowered, dict(parts_state, batch=shard_bytes(structs)), {}

  return {
    "lower": lower,
    "mesh": setup.mesh,
    "granule": granule,
    "default_batch": setup.settings.batch_size,
    "flops": lambda batch: per_token * batch * seq_len,
    "full_state_bytes": _state_bytes(setup.abstract_state, full_bytes, ema=False),
    "describe": {
      "kind": "finetune",
      "task": str(config.task),
      "model": model_name,
      "seq_len": seq_len,
      "num_labels": setup.settings.num_labels,
      "flops_per_token": per_token,
      "flops_note": "3 x encoder forward (classifier head not counted), every row full",
    },
  }


def run(
  config,
  topology_name: str,
  *,
  slices: int = 1,
  out: str | None = None,
  global_batch: int = 0,
  search_compiles: int = 0,
  vocab_size: int = 50265,
  packing: str = "none",
  finetune_model: str = "base",
  finetune_seq_len: int = 512,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Compiles `config`'s step for the topology; returns the report (written to `out`)."""
  import jax

  topology, devices = _topology_devices(topology_name, slices)
  config = config.copy_and_resolve_references()
  if slices > 1 and int(config.mesh.get("slices", 1)) == 1:
    config.mesh.slices = slices
  if _is_finetune(config):
    case = _finetune_case(config, devices, vocab_size, finetune_model, finetune_seq_len)
  else:
    case = _pretrain_case(config, devices, vocab_size, packing)
  mesh = case["mesh"]
  batch = _checked_batch(global_batch or case["default_batch"], case["granule"])
  chip = topology.chip
  log(
    f"{PROG}: {topology.describe()} ({topology.name}, {len(devices)} chips), mesh "
    f"{dict(mesh.shape)}, global batch {batch}"
  )
  compile_at = functools.partial(_compile_at, case, chip)
  main = _compile_first(compile_at, batch, topology, out)
  hlo = main.pop("hlo")
  memory = main["memory_per_chip"]
  log(f"{PROG}: compiled in {main['compile_s']:.1f} s")
  linear = linear_largest_batch(memory, batch, case["granule"])
  search = _search(compile_at, log, main, case["granule"], chip.hbm_bytes, search_compiles)
  est = main["roofline_estimate"]
  report = {
    "compiled": True,
    **_hardware_record(topology, len(devices), mesh),
    "step": case["describe"],
    "state_bytes_unsharded": case["full_state_bytes"],
    **main,
    "largest_batch_linear_estimate": linear,
    "largest_batch_search": search,
    "tokens_per_s_estimate": batch * case["describe"]["seq_len"] / est["step_s"],
    "jax": jax.__version__,
  }
  _write(out, report, hlo)
  for line in format_report(report):
    log(line)
  return report


def _topology_devices(topology_name: str, slices: int) -> tuple[Any, list]:
  """The described topology and its abstract devices (`speed.tpu_topology`)."""
  from data2vec_jax.speed import tpu_topology

  try:
    topology = tpu_topology.parse_topology(topology_name, slices)
    devices = tpu_topology.topology_devices(topology)
  except ValueError as e:
    raise CompileForError(str(e)) from e
  return topology, devices


def _checked_batch(batch: int, granule: int) -> int:
  if batch % granule:
    raise CompileForError(
      f"global batch {batch} does not split over data x fsdp x micro-batches = "
      f"{granule}; use a multiple of it"
    )
  return batch


def _compile_at(case: dict[str, Any], chip: Any, batch: int) -> dict[str, Any]:
  """Lower and compile the case's step at global `batch`: its `compile_report`, with the
  lowering's extras, `compile_s` (lowering + compiling) and `global_batch`."""
  t0 = time.time()
  lowered, parts, extra = case["lower"](batch)
  compiled = lowered.compile()
  seconds = time.time() - t0
  mesh = case["mesh"]
  report = compile_report(
    compiled,
    mesh=mesh,
    chip=chip,
    parts=parts,
    model_flops=case["flops"](batch),
    devices_slice=[int(getattr(d, "slice_index", 0) or 0) for d in mesh.devices.flat],
  )
  report.update(extra, compile_s=seconds, global_batch=batch)
  return report


def _compile_first(
  compile_at: Callable[[int], dict[str, Any]], batch: int, topology: Any, out: str | None
) -> dict[str, Any]:
  """`compile_at(batch)`; where XLA fails, a report saying so (in `out`) and one clear error."""
  try:
    return compile_at(batch)
  except Exception as e:  # noqa: BLE001 - XLA's errors: report them, not a traceback
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    report = {"compiled": False, "error": f"{type(e).__name__}: {message}"}
    _write(out, report, None)
    raise CompileForError(f"the step did not compile for {topology.describe()}: {message}")


def _search(
  compile_at: Callable[[int], dict[str, Any]],
  log: Callable[[str], None],
  first: dict[str, Any],
  granule: int,
  hbm: float,
  compiles: int,
) -> dict[str, Any] | None:
  """`search_largest_batch` from the `first` compile's report, one logged compile per batch
  tried; None with no compiles to spend."""
  if compiles <= 0:
    return None

  def fits_at(b: int) -> tuple[bool, int]:
    r = compile_at(b)
    log(
      f"{PROG}:   batch {b}: {r['memory_per_chip']['total'] / 2**30:.2f} GiB per chip "
      f"({'fits' if r['memory_per_chip']['fits'] else 'does not fit'}, {r['compile_s']:.0f} s)"
    )
    return r["memory_per_chip"]["fits"], r["memory_per_chip"]["total"]

  memory = first["memory_per_chip"]
  start = (memory["fits"], memory["total"])
  return search_largest_batch(fits_at, first["global_batch"], start, granule, hbm, compiles)


def _hardware_record(topology: Any, chips: int, mesh: Any) -> dict[str, Any]:
  """The report's topology, chip and mesh."""
  chip = topology.chip
  return {
    "topology": topology.describe(),
    "topology_name": topology.name,
    "slices": topology.slices,
    "chips": chips,
    "chip": {
      "name": chip.name,
      "peak_bf16_flops": chip.peak_bf16_flops,
      "hbm_bytes": chip.hbm_bytes,
      "hbm_bytes_per_s": chip.hbm_bytes_per_s,
      "ici_bytes_per_s": chip.ici_bytes_per_s,
      "dcn_bytes_per_s": chip.dcn_bytes_per_s,
      "source": chip.source,
    },
    "mesh": {**{k: int(v) for k, v in mesh.shape.items()}, "slices": topology.slices},
  }


def format_report(report: dict[str, Any]) -> list[str]:
  """The human-readable summary printed after a compile."""
  gib = 2**30
  m = report["memory_per_chip"]
  e = report["roofline_estimate"]
  lines = [
    f"{PROG}: {report['topology']} mesh {report['mesh']} global batch {report['global_batch']}",
    f"  memory per chip: parameters {m['parameters'] / gib:.2f} GiB, optimizer state "
    f"{m['optimizer_state'] / gib:.2f}, EMA {m['ema'] / gib:.2f}, batch {m['batch'] / gib:.3f}, "
    f"temporaries {m['temp'] / gib:.2f}, code {m['code'] / gib:.2f}: total "
    f"{m['total'] / gib:.2f} of {m['hbm'] / gib:.0f} GiB HBM -> "
    + ("FITS" if m["fits"] else "DOES NOT FIT"),
  ]
  lines.append(
    f"  largest global batch that fits, estimated (temporaries in proportion to the batch): "
    f"{report['largest_batch_linear_estimate'] or 'unknown (no temporaries to scale)'}"
  )
  s = report.get("largest_batch_search")
  if s:
    bound = f" (< {s['smallest_not_fitting']})" if s["smallest_not_fitting"] else ""
    lines.append(
      f"  largest global batch that fits: {s['largest_fitting']}{bound}, "
      f"{'exact to ' + str(s['granule']) if s['exact'] else 'not narrowed down fully'}; "
      f"{len(s['tried'])} compiles, search {s['search_s']:.0f} s"
    )
  lines.append("  collectives per step (per chip):")
  for row in report["collectives"]:
    lines.append(
      f"    {row['kind']:<18} over {'x'.join(row['axes']) or '-':<18} x{row['count']:<5} "
      f"{row['bytes'] / 2**20:10.1f} MiB, link traffic {row['traffic_bytes'] / 2**20:10.1f} MiB"
    )
  lines.append(
    f"  ESTIMATED step time (roofline, not a measurement): {e['step_s'] * 1e3:.1f} ms = "
    f"max(compute {e['compute_s'] * 1e3:.1f}, HBM {e['hbm_s'] * 1e3:.1f}) + ICI "
    f"{e['ici_s'] * 1e3:.1f} + DCN {e['dcn_s'] * 1e3:.1f} ms; ESTIMATED MFU "
    f"{e['estimated_mfu']:.0%}"
  )
  return lines


def _write(out: str | None, report: dict[str, Any], hlo: str | None) -> None:
  if not out:
    return
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2, default=str)
  if hlo is not None:
    with open(os.path.join(out, "step.hlo.txt"), "w") as f:
      f.write(hlo)


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.WARNING)
  cli.run_reporting_errors(
    PROG,
    lambda: run(
      FLAGS.config,
      FLAGS.topology,
      slices=FLAGS.slices,
      out=FLAGS.out,
      global_batch=FLAGS.global_batch,
      search_compiles=FLAGS.search_compiles,
      vocab_size=FLAGS.vocab_size,
      packing=FLAGS.packing,
      finetune_model=FLAGS.model,
      finetune_seq_len=FLAGS.seq_len,
    ),
    (CompileForError,),
    "fix the flags and run it again",
  )


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this host runs nothing: no accelerator needed
  sys.path.insert(0, os.getcwd())  # configs/ of the checkout, as train.py finds it
  app.run(main, flags_parser=lambda argv: cli.parse_flags(PROG, argv, config_module="pretrain"))
