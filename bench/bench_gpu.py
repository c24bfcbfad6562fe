"""GPU throughput of the full data2vec train step: base model, seq 512, bf16 compute, MFU.

One command on a GPU machine:

    python bench/bench_gpu.py                       # batch sweep 8,16,32,... until OOM
    python bench/bench_gpu.py --batch 32,64 --remat none,dots,full --attention_dropout 0.1,0.0

What runs: `train_step.make_train_step` (student fwd/bwd, teacher fwd, EMA, AdamW, clip) on a
1-GPU mesh, EncoderConfig base (12 x 768, 12 heads, ffn 3072, vocab 50265), `dtype='bfloat16'`
with float32 parameters, `attention_impl='auto'` (cuDNN flash attention where the model allows
it: the teacher always; the student only when attention dropout is 0, because cuDNN has no
dropout on the probabilities -- see `model._resolve_attention_impl`), optional remat policy.
Rows are full 512-token blocks (fairseq `tokens_per_sample=512`, break mode 'complete') with
~30% of tokens replaced by <mask>.

Each (remat, attention dropout, batch) point runs in a fresh subprocess (an OOM cannot poison the
next point, and the sweep stops at the first OOM of each series). Reported per point: median step
time, real tokens/s, MFU = model FLOPs/s / peak, with model FLOPs per token from
`data2vec_jax.model.flops.train_flops_per_token` (docs/DESIGN.md §5, the measured masked fraction) and peak
from `flops.peak_flops_per_device`; HFU adds the FLOPs the remat policy recomputes (full: one
more student forward; dots_no_batch: the attention score/value matmuls 4*L*s*d; dots: none of the
matmuls). Peak device memory from `device.memory_stats()`.

`--frameworks jax,torch,torch_compile` adds the PyTorch reference step of bench_train_step.py
(bf16 autocast, SDPA attention, fused AdamW; eager and torch.compile) at the same batches on the
same GPU, and each JAX point's `ratio_jax_over_<framework>` of tokens/s.

XLA flags: `data2vec_jax.speed.xla_flags.GPU_FLAGS` (the ones `train.py` applies) are added to XLA_FLAGS
(`--xla_flags none` to compare against XLA's defaults).

No GPU: prints "no GPU: ..." and exits 2 (GPU detection runs in a subprocess with a timeout, so
it cannot hang). `--allow-cpu --tiny` runs the same code path on CPU with a tiny model (smoke test).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from data2vec_jax import cli  # noqa: E402

SEQ = 512
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def detect_gpu(timeout: float = 180.0) -> tuple[bool, str]:
  """(has GPU, description or reason). Runs in a subprocess so a broken driver cannot hang us."""
  code = "import jax\nds = jax.devices('gpu')\nprint('GPU_KINDS', len(ds), ds[0].device_kind)\n"
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  env.pop("JAX_PLATFORMS", None)
  try:
    proc = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
    )
  except subprocess.TimeoutExpired:
    return False, f"GPU detection timed out after {timeout:.0f}s"
  for line in proc.stdout.splitlines():
    if line.startswith("GPU_KINDS"):
      _, n, kind = line.split(" ", 2)
      return True, f"{n} x {kind}"
  err = (proc.stderr.strip().splitlines() or ["jax.devices('gpu') failed"])[-1]
  return False, f"jax found no GPU backend ({err[:300]})"


def model_config(args):
  from data2vec_jax.model.config import EncoderConfig

  shape = common.CONFIGS["tiny" if args.tiny else "base"]
  return EncoderConfig(
    **shape,
    max_positions=max(514, args.seq + 2),
    dropout=0.1,
    attention_dropout=args.attn_dropout_value,
    dtype=args.dtype,
    param_dtype="float32",
    attention_impl=args.attention_impl,
    remat_policy=args.remat_value,
  )


def recomputed_flops_per_token(cfg, seq: int, pruned_last_block: bool) -> float:
  """Matmul FLOPs the remat policy recomputes in the student backward, per token. The remat
  wraps the scanned blocks: with the pruned last block, that block (run outside the scan) is
  not recomputed."""
  from data2vec_jax.model import flops

  rematted = cfg.num_layers - 1 if pruned_last_block else cfg.num_layers
  if cfg.remat_policy == "full":
    return flops.encoder_forward_flops_per_token(cfg, seq) * rematted / cfg.num_layers
  if cfg.remat_policy == "dots_no_batch":
    return 4.0 * rematted * seq * cfg.hidden_size  # q.k^T and p.v are batched dots
  return 0.0


def worker(args) -> dict:
  import jax
  import numpy as np

  from data2vec_jax.model import encoder as model_lib
  from data2vec_jax.model import flops
  from data2vec_jax.objective.ema import EMAConfig
  from data2vec_jax.objective.loss import ObjectiveConfig
  from data2vec_jax.runtime import sharding as sharding_lib
  from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer
  from data2vec_jax.train import state as train_state_lib

  device = jax.devices()[0]
  cfg = model_config(args)
  recipe = train_state_lib.Recipe(
    model=cfg,
    objective=ObjectiveConfig(
      average_top_k_layers=min(10, cfg.num_layers), mask_id=common.mask_id_for(cfg.vocab_size)
    ),
    ema=EMAConfig(),
    optimizer=OptimizerConfig(lr=2e-4, schedule="constant", warmup_steps=0),
  )
  plan = common.trainer_plan(
    recipe.objective,
    args.seq,
    prune_last_block=not args.no_prune_last_block,
    head_overflow=args.head_overflow,
  )
  tx = make_optimizer(recipe.optimizer)
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=[device])
  host = [
    common.make_batch(args.batch_value, args.seq, cfg.vocab_size, seed=s, full_rows=not args.pad)
    for s in range(2)
  ]
  for b in host:
    plan.check_host_batch(b, config=cfg, objective=recipe.objective)
  tokens = [common.real_tokens(b) for b in host]
  masked = [int((b["source"] == common.mask_id_for(cfg.vocab_size)).sum()) for b in host]
  info = {
    "batch": args.batch_value,
    "seq": args.seq,
    "dtype": cfg.dtype,
    "remat": cfg.remat_policy,
    "attention_dropout": cfg.attention_dropout,
    "attention_impl": cfg.attention_impl,
    "prune_last_block": plan.prune_student_last_block,
    "head_overflow": plan.head_overflow,
    "resolved_attention": {
      "student": model_lib._resolve_attention_impl(cfg, cfg.attention_dropout > 0),
      "teacher": model_lib._resolve_attention_impl(cfg, False),
    },
    "device_kind": device.device_kind,
    "platform": device.platform,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  try:
    with sharding_lib.activate(mesh):
      step, state, batches = common.jax_train_setup(recipe, plan, tx, mesh, host)
      holder = {"state": state, "i": 0}

      def one():
        holder["state"], metrics = step(holder["state"], batches[holder["i"] % len(batches)])
        holder["i"] += 1
        jax.block_until_ready((holder["state"], metrics))
        return metrics

      t0 = time.perf_counter()
      first = one()
      first_s = time.perf_counter() - t0
      common.timed_loop(one, max(0, args.warmup - 1))
      times = common.timed_loop(one, args.steps)
      loss = float(one()["loss"])
  except Exception as e:  # noqa: BLE001 - an OOM is a result of the sweep, anything else an error
    return _failure(info, e)
  del first
  med = float(np.median(times))
  tok = float(np.mean(tokens))
  masked_fraction = float(np.sum(masked) / np.sum(tokens))
  flops_tok = plan.flops_per_token(cfg, recipe.objective, masked_fraction=masked_fraction)
  hw_flops_tok = flops_tok + recomputed_flops_per_token(
    cfg, args.seq, plan.prune_student_last_block
  )
  peak = flops.peak_flops_per_device(device)
  tps = tok / med
  stats = {}
  try:
    stats = device.memory_stats() or {}
  except Exception:  # noqa: BLE001 - CPU devices may not report
    pass
  return {
    **info,
    **_timing(times, first_s, tok),
    "masked_fraction": masked_fraction,
    "model_flops_per_token": flops_tok,
    "hardware_flops_per_token": hw_flops_tok,
    "model_tflops_per_s": flops_tok * tps / 1e12,
    "peak_flops": peak,
    "mfu": (flops_tok * tps / peak) if peak else None,
    "hfu": (hw_flops_tok * tps / peak) if peak else None,
    "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
    "bytes_limit": stats.get("bytes_limit"),
    "loss": loss,
  }


def torch_worker(args) -> dict:
  """The PyTorch reference step of bench_train_step.py (HF Data2VecTextModel with SDPA attention,
  fused AdamW, the same objective) on the same device, same shape and batch: under bf16 autocast
  when --dtype is bfloat16, eager or `torch.compile`d (framework `torch_compile`)."""
  import numpy as np
  import torch

  from bench import bench_train_step

  cfg = model_config(args)
  kw = dict(
    vocab_size=cfg.vocab_size,
    hidden_size=cfg.hidden_size,
    num_layers=cfg.num_layers,
    num_heads=cfg.num_heads,
    intermediate_size=cfg.intermediate_size,
    max_positions=cfg.max_positions,
    pad_id=cfg.pad_id,
    layer_norm_eps=cfg.layer_norm_eps,
    dropout=cfg.dropout,
    attention_dropout=cfg.attention_dropout,
  )
  device = "cuda" if torch.cuda.is_available() else "cpu"
  host = [
    common.make_batch(args.batch_value, args.seq, cfg.vocab_size, seed=s, full_rows=not args.pad)
    for s in range(2)
  ]
  info = {
    "framework": args.framework_value,
    "batch": args.batch_value,
    "seq": args.seq,
    "dtype": args.dtype,
    "attention_dropout": cfg.attention_dropout,
    "device_kind": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
  }
  try:
    step, step_info = bench_train_step.build_torch_step(
      kw,
      host,
      device=device,
      autocast_bf16=args.dtype == "bfloat16",
      compile_model=args.framework_value == "torch_compile",
    )
    info.update(step_info)
    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    common.timed_loop(step, max(0, args.warmup - 1))
    times = common.timed_loop(step, args.steps)
    loss = step()
  except Exception as e:  # noqa: BLE001 - an OOM is a result of the sweep, anything else an error
    return _failure(info, e)
  tok = float(np.mean([common.real_tokens(b) for b in host]))
  return {
    **info,
    **_timing(times, first_s, tok),
    "peak_bytes_in_use": torch.cuda.max_memory_allocated() if device == "cuda" else None,
    "loss": loss,
  }


def _failure(info: dict, error: Exception) -> dict:
  """A point that did not run: an OOM (a result of the sweep) or another error, with its trace."""
  msg = f"{type(error).__name__}: {error}"
  return {
    **info,
    "oom": any(m in msg for m in OOM_MARKERS),
    "error": msg[:2000],
    "traceback": traceback.format_exc()[-3000:],
  }


def _timing(times: list[float], first_s: float, tokens_per_step: float) -> dict:
  """The timing fields every framework's point shares (median step, compile, tokens/s)."""
  import numpy as np

  med = float(np.median(times))
  return {
    "oom": False,
    "median_step_s": med,
    "min_step_s": float(min(times)),
    "steps": len(times),
    "first_call_s": first_s,
    "compile_s": first_s - med,
    "real_tokens_per_step": tokens_per_step,
    "tokens_per_s": tokens_per_step / med,
  }


