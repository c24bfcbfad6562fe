"""One GLUE fine-tuning update: data2vec-jax vs `transformers` (PyTorch eager), same shapes, CPU.

What is measured: one optimizer update of sentence classification, the paper's GLUE recipe
(`data2vec_jax/finetune/recipes.py`, `configs/finetune.py`): encoder forward + backward in train
mode (dropout 0.1 on the hidden states and the attention probabilities), the classification head
(`<s>` feature -> dense -> tanh -> out_proj, head dropout `--classifier_dropout`, the recipe's
0.0 by default, the same in both frameworks), cross-entropy averaged over the sentences, no
gradient clipping, AdamW(b=(0.9, 0.98), eps 1e-6, weight decay 0.1 on every parameter) with the
task's polynomial-decay (linear warmup then linear decay) learning rate.

- JAX: exactly what `finetune.py` runs: `finetune.step.make_train_step(model, tx, optimizer, mesh,
  shardings)` (jitted, state donated) for a `finetune.model.SequenceClassifier` on a 1-device mesh
  (`runtime.sharding.make_mesh(1, 1, 1)`), the state from `finetune.state.state_shardings` /
  `create_state` (random encoder, fairseq's head init), `runtime.optimizer.make_optimizer` with
  `OptimizerConfig(schedule='polynomial_decay', ...)`. The encoder's `scan_unroll` is 1 by
  default: `finetune.py` keeps the starting point's config, and an HF / fairseq / model-dir
  import gets the `EncoderConfig` default (one scanned block); `--scan_unroll all` unrolls the
  blocks as pretraining does (an ablation).
- PyTorch: `transformers.Data2VecTextForSequenceClassification` built from the same
  `EncoderConfig` by `weights.parity.reference_model` (its default SDPA attention, `train()` mode),
  `model(input_ids, attention_mask, labels).loss.backward()`, `torch.optim.AdamW(fused=True)`
  (foreach if fused is unavailable) and `transformers.get_polynomial_decay_schedule_with_warmup`
  (power 1, end lr 0): the plain, fastest eager HF spelling of the same update.

Batches: `--tasks rte,sst2` gives the task's sentences per update (RTE 16, SST-2 32) and its lr,
warmup and max_update. Every batch is [B, `--seq`] (128 by default: the length bucket a batch
whose longest sentence has 65 - 128 tokens is padded to, `finetune/batches.py`), right-padded rows
with lengths uniform in [T/2, T] (`--full_rows` for none), random labels; both frameworks compute
the padded shape, the attention masks the pads (the JAX encoder derives the mask from pad ids).

Protocol (the same as `bench_train_step.py`, through `bench/common.py`): for each model size and
task, `--rounds` rounds; in each round one fresh subprocess per framework (order alternating),
started with the project's malloc settings (`data2vec_jax/speed/host_malloc.py`, both frameworks
alike; `--malloc default` for none), runs `--warmup` untimed updates (the first includes JAX's
compilation; PyTorch's first updates allocate and pick kernels) and `--steps` timed updates.
Reported: median update time over all timed updates of all rounds, sentences/s and tokens/s
(real, non-pad tokens), the JAX / PyTorch ratio of sentences/s (> 1: JAX faster), JAX compile
time, peak RSS, and minor page faults per timed update (`ru_minflt`: a step that faults its
memory in again every time, e.g. after glibc returned it to the kernel, shows here).

Threads: XLA:CPU sizes its thread pool to the cores the process may run on, so PyTorch gets
`--threads` = that same number (`torch.set_num_threads` and interop threads): the available cores,
or N with `--pin_cores N` (every worker pinned to the first N cores before its framework starts;
the recommended setting on a machine with other load, see bench/README.md). No XLA flags are
set, as in `bench_train_step.py` and `finetune.py` on CPU (its GPU flags are inert there);
`--xla_flags '...'` passes XLA_FLAGS to the JAX worker for experiments (recorded).

    python bench/bench_finetune_step.py [--model small] [--tasks rte,sst2] [--seq 128]
        [--steps 8] [--warmup 2] [--rounds 2] [--pin_cores 1] [--scan_unroll 1|all|N]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

NUM_LABELS = 2  # RTE and SST-2 are binary
DROPOUT = 0.1  # recipe: dropout 0.1, attention dropout 0.1
TASKS = ("rte", "sst2")


def task_recipe(task: str):
  from data2vec_jax.finetune.recipes import GLUE_RECIPES

  if task not in GLUE_RECIPES:
    raise ValueError(f"unknown task {task!r}; known: {sorted(GLUE_RECIPES)}")
  return GLUE_RECIPES[task]


def encoder_config(model: str, scan_unroll: str):
  """The EncoderConfig of `model` (bench/common.py CONFIGS: configs/pretrain.py's shapes with
  the released 50265-token vocabulary for small and base) with the recipe's dropouts."""
  from data2vec_jax.model.config import EncoderConfig

  shape = common.CONFIGS[model]
  unroll = shape["num_layers"] if scan_unroll == "all" else int(scan_unroll)
  return EncoderConfig(
    **shape,
    max_positions=514,
    pad_id=1,
    layer_norm_eps=1e-5,
    dropout=DROPOUT,
    attention_dropout=DROPOUT,
    activation_dropout=0.0,
    scan_unroll=unroll,
  )


