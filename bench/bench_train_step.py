"""Full data2vec train step: data2vec-jax vs a PyTorch eager reference, same shapes, same machine.

One step = student forward+backward (train mode, dropout 0.1) + teacher forward (EMA encoder, eval
mode) + top-K layer-normalised FFN targets + regression head + smooth-L1 (beta 4) summed / number
of masked tokens + clip-by-global-norm 5 + AdamW(0.9, 0.98, eps 1e-6, wd 0.01) + EMA update of the
teacher's transformer layers (embeddings copied from the student).

- JAX: `train_step.make_train_step(recipe, plan, tx, mesh, shardings)` on a 1-device mesh, exactly the
  step the trainer runs (jitted, state donated), with the trainer's token packing (`data2vec_jax/speed/packing.py`:
  the encoders run on the real tokens only, at one of `--pack_buckets` static capacities;
  `--pack_buckets 0` runs padded, the ablation). The PyTorch step runs padded, as
  `transformers` does; both do the same math on the same batch.
- PyTorch: `transformers.Data2VecTextModel` (its default attention, SDPA) as student, a deepcopy
  in eval()/no_grad as teacher whose FFN outputs are captured with forward hooks on
  `encoder.layer[i].output.dense`, `F.layer_norm` per layer, top-K mean, head
  Linear(D,2D)-GELU-Linear(2D,D) on the masked positions only (as fairseq), `F.smooth_l1_loss`,
  `clip_grad_norm_`, `torch.optim.AdamW` (fused CPU kernel when available), EMA with
  `torch._foreach_mul_/_foreach_add_` under no_grad. Each choice is the fastest eager PyTorch
  spelling we know, so the reference is not handicapped.

Protocol (honest interleaving + attributable memory): for each config, `--rounds` rounds; in each
round one fresh subprocess per framework runs `--warmup` untimed steps (the first of which
includes JAX compilation) and then `--steps` timed steps; the order of the two frameworks
alternates from round to round, so slow drifts of a shared machine hit both alike. Reported: the
median over all timed steps of all rounds, tokens/s counting only real (non-pad) tokens, the ratio
of JAX to PyTorch tokens/s, the JAX compile time (first call minus the steady-state median), and
the peak RSS of each worker process (includes the framework's own import footprint; `rss_base`
is the RSS after imports, before the model is built).

    python bench/bench_train_step.py --configs tiny,small,base [--batch 8] [--seq 128]
        [--steps 10] [--warmup 2] [--rounds 2] [--threads N] [--override attention_dropout=0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

K_MAX = 10  # data2vec text yaml: average_top_k_layers=10 (capped at the number of layers)
LOSS_BETA = 4.0
LR = 2e-4
CLIP = 5.0
EMA_DECAY = 0.999


def model_kwargs(config: str, overrides: dict) -> dict:
  # scan_unroll = num_layers: fully unrolled blocks, as configs/pretrain.py trains (torch ignores it).
  kw = dict(
    common.CONFIGS[config],
    max_positions=514,
    pad_id=1,
    layer_norm_eps=1e-5,
    dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.0,
    scan_unroll=common.CONFIGS[config]["num_layers"],
  )
  kw.update(overrides)
  return kw


def batches_for(args, vocab_size: int) -> list:
  return [
    common.make_batch(args.batch, args.seq, vocab_size, seed=s, full_rows=args.full_rows)
    for s in range(4)
  ]


# ----------------------------------------------------------------------------------------------
# JAX worker


def jax_worker(args, overrides: dict) -> dict:
  import jax

  from data2vec_jax.model.config import EncoderConfig
  from data2vec_jax.objective.ema import EMAConfig
  from data2vec_jax.objective.execution import real_tokens
  from data2vec_jax.objective.loss import ObjectiveConfig
  from data2vec_jax.runtime import sharding as sharding_lib
  from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer
  from data2vec_jax.train import state as train_state_lib

  rss_base = common.current_rss_mib()
  cfg = EncoderConfig(**model_kwargs(args.config, overrides))
  recipe = train_state_lib.Recipe(
    model=cfg,
    objective=ObjectiveConfig(
      average_top_k_layers=min(K_MAX, cfg.num_layers),
      loss_beta=LOSS_BETA,
      mask_id=common.mask_id_for(cfg.vocab_size),
    ),
    ema=EMAConfig(ema_decay=EMA_DECAY, ema_end_decay=0.9999, ema_anneal_end_step=300000),
    optimizer=OptimizerConfig(
      lr=LR,
      b1=0.9,
      b2=0.98,
      eps=1e-6,
      weight_decay=0.01,
      clip_norm=CLIP,
      schedule="constant",
      warmup_steps=0,
    ),
  )
  plan = common.trainer_plan(
    recipe.objective,
    args.seq,
    prune_last_block=not args.no_prune_last_block,
    head_overflow=args.head_overflow,
    pack_buckets=args.pack_buckets,
  )
  tx = make_optimizer(recipe.optimizer)
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  host_batches = batches_for(args, cfg.vocab_size)
  for b in host_batches:
    plan.check_host_batch(b, config=cfg, objective=recipe.objective)
  # As the trainer packs each batch (one group: one device).
  packings = [
    plan.packing_for_batch(b, real_tokens(b, cfg.pad_id).sum(axis=1), pad_id=cfg.pad_id, groups=1)
    for b in host_batches
  ]
  with sharding_lib.activate(mesh):
    step, state, batches = common.jax_train_setup(recipe, plan, tx, mesh, host_batches)
    jax.block_until_ready((state, batches))
    holder = {"state": state, "i": 0, "loss": []}

    def one():
      i = holder["i"] % len(batches)
      holder["i"] += 1
      holder["state"], metrics = step(holder["state"], batches[i], packings[i])
      jax.block_until_ready((holder["state"], metrics))
      holder["loss"].append(float(metrics["loss"]))
      holder["head_gathered"] = float(metrics["head_gathered"])

    # Every batch once before timing: each distinct packed capacity compiles on first use.
    n_warm = max(args.warmup, len(batches) if args.pack_buckets else 0)
    warm = common.timed_loop(one, n_warm)
    times = common.timed_loop(one, args.steps)
  return {
    "framework": "jax",
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "first_call_s": warm[0],
    "warmup_s": warm,
    "times_s": times,
    "real_tokens": [
      common.real_tokens(host_batches[(n_warm + i) % len(host_batches)]) for i in range(args.steps)
    ],
    "losses": holder["loss"],
    "rss_base_mib": rss_base,
    "peak_rss_mib": common.peak_rss_mib(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "head_positions_per_row": plan.head_positions_per_row,
    "prune_last_block": plan.prune_student_last_block,
    "head_overflow": plan.head_overflow,
    "head_gathered_last_step": holder.get("head_gathered"),
    "pack_buckets": args.pack_buckets,
    "packed_capacities": [None if p is None else p.capacity for p in packings],
  }


# ----------------------------------------------------------------------------------------------
# PyTorch worker


def build_torch_step(
  kw: dict,
  host_batches: list,
  *,
  device: str = "cpu",
  autocast_bf16: bool = False,
  compile_model: bool = False,
) -> tuple:
  """The PyTorch reference step on `device`: (one, info). `one()` runs one full step on the next
  batch, waits for the device, and returns the loss.

  kw: `model_kwargs(...)`. autocast_bf16: forward passes under `torch.autocast(bfloat16)` (the
  loss, LayerNorm'd targets and AdamW stay float32), as mixed-precision GPU training runs.
  compile_model: `torch.compile` (default mode) of the student and teacher encoders and the head.
  """
  import copy

  import torch
  import torch.nn.functional as F
  import transformers

  torch.manual_seed(0)
  hf_config = transformers.Data2VecTextConfig(
    vocab_size=kw["vocab_size"],
    hidden_size=kw["hidden_size"],
    num_hidden_layers=kw["num_layers"],
    num_attention_heads=kw["num_heads"],
    intermediate_size=kw["intermediate_size"],
    hidden_act="gelu",
    hidden_dropout_prob=kw["dropout"],
    attention_probs_dropout_prob=kw["attention_dropout"],
    max_position_embeddings=kw["max_positions"],
    type_vocab_size=1,
    layer_norm_eps=kw["layer_norm_eps"],
    pad_token_id=kw["pad_id"],
  )
  d = kw["hidden_size"]
  k = min(K_MAX, kw["num_layers"])
  mask_id = common.mask_id_for(kw["vocab_size"])

  class Student(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.encoder = transformers.Data2VecTextModel(hf_config, add_pooling_layer=False)
      self.head = torch.nn.Sequential(
        torch.nn.Linear(d, 2 * d), torch.nn.GELU(), torch.nn.Linear(2 * d, d)
      )

  student = Student().to(device)
  teacher = copy.deepcopy(student.encoder)
  teacher.eval()
  teacher.requires_grad_(False)
  features: list = []
  for layer in teacher.encoder.layer:
    layer.output.dense.register_forward_hook(lambda m, i, o: features.append(o))
  pairs = [
    (name, t, s)
    for (name, t), (_, s) in zip(teacher.named_parameters(), student.encoder.named_parameters())
  ]
  ema_layers = [(t, s) for name, t, s in pairs if not name.startswith("embeddings.")]
  ema_embed = [(t, s) for name, t, s in pairs if name.startswith("embeddings.")]
  opt_kwargs = dict(lr=LR, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
  try:
    opt = torch.optim.AdamW(student.parameters(), fused=True, **opt_kwargs)
    opt_impl = "fused"
  except (RuntimeError, TypeError):
    opt = torch.optim.AdamW(student.parameters(), foreach=True, **opt_kwargs)
    opt_impl = "foreach"
  student_encoder, head, teacher_fn = student.encoder, student.head, teacher
  if compile_model:
    student_encoder, head, teacher_fn = (torch.compile(m) for m in (student.encoder, head, teacher))

  batches = []
  for b in host_batches:
    source = torch.from_numpy(b["source"]).long().to(device)
    target = torch.from_numpy(b["target"]).long().to(device)
    batches.append((source, target, (target != kw["pad_id"]).long()))
  holder = {"i": 0}
  autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

  def one() -> float:
    source, target, attn = batches[holder["i"] % len(batches)]
    holder["i"] += 1
    student.train()
    opt.zero_grad(set_to_none=True)
    with autocast if autocast_bf16 else contextlib.nullcontext():
      x = student_encoder(input_ids=source, attention_mask=attn).last_hidden_state
      masked = source == mask_id
      pred = head(x[masked])
      with torch.no_grad():
        features.clear()
        teacher_fn(input_ids=target, attention_mask=attn)
        y = sum(F.layer_norm(f.float(), (d,)) for f in features[-k:]) / k
        y = y[masked]
    loss = F.smooth_l1_loss(pred.float(), y, reduction="sum", beta=LOSS_BETA) / masked.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), CLIP)
    opt.step()
    with torch.no_grad():
      t_l, s_l = [t for t, _ in ema_layers], [s for _, s in ema_layers]
      torch._foreach_mul_(t_l, EMA_DECAY)
      torch._foreach_add_(t_l, s_l, alpha=1.0 - EMA_DECAY)
      for t, s in ema_embed:
        t.copy_(s)
    value = float(loss)
    sync()
    return value

  info = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "attn_implementation": getattr(student.encoder.config, "_attn_implementation", None),
    "adamw": opt_impl,
    "device": device,
    "autocast": "bfloat16" if autocast_bf16 else None,
    "compiled": compile_model,
  }
  return one, info


def torch_worker(args, overrides: dict) -> dict:
  import torch
  import transformers  # noqa: F401 - before rss_base: the base counts both frameworks' imports

  common.set_torch_threads(args.threads)
  rss_base = common.current_rss_mib()
  kw = model_kwargs(args.config, overrides)
  host_batches = batches_for(args, kw["vocab_size"])
  step, info = build_torch_step(kw, host_batches)
  losses: list = []
  one = lambda: losses.append(step())
  warm = common.timed_loop(one, args.warmup)
  times = common.timed_loop(one, args.steps)
  return {
    "framework": "torch",
    **{k: info[k] for k in ("torch", "transformers", "attn_implementation", "adamw")},
    "threads": torch.get_num_threads(),
    "first_call_s": warm[0],
    "warmup_s": warm,
    "times_s": times,
    "real_tokens": [
      common.real_tokens(host_batches[(args.warmup + i) % len(host_batches)])
      for i in range(args.steps)
    ],
    "losses": losses,
    "rss_base_mib": rss_base,
    "peak_rss_mib": common.peak_rss_mib(),
  }


# ----------------------------------------------------------------------------------------------
# Orchestrator


def parse_overrides(items: list[str]) -> dict:
  out = {}
  for item in items:
    key, value = item.split("=", 1)
    try:
      out[key] = json.loads(value)
    except json.JSONDecodeError:
      out[key] = value
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="tiny,small,base")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--steps", type=int, default=10, help="timed steps per worker round")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per worker (>= 1)")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--full_rows", action="store_true", help="no padding (all rows full)")
  p.add_argument(
    "--override",
    action="append",
    default=[],
    help="EncoderConfig field=value applied to both frameworks, e.g. dropout=0",
  )
  p.add_argument(
    "--no_prune_last_block",
    action="store_true",
    help="JAX: run the student's last block at every position (ablation; the "
    "default runs it at the gathered loss positions only, like the head)",
  )
  p.add_argument(
    "--head_overflow",
    default="error",
    choices=["error", "fallback"],
    help="JAX: 'error' (the trainer's choice for an exact masker bound) compiles no "
    "every-position fallback; 'fallback' adds the lax.cond (ablation)",
  )
  p.add_argument(
    "--pack_buckets",
    type=int,
    default=16,
    help="JAX: token packing as the trainer's execution.pack_buckets (default 16); 0 "
    "runs the padded batch (ablation)",
  )
  common.add_protocol_flags(p, timeout=1800)
  args = common.parse_protocol_args(p, argv)
  overrides = parse_overrides(args.override)
  if args.worker:
    fn = jax_worker if args.worker == "jax" else torch_worker
    common.emit(fn(args, overrides))
    return 0

  frameworks = args.frameworks.split(",")
  load_before = common.load_avg()
  rows, results = [], []
  for config in args.configs.split(","):
    worker_args = ["--config", config, "--batch", str(args.batch), "--seq", str(args.seq)]
    worker_args += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    worker_args += ["--threads", str(args.threads), "--pin_cores", str(args.pin_cores)]
    worker_args += ["--full_rows"] * args.full_rows
    worker_args += ["--no_prune_last_block"] * args.no_prune_last_block
    worker_args += ["--head_overflow", args.head_overflow]
    worker_args += ["--pack_buckets", str(args.pack_buckets)]
    for o in args.override:
      worker_args += ["--override", o]
    runs, errors = common.run_rounds(
      os.path.abspath(__file__),
      config,
      frameworks,
      args.rounds,
      worker_args,
      timeout=args.timeout,
      malloc=args.malloc,
    )
    entry = {
      "config": config,
      "model": model_kwargs(config, overrides),
      "batch": args.batch,
      "seq": args.seq,
      "errors": errors,
    }
    for fw in frameworks:
      if runs[fw]:
        entry[fw] = common.summarize_step_runs(runs[fw])
    if "jax" in entry:
      entry["jax"]["compile_s"] = entry["jax"]["first_call_s"] - entry["jax"]["median_step_s"]
    if "jax" in entry and "torch" in entry:
      entry["ratio_jax_over_torch"] = entry["jax"]["tokens_per_s"] / entry["torch"]["tokens_per_s"]
    results.append(entry)
    row = {"config": config, "BxT": f"{args.batch}x{args.seq}"}
    for fw in frameworks:
      if fw in entry:
        row[f"{fw}_step_s"] = entry[fw]["median_step_s"]
        row[f"{fw}_tok/s"] = entry[fw]["tokens_per_s"]
        row[f"{fw}_rss_MiB"] = entry[fw]["peak_rss_mib"]
    row["jax/torch"] = entry.get("ratio_jax_over_torch")
    row["jax_compile_s"] = entry.get("jax", {}).get("compile_s")
    rows.append(row)

  print()
  common.print_table(rows, list(rows[0].keys()) if rows else [])
  if not args.no_record:
    common.append_result(
      "train_step",
      common.cpu_device_label("JAX CPU backend vs PyTorch eager CPU", args.threads, args.pin_cores),
      results,
      load_avg_before=load_before,
      note=args.note,
      protocol={
        "rounds": args.rounds,
        "warmup": args.warmup,
        "steps": args.steps,
        "interleaving": "one subprocess per framework per round, order alternating",
        "threads": args.threads,
        "pin_cores": args.pin_cores,
        "malloc": args.malloc,
        "overrides": overrides,
      },
      versions=common.library_versions("jax", "jaxlib", "flax", "optax", "torch", "transformers"),
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
