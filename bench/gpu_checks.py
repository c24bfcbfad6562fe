"""Correctness on the GPU, in about a minute: the first part of `bench/gpu_session.sh`.

    python bench/gpu_checks.py --out checks.json            # on a GPU machine
    python bench/gpu_checks.py --allow-cpu --out x.json     # the CPU dry run (cuDNN check skipped)

Checks (each one's numbers, tolerance and verdict go to --out as JSON; exit 1 if any fails):

- `parity_fp32`: the encoder at base width (768, 12 heads, ffn 3072, 2 layers, 128 tokens, padded
  rows) against `transformers.Data2VecTextModel` (SDPA attention) on the same GPU, both in float32
  with TF32 off (JAX `default_matmul_precision('highest')`, torch `allow_tf32=False`): every
  hidden state and FFN output within FP32_TOLERANCE x max(1, |reference|), the bar of
  tests/weights/test_parity.py. The TF32 defaults (JAX's default precision) are recorded beside it.
- `parity_bf16`: the same encoder with `dtype='bfloat16'` (float32 parameters; on a GPU its
  attention resolves to cuDNN's fused kernel) against the float32 reference: max |diff| of the
  last hidden state within BF16_TOLERANCE x max(1, |reference|).
- `train_step`: the trainer's step (`train.step.new_state_and_step`, data2vec objective, EMA,
  AdamW, dropout 0.1) on a 1-device mesh of the GPU against the same step on a 1-device CPU mesh,
  3 steps from the same initial state and batches, float32 at 'highest' precision: losses within
  STEP_RTOL; then 3 bfloat16 steps on the GPU, losses finite and within STEP_BF16_RTOL of the
  float32 ones.
- `cudnn_attention`: `jax.nn.dot_product_attention(implementation='cudnn')` against
  `implementation='xla'` in bfloat16 at the base model's shape (12 heads of 64, 512 tokens, a
  padding mask): outputs and the gradients of q, k, v (the boolean-mask path whose backward
  changed in jax 0.11.x); then the whole encoder with `attention_impl='cudnn'` vs 'xla'.
  Skipped without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

# JAX and torch share the GPU in this process: neither may take most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from data2vec_jax import cli  # noqa: E402

FP32_TOLERANCE = 1e-5  # as tests/weights/test_parity.py: ~84 float32 eps at the outputs' scale
# bf16 keeps 8 bits of mantissa (eps 2^-8 = 3.9e-3). Measured on CPU (XLA attention, 2 layers at
# base width, `--allow-cpu`): last hidden state max |diff| 8e-3 x scale; 3x that leaves room for
# cuDNN's own bf16 rounding.
BF16_TOLERANCE = 2.5e-2
STEP_RTOL = 1e-4  # fp32 'highest' on two backends: different reduction orders only
STEP_BF16_RTOL = 1e-2  # measured 6e-5 on CPU (tiny model, 3 steps)
ATTN_TOLERANCE = 2e-2  # bf16 outputs of two kernels, |values| ~ 1: a few bf16 eps
ATTN_GRAD_RTOL = 5e-2  # normwise relative error of the bf16 gradients


def _check(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  t0 = time.perf_counter()
  try:
    out = {"name": name, **fn()}
  except Exception as e:  # noqa: BLE001 - a failed check is a result; the next check still runs
    out = {"name": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    out["traceback"] = traceback.format_exc()[-3000:]
  out["seconds"] = round(time.perf_counter() - t0, 2)
  verdict = "SKIP" if out.get("skipped") else ("ok" if out["ok"] else "FAIL")
  shown = {k: v for k, v in out.items() if k not in ("name", "traceback", "ok")}
  print(f"[check {name}] {verdict} {json.dumps(shown)[:600]}", file=sys.stderr, flush=True)
  return out


def _encoder_config():
  from data2vec_jax.model.config import tiny_config

  return tiny_config(
    vocab_size=300,
    hidden_size=768,
    num_heads=12,
    intermediate_size=3072,
    num_layers=2,
    max_positions=130,
  )


def _reference(torch_device: str):
  """(converted result, HF model on `torch_device`, ids, mask, fp32 reference features)."""
  import torch

  from data2vec_jax.weights.hf import convert_hf_state_dict
  from data2vec_jax.weights.parity import padded_batch, reference_features, reference_model
  from data2vec_jax.weights.torch_io import to_numpy

  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  model = reference_model(_encoder_config(), seed=3, std=0.02, attn_implementation="sdpa")
  state = {k: to_numpy(v, k) for k, v in model.state_dict().items()}
  result = convert_hf_state_dict(state, model.config.to_dict())
  model.to(torch_device)
  ids, mask = padded_batch(result.config, (128, 77, 9, 128), seed=4)
  ref = reference_features(model, ids, mask, device=torch_device)
  return result, model, ids, mask, ref


def check_parity(torch_device: str) -> dict[str, Any]:
  import jax

  from data2vec_jax.weights.parity import diff_report
  from data2vec_jax.weights.pretrained import encode

  result, model, ids, mask, ref = _reference(torch_device)
  with jax.default_matmul_precision("highest"):
    report = diff_report(encode(result.config, result.params, ids, mask), ref, mask)
  default = diff_report(encode(result.config, result.params, ids, mask), ref, mask)
  bf16_cfg = dataclasses.replace(result.config, dtype="bfloat16")
  bf16 = diff_report(encode(bf16_cfg, result.params, ids, mask), ref, mask)
  fp32 = {
    "ok": report.max_diff <= report.bound(FP32_TOLERANCE),
    "max_diff": report.max_diff,
    "bound": report.bound(FP32_TOLERANCE),
    "scale": report.scale,
    "last_hidden_state": report.last_hidden_state,
    "default_precision_max_diff": default.max_diff,
    "torch_attention": model.config._attn_implementation,
  }
  bf16_out = {
    "ok": bf16.last_hidden_state <= bf16.bound(BF16_TOLERANCE),
    "last_hidden_state": bf16.last_hidden_state,
    "bound": bf16.bound(BF16_TOLERANCE),
    "max_diff_any_layer": bf16.max_diff,
    "scale": bf16.scale,
  }
  return {"ok": fp32["ok"] and bf16_out["ok"], "fp32": fp32, "bf16": bf16_out}


def _step_losses(device, dtype: str, steps: int = 3) -> list[float]:
  import jax

  from bench import common
  from data2vec_jax.model.config import tiny_config
  from data2vec_jax.objective.ema import EMAConfig
  from data2vec_jax.objective.execution import ExecutionPlan
  from data2vec_jax.objective.loss import ObjectiveConfig
  from data2vec_jax.runtime import sharding
  from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer
  from data2vec_jax.train import state, step

  model = tiny_config(
    **common.CONFIGS["tiny"], max_positions=130, dropout=0.1, attention_dropout=0.1, dtype=dtype
  )
  mask_id = common.mask_id_for(model.vocab_size)
  recipe = state.Recipe(
    model=model,
    objective=ObjectiveConfig(average_top_k_layers=2, mask_id=mask_id),
    ema=EMAConfig(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10),
    optimizer=OptimizerConfig(lr=1e-3, warmup_steps=1, max_steps=100, clip_norm=1.0),
  )
  batches = [common.make_batch(8, 128, model.vocab_size, seed=s) for s in range(steps)]
  plan = ExecutionPlan.for_objective(recipe.objective, 128)
  mesh = sharding.make_mesh(1, 1, 1, devices=[device])
  tx = make_optimizer(recipe.optimizer)
  losses = []
  with sharding.activate(mesh):
    st, fn = step.new_state_and_step(recipe, plan, tx, mesh, jax.random.PRNGKey(0))
    for b in batches:
      b = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in b.items()}
      st, metrics = fn(st, b, None)
      losses.append(float(metrics["loss"]))
  return losses


def check_train_step(gpu) -> dict[str, Any]:
  import jax

  cpu = jax.devices("cpu")[0]
  with jax.default_matmul_precision("highest"):
    on_gpu = _step_losses(gpu, "float32")
    # The CPU dry run's "GPU" is the CPU itself: the same program on the same device, not rerun.
    on_cpu = list(on_gpu) if gpu == cpu else _step_losses(cpu, "float32")
  bf16 = _step_losses(gpu, "bfloat16")
  rel = max(abs(a - b) / abs(b) for a, b in zip(on_gpu, on_cpu))
  rel_bf16 = max(abs(a - b) / abs(b) for a, b in zip(bf16, on_gpu))
  return {
    "ok": rel <= STEP_RTOL and bool(np.all(np.isfinite(bf16))) and rel_bf16 <= STEP_BF16_RTOL,
    "device": str(gpu),
    "losses_fp32": on_gpu,
    "losses_cpu": on_cpu,
    "losses_bf16": bf16,
    "max_rel_diff_vs_cpu": rel,
    "rtol": STEP_RTOL,
    "max_rel_diff_bf16_vs_fp32": rel_bf16,
    "rtol_bf16": STEP_BF16_RTOL,
  }


def check_cudnn_attention() -> dict[str, Any]:
  import jax
  import jax.numpy as jnp

  from data2vec_jax.weights.pretrained import encode

  if jax.default_backend() != "gpu":
    return {"ok": True, "skipped": "cuDNN attention needs a GPU"}
  b, t, h, d = 4, 512, 12, 64
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, (b, t, h, d), jnp.bfloat16) for kk in keys)
  lengths = np.array([512, 300, 17, 512])
  mask = jnp.asarray(np.arange(t)[None, :] < lengths[:, None])[:, None, None, :]

  def loss(impl):
    def f(q, k, v):
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=d**-0.5, implementation=impl)
      return jnp.sum(out.astype(jnp.float32) ** 2), out

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

  (_, out_c), grads_c = loss("cudnn")(q, k, v)
  (_, out_x), grads_x = loss("xla")(q, k, v)
  f32 = lambda a: np.asarray(a, np.float32)
  out_diff = float(np.abs(f32(out_c) - f32(out_x)).max())
  grad_rel = [
    float(np.linalg.norm(f32(gc) - f32(gx)) / max(np.linalg.norm(f32(gx)), 1e-30))
    for gc, gx in zip(grads_c, grads_x)
  ]

  result, _, ids, mask_np, _ = _reference("cpu")  # weights only; the reference is not used here
  cfg = dataclasses.replace(result.config, dtype="bfloat16")
  lhs = {
    impl: np.asarray(
      encode(
        dataclasses.replace(cfg, attention_impl=impl), result.params, ids, mask_np
      ).last_hidden_state
    )
    for impl in ("cudnn", "xla")
  }
  keep = mask_np != 0
  enc_diff = float(np.abs(lhs["cudnn"] - lhs["xla"])[keep].max())
  return {
    "ok": out_diff <= ATTN_TOLERANCE
    and max(grad_rel) <= ATTN_GRAD_RTOL
    and enc_diff <= BF16_TOLERANCE,
    "output_max_diff": out_diff,
    "grad_rel_diff_qkv": grad_rel,
    "encoder_last_hidden_max_diff": enc_diff,
    "tolerances": {"output": ATTN_TOLERANCE, "grad": ATTN_GRAD_RTOL, "encoder": BF16_TOLERANCE},
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="", help="JSON file for the results")
  cli.add_argument(p, "allow_cpu", action="store_true", help="dry run on CPU (or --allow-cpu)")
  args = p.parse_args(argv)
  import jax

  gpus = [d for d in jax.devices() if d.platform == "gpu"]
  if not gpus and not args.allow_cpu:
    print("no GPU: jax sees " + str(jax.devices()) + "; use --allow-cpu", file=sys.stderr)
    return 2
  device = gpus[0] if gpus else jax.devices("cpu")[0]
  torch_device = "cuda" if gpus else "cpu"
  checks = []
  parity = _check("parity", lambda: check_parity(torch_device))
  for kind in ("fp32", "bf16"):
    entry = {"name": f"parity_{kind}", "seconds": parity["seconds"]}
    entry.update(parity.get(kind) or {"ok": False, "error": parity.get("error")})
    checks.append(entry)
  checks.append(_check("train_step", lambda: check_train_step(device)))
  checks.append(_check("cudnn_attention", check_cudnn_attention))
  record = {
    "device": f"{device.platform}: {device.device_kind}",
    "jax": jax.__version__,
    "ok": all(c["ok"] for c in checks),
    "checks": checks,
  }
  if args.out:
    with open(args.out, "w") as f:
      json.dump(record, f, indent=1)
  print(("all checks passed" if record["ok"] else "SOME CHECKS FAILED"), file=sys.stderr)
  return 0 if record["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