def minor_faults() -> int:
  """Minor page faults of this process so far (a step that faults its buffers in again each time
  runs at page-fault speed: bench/README.md, host_malloc)."""
  import resource

  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def host_batches(args, vocab_size: int, batch: int) -> list[dict]:
  """4 batches: input_ids int32 [B, T] (right-padded with pad id 1), labels int32 [B]."""
  import numpy as np

  out = []
  for seed in range(4):
    b = common.make_batch(batch, args.seq, vocab_size, seed=seed, full_rows=args.full_rows)
    labels = np.random.default_rng(100 + seed).integers(0, NUM_LABELS, batch).astype(np.int32)
    out.append({"input_ids": b["target"], "labels": labels, "real_tokens": common.real_tokens(b)})
  return out


# ----------------------------------------------------------------------------------------------
# JAX worker


def jax_worker(args) -> dict:
  import jax
  import numpy as np

  from data2vec_jax.finetune import state as state_lib
  from data2vec_jax.finetune import step as step_lib
  from data2vec_jax.finetune.model import SequenceClassifier
  from data2vec_jax.runtime import sharding as sharding_lib
  from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer

  rss_base = common.current_rss_mib()
  recipe = task_recipe(args.task)
  cfg = encoder_config(args.config, args.scan_unroll)
  model = SequenceClassifier(cfg, NUM_LABELS, args.classifier_dropout)
  optimizer = OptimizerConfig(  # as RunSettings.optimizer_config builds it (finetune/settings.py)
    lr=recipe.lr,
    b1=0.9,
    b2=0.98,
    eps=1e-6,
    weight_decay=0.1,
    decay_bias_and_norm=True,
    clip_norm=0.0,
    schedule="polynomial_decay",
    warmup_steps=recipe.warmup_updates,
    max_steps=recipe.max_update,
  )
  tx = make_optimizer(optimizer)
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  hosts = host_batches(args, cfg.vocab_size, recipe.batch_size)
  _, shardings = state_lib.state_shardings(model, tx, mesh)
  with sharding_lib.activate(mesh):
    state = state_lib.create_state(
      model,
      tx,
      mesh,
      shardings,
      encoder_params=None,
      head_params=None,
      seed=1,
      head_init="torch_default",
    )
    step = step_lib.make_train_step(model, tx, optimizer, mesh, shardings)
    batch_sharding = sharding_lib.batch_sharding(mesh)
    batches = [
      {
        "input_ids": jax.device_put(b["input_ids"], batch_sharding),
        "labels": jax.device_put(b["labels"], batch_sharding),
        "weights": jax.device_put(np.ones(recipe.batch_size, np.float32), batch_sharding),
      }
      for b in hosts
    ]
    jax.block_until_ready((state, batches))
    holder = {"state": state, "i": 0, "loss": []}

    def one():
      i = holder["i"] % len(batches)
      holder["i"] += 1
      holder["state"], metrics = step(holder["state"], batches[i])
      jax.block_until_ready((holder["state"], metrics))
      holder["loss"].append(float(metrics["loss"]))

    warm = common.timed_loop(one, args.warmup)
    faults = minor_faults()
    times = common.timed_loop(one, args.steps)
    faults = (minor_faults() - faults) / args.steps
  return {
    "framework": "jax",
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "xla_cpu_cores": common.available_cores(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "scan_unroll": cfg.scan_unroll,
    "attention_impl": cfg.attention_impl,
    "first_call_s": warm[0],
    "warmup_s": warm,
    "times_s": times,
    "real_tokens": [
      hosts[(args.warmup + i) % len(hosts)]["real_tokens"] for i in range(args.steps)
    ],
    "losses": holder["loss"],
    "minor_faults_per_step": faults,
    "rss_base_mib": rss_base,
    "peak_rss_mib": common.peak_rss_mib(),
  }


# ----------------------------------------------------------------------------------------------
# PyTorch worker


def torch_worker(args) -> dict:
  import torch
  import transformers

  from data2vec_jax.weights.parity import reference_model

  common.set_torch_threads(args.threads)
  rss_base = common.current_rss_mib()
  recipe = task_recipe(args.task)
  cfg = encoder_config(args.config, args.scan_unroll)
  model = reference_model(
    cfg,
    seed=0,
    attn_implementation="sdpa",
    architecture="Data2VecTextForSequenceClassification",
    num_labels=NUM_LABELS,
    classifier_dropout=args.classifier_dropout,
  )
  model.train()
  opt_kwargs = dict(lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
  try:
    opt = torch.optim.AdamW(model.parameters(), fused=True, **opt_kwargs)
    opt_impl = "fused"
  except (RuntimeError, TypeError):
    opt = torch.optim.AdamW(model.parameters(), foreach=True, **opt_kwargs)
    opt_impl = "foreach"
  schedule = transformers.get_polynomial_decay_schedule_with_warmup(
    opt, recipe.warmup_updates, recipe.max_update, lr_end=0.0, power=1.0
  )
  hosts = host_batches(args, cfg.vocab_size, recipe.batch_size)
  batches = []
  for b in hosts:
    ids = torch.from_numpy(b["input_ids"]).long()
    batches.append((ids, (ids != cfg.pad_id).long(), torch.from_numpy(b["labels"]).long()))
  holder = {"i": 0, "loss": []}

  def one():
    ids, attn, labels = batches[holder["i"] % len(batches)]
    holder["i"] += 1
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
    loss.backward()
    opt.step()
    schedule.step()
    holder["loss"].append(float(loss))

  warm = common.timed_loop(one, args.warmup)
  faults = minor_faults()
  times = common.timed_loop(one, args.steps)
  faults = (minor_faults() - faults) / args.steps
  return {
    "framework": "torch",
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "attn_implementation": getattr(model.config, "_attn_implementation", None),
    "adamw": opt_impl,
    "threads": torch.get_num_threads(),
    "first_call_s": warm[0],
    "warmup_s": warm,
    "times_s": times,
    "real_tokens": [
      hosts[(args.warmup + i) % len(hosts)]["real_tokens"] for i in range(args.steps)
    ],
    "losses": holder["loss"],
    "minor_faults_per_step": faults,
    "rss_base_mib": rss_base,
    "peak_rss_mib": common.peak_rss_mib(),
  }


# ----------------------------------------------------------------------------------------------
# Orchestrator


def summarize(runs: list[dict], batch: int) -> dict:
  out = common.summarize_step_runs(runs)
  out["sentences_per_s"] = batch / out["median_step_s"]
  out["minor_faults_per_step"] = common.median([r["minor_faults_per_step"] for r in runs])
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--model", default="small", help="comma-separated sizes of bench/common.py CONFIGS"
  )
  p.add_argument("--tasks", default=",".join(TASKS), help="GLUE recipes: batch size, lr, ...")
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--steps", type=int, default=8, help="timed updates per worker round")
  p.add_argument("--warmup", type=int, default=2, help="untimed updates per worker (>= 1)")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--full_rows", action="store_true", help="no padding (all rows full)")
  p.add_argument(
    "--scan_unroll",
    default="1",
    help="JAX: blocks per scan iteration; 1 = what finetune.py gets from an imported "
    "checkpoint (default), 'all' = fully unrolled as pretraining (ablation)",
  )
  p.add_argument(
    "--classifier_dropout",
    type=float,
    default=0.0,
    help="head dropout in both frameworks (recipe: fairseq pooler_dropout 0.0)",
  )
  p.add_argument(
    "--xla_flags", default="", help="XLA_FLAGS for the JAX worker (default: none, as finetune.py)"
  )
  p.add_argument("--task", help=argparse.SUPPRESS)
  common.add_protocol_flags(p, timeout=3600)
  args = common.parse_protocol_args(p, argv)
  if args.worker:
    fn = jax_worker if args.worker == "jax" else torch_worker
    common.emit(fn(args))
    return 0

  frameworks = args.frameworks.split(",")
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if args.xla_flags:
    env["XLA_FLAGS"] = args.xla_flags
  load_before = common.load_avg()
  rows, results = [], []
  for model in args.model.split(","):
    for task in args.tasks.split(","):
      batch = task_recipe(task).batch_size
      worker_args = ["--config", model, "--task", task]
      worker_args += ["--seq", str(args.seq), "--steps", str(args.steps)]
      worker_args += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
      worker_args += ["--pin_cores", str(args.pin_cores), "--scan_unroll", args.scan_unroll]
      worker_args += ["--classifier_dropout", str(args.classifier_dropout)]
      worker_args += ["--full_rows"] * args.full_rows
      runs, errors = common.run_rounds(
        os.path.abspath(__file__),
        f"{model}/{task}",
        frameworks,
        args.rounds,
        worker_args,
        timeout=args.timeout,
        malloc=args.malloc,
        env=env,
      )
      entry = {
        "config": model,
        "task": task,
        "model": encoder_config(model, args.scan_unroll).to_dict(),
        "batch": batch,
        "seq": args.seq,
        "errors": errors,
      }
      for fw in frameworks:
        if runs[fw]:
          entry[fw] = summarize(runs[fw], batch)
      if "jax" in entry:
        entry["jax"]["compile_s"] = entry["jax"]["first_call_s"] - entry["jax"]["median_step_s"]
      if "jax" in entry and "torch" in entry:
        entry["ratio_jax_over_torch"] = (
          entry["jax"]["sentences_per_s"] / entry["torch"]["sentences_per_s"]
        )
      results.append(entry)
      row = {"model": model, "task": task, "BxT": f"{batch}x{args.seq}"}
      for fw in frameworks:
        if fw in entry:
          row[f"{fw}_ms"] = 1000 * entry[fw]["median_step_s"]
          row[f"{fw}_sent/s"] = entry[fw]["sentences_per_s"]
          row[f"{fw}_tok/s"] = entry[fw]["tokens_per_s"]
      row["jax/torch"] = entry.get("ratio_jax_over_torch")
      row["jax_compile_s"] = entry.get("jax", {}).get("compile_s")
      rows.append(row)

  print()
  common.print_table(rows, list(rows[0].keys()) if rows else [])
  if not args.no_record:
    common.append_result(
      "finetune_step",
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
        "scan_unroll": args.scan_unroll,
        "classifier_dropout": args.classifier_dropout,
        "xla_flags": args.xla_flags,
        "full_rows": args.full_rows,
      },
      versions=common.library_versions("jax", "jaxlib", "flax", "optax", "torch", "transformers"),
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