def add_ratios(results: list[dict]) -> None:
  """Adds to each JAX point `ratio_jax_over_<framework>` (tokens/s; > 1: JAX faster) for every
  PyTorch point of the same batch and attention dropout, and to each PyTorch point its MFU with
  the JAX point's model FLOPs per token (the same yardstick: the work the math needs)."""
  jax_points = [r for r in results if r.get("framework", "jax") == "jax" and not r.get("error")]
  for other in results:
    if other.get("framework", "jax") == "jax" or other.get("error"):
      continue
    for r in jax_points:
      if (r["batch"], r["attention_dropout"]) != (other["batch"], other["attention_dropout"]):
        continue
      r[f"ratio_jax_over_{other['framework']}"] = r["tokens_per_s"] / other["tokens_per_s"]
      if r.get("peak_flops") and r.get("remat") == "none":
        other["mfu"] = r["model_flops_per_token"] * other["tokens_per_s"] / r["peak_flops"]


def summary_row(res: dict) -> dict:
  """One printed table row of a successful sweep point."""
  row = {
    k: res.get(k)
    for k in (
      "framework",
      "remat",
      "attention_dropout",
      "batch",
      "median_step_s",
      "tokens_per_s",
      "mfu",
      "hfu",
      "compile_s",
    )
  }
  row["peak_GiB"] = res["peak_bytes_in_use"] / 2**30 if res.get("peak_bytes_in_use") else None
  if "resolved_attention" in res:
    row["attn(student/teacher)"] = "{student}/{teacher}".format(**res["resolved_attention"])
  else:
    row["attn(student/teacher)"] = res.get("attn_implementation")
  for k, v in res.items():
    if k.startswith("ratio_jax_over_"):
      row[k.replace("ratio_jax_over_", "jax/")] = v
  return row


def csv(s: str, cast=str) -> list:
  return [cast(x) for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", default="", help="comma list; default: sweep 8,16,32,... until OOM")
  p.add_argument("--max_batch", type=int, default=1024)
  p.add_argument("--seq", type=int, default=SEQ)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument("--attention_impl", default="auto", choices=["auto", "xla", "cudnn", "reference"])
  p.add_argument(
    "--remat", default="none", help="comma list of remat policies: none,full,dots,dots_no_batch"
  )
  p.add_argument(
    "--attention_dropout",
    default="0.1",
    help="comma list; 0.1 is the recipe (student then uses the explicit-softmax "
    "attention), 0.0 lets the student use cuDNN flash attention too",
  )
  p.add_argument("--pad", action="store_true", help="variable row lengths instead of full rows")
  p.add_argument(
    "--no_prune_last_block",
    action="store_true",
    help="run the student's last block at every position (ablation)",
  )
  p.add_argument(
    "--head_overflow",
    default="error",
    choices=["error", "fallback"],
    help="'error' (the trainer's choice for an exact masker bound) compiles no "
    "every-position fallback; 'fallback' adds the lax.cond (ablation)",
  )
  p.add_argument("--xla_flags", default="recommended", choices=["recommended", "none"])
  p.add_argument("--timeout", type=float, default=900, help="seconds per sweep point")
  cli.add_argument(  # --allow_cpu, and the old --allow-cpu
    p,
    "allow_cpu",
    action="store_true",
    help="run on CPU when no GPU is present (smoke test of the code path)",
  )
  p.add_argument("--tiny", action="store_true", help="tiny model (2 x 64): smoke test")
  p.add_argument(
    "--frameworks",
    default="jax",
    help="comma list of jax, torch (the PyTorch reference step, eager), torch_compile (the "
    "same under torch.compile); PyTorch points run once per attention dropout (no remat)",
  )
  p.add_argument("--no_record", action="store_true")
  p.add_argument("--note", default="")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--framework_value", default="jax", help=argparse.SUPPRESS)
  p.add_argument("--batch_value", type=int, help=argparse.SUPPRESS)
  p.add_argument("--remat_value", default="none", help=argparse.SUPPRESS)
  p.add_argument("--attn_dropout_value", type=float, default=0.1, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.tiny and args.seq == SEQ:
    args.seq = 128

  frameworks = csv(args.frameworks)
  unknown = set(frameworks) - {"jax", "torch", "torch_compile"}
  if unknown or not frameworks:
    p.error(f"--frameworks: unknown {sorted(unknown)}; use jax, torch, torch_compile")
  if args.worker:
    common.emit(worker(args) if args.framework_value == "jax" else torch_worker(args))
    return 0

  has_gpu, desc = detect_gpu()
  if not has_gpu and not args.allow_cpu:
    print(
      f"no GPU: {desc}. This benchmark needs a CUDA GPU with jax[cuda] installed; "
      f"use --allow-cpu --tiny for a CPU smoke run of the same code path.",
      file=sys.stderr,
    )
    return 2
  env = dict(os.environ)
  if has_gpu:
    env.update(common.GPU_ENV)
    env.pop("JAX_PLATFORMS", None)
  else:
    env["JAX_PLATFORMS"] = "cpu"
    desc = f"CPU smoke run ({desc})"
  if args.xla_flags == "recommended":
    # On CPU the GPU flags are parsed too (and must be valid), so the smoke run checks them.
    from data2vec_jax.speed import xla_flags  # no jax import

    env = xla_flags.with_flags(xla_flags.GPU_FLAGS, env)
  print(f"device: {desc}", file=sys.stderr)

  explicit = csv(args.batch, int)
  sweep = explicit or [b for b in (2**i for i in range(3, 20)) if b <= args.max_batch]
  if args.tiny and not explicit:
    sweep = [2, 4]
  results = []
  series = [
    (fw, remat, attn_dropout)
    for remat in csv(args.remat)
    for attn_dropout in csv(args.attention_dropout, float)
    for fw in frameworks
    if fw == "jax" or remat == csv(args.remat)[0]  # PyTorch runs no remat: once per dropout
  ]
  for fw, remat, attn_dropout in series:
    for batch in sweep:
      worker_args = (
        [
          *("--worker", "--framework_value", fw, "--batch_value", str(batch)),
          *("--remat_value", remat, "--attn_dropout_value", str(attn_dropout)),
          *("--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup)),
          *("--dtype", args.dtype, "--attention_impl", args.attention_impl),
        ]
        + ["--tiny"] * args.tiny
        + ["--pad"] * args.pad
        + ["--no_prune_last_block"] * args.no_prune_last_block
        + ["--head_overflow", args.head_overflow]
      )
      res = common.run_worker(os.path.abspath(__file__), worker_args, timeout=args.timeout, env=env)
      res.setdefault("framework", fw)
      res.setdefault("batch", batch)
      res.setdefault("remat", remat if fw == "jax" else "none")
      res.setdefault("attention_dropout", attn_dropout)
      results.append(res)
      label = f"[{fw} remat={res['remat']} attn_dropout={attn_dropout} batch={batch}]"
      if res.get("error"):
        kind = "OOM" if res.get("oom") else "ERROR"
        print(f"{label} {kind}: {res['error'][:500]}", file=sys.stderr)
        if not res.get("oom"):
          print(res.get("traceback") or res.get("stderr_tail", ""), file=sys.stderr)
        break  # larger batches of this series will not fit either
      mfu = res.get("mfu")
      print(
        f"{label} {res['median_step_s']:.4f}s {res['tokens_per_s']:.0f} tok/s "
        f"MFU {mfu if mfu is not None else '-'}",
        file=sys.stderr,
      )
  add_ratios(results)
  rows = [summary_row(r) for r in results if not r.get("error")]
  if rows:
    print()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    common.print_table(rows, columns)
  ok = [r for r in results if not r.get("error")]
  if not args.no_record:
    common.append_result(
      "gpu_train_step",
      desc,
      results,
      note=args.note,
      protocol={
        "seq": args.seq,
        "dtype": args.dtype,
        "steps": args.steps,
        "warmup": args.warmup,
        "xla_flags": env.get("XLA_FLAGS", ""),
        "model": "tiny" if args.tiny else "base",
        "full_rows": not args.pad,
      },
      versions=common.library_versions(
        "jax",
        "jaxlib",
        "jax-cuda12-plugin",
        "jax-cuda13-plugin",
        "flax",
        "optax",
        *(("torch", "transformers") if frameworks != ["jax"] else ()),
      ),
    )
  if not ok:
    print("no sweep point succeeded", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
