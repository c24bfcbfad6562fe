"""data2vec 2.0's train step vs data2vec v1's and the MLM baseline's, same model, same CPU.

  python bench/bench_v2_step.py --config small --batch 8 --seq 128 --rounds 2

One step of each objective on the same encoder and the same B sentences of T tokens (full rows),
each exactly the trainer's step (`train_step.make_train_step`, jit, donated state, 1-device
mesh, dropout 0.1):

- data2vec2: `configs/pretrain.py:recipe=data2vec2`'s objective (clone_batch M, 48% masked and
  dropped from the student, Decoder1d 5 x k9 at the model's width, IN targets over all blocks);
- data2vec: the release recipe's objective with the trainer's plan (gathered head, pruned last
  blocks), 30% of the tokens masked;
- mlm: the RoBERTa baseline, same plan.

Reported per objective: median step time, sentences/s (B / step), student tokens encoded/s
(B*M*K for v2, B*T for the others: the work the student's blocks do), and the FLOP accounting's
GFLOP per sentence token (`ExecutionPlan.flops_per_token`). Each round runs one fresh worker
subprocess per objective (order alternating), `--warmup` untimed steps (the first compiles),
then `--steps` timed ones. Appends one line to bench/results.jsonl (`--no_record` to skip).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

OBJECTIVES = ("data2vec2", "data2vec", "mlm")


def worker(args) -> None:
  import jax

  from data2vec_jax.model.config import EncoderConfig
  from data2vec_jax.objective.data2vec2_config import Data2Vec2Config
  from data2vec_jax.objective.ema import EMAConfig
  from data2vec_jax.objective.execution import ExecutionPlan
  from data2vec_jax.objective.loss import ObjectiveConfig
  from data2vec_jax.runtime import sharding as sharding_lib
  from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer
  from data2vec_jax.train.state import Recipe

  rss_base = common.current_rss_mib()
  shape = common.CONFIGS[args.config]
  model = EncoderConfig(**shape, max_positions=args.seq + 2, scan_unroll=shape["num_layers"])
  mask_id = common.mask_id_for(model.vocab_size)
  if args.objective == "data2vec2":
    objective = ObjectiveConfig(
      kind="data2vec2",
      average_top_k_layers=model.num_layers,
      layer_norm_target_layer=False,
      instance_norm_target_layer=True,
      loss_beta=0.0,
      data2vec2=Data2Vec2Config(
        clone_batch=args.clone_batch, mask_prob=0.48, decoder_dim=model.hidden_size
      ),
      mask_id=mask_id,
    )
    plan = ExecutionPlan.for_objective(objective, args.seq)
    kept = int(args.seq * (1 - objective.data2vec2.mask_prob))
    student_tokens = args.batch * args.clone_batch * kept
  else:
    objective = ObjectiveConfig(
      kind=args.objective, average_top_k_layers=min(10, model.num_layers), mask_id=mask_id
    )
    plan = common.trainer_plan(objective, args.seq, prune_last_block=True, head_overflow="error")
    student_tokens = args.batch * args.seq
  recipe = Recipe(
    model=model,
    objective=objective,
    ema=EMAConfig(),
    optimizer=OptimizerConfig(warmup_steps=10, max_steps=1000, clip_norm=1.0),
  )
  host = [
    common.make_batch(args.batch, args.seq, model.vocab_size, seed=s, full_rows=True)
    for s in range(2)
  ]
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  tx = make_optimizer(recipe.optimizer)
  with sharding_lib.activate(mesh):
    step, state, batches = common.jax_train_setup(recipe, plan, tx, mesh, host)
    box = {"state": state, "i": 0}
    losses = []

    def one():
      b = batches[box["i"] % len(batches)]
      box["state"], metrics = step(box["state"], b)
      losses.append(float(jax.device_get(metrics["loss"])))
      box["i"] += 1

    t0 = time.perf_counter()
    one()
    first = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
      one()
    times = common.timed_loop(one, args.steps)
  flops = plan.flops_per_token(model, objective, masked_fraction=common.MASK_PROB)
  common.emit(
    {
      "times_s": times,
      "real_tokens": [common.real_tokens(host[0])] * len(times),
      "first_call_s": first - common.median(times),
      "peak_rss_mib": common.peak_rss_mib(),
      "rss_base_mib": rss_base,
      "losses": losses,
      "student_tokens_per_step": student_tokens,
      "gflop_per_sentence_token": flops / 1e9,
      "plan": dataclasses.asdict(plan),
    }
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default="small", choices=sorted(common.CONFIGS))
  parser.add_argument("--batch", type=int, default=8, help="sentences per step")
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--clone_batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--objectives", default=",".join(OBJECTIVES))
  parser.add_argument("--timeout", type=float, default=1800)
  parser.add_argument("--pin_cores", type=int, default=0)
  parser.add_argument("--no_record", action="store_true")
  parser.add_argument("--note", default="")
  parser.add_argument("--objective", choices=OBJECTIVES, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.objective:
    if args.pin_cores:
      common.pin_to_cores(args.pin_cores)
    worker(args)
    return
  objectives = args.objectives.split(",")
  worker_args = [
    f"--config={args.config}",
    f"--batch={args.batch}",
    f"--seq={args.seq}",
    f"--clone_batch={args.clone_batch}",
    f"--steps={args.steps}",
    f"--warmup={args.warmup}",
    f"--pin_cores={args.pin_cores}",
  ]
  runs = {o: [] for o in objectives}
  for r in range(args.rounds):
    for o in objectives if r % 2 == 0 else objectives[::-1]:
      res = common.run_worker(__file__, [f"--objective={o}", *worker_args], timeout=args.timeout)
      if "error" in res:
        print(
          f"[{o} round {r}] ERROR {res['error']}\n{res.get('stderr_tail', '')}", file=sys.stderr
        )
        continue
      runs[o].append(res)
      print(f"[{o} round {r}] median {common.median(res['times_s']):.4f}s", file=sys.stderr)
  rows = []
  for o in objectives:
    if not runs[o]:
      continue
    s = common.summarize_step_runs(runs[o])
    med = s["median_step_s"]
    rows.append(
      {
        "objective": o,
        "median_step_s": round(med, 4),
        "sentences_per_s": round(args.batch / med, 2),
        "student_tokens_per_s": round(runs[o][0]["student_tokens_per_step"] / med, 1),
        "real_tokens_per_s": round(s["tokens_per_s"], 1),
        "gflop_per_sentence_token": round(runs[o][0]["gflop_per_sentence_token"], 4),
        "first_call_s": round(s["first_call_s"], 2),
        "peak_rss_mib": round(s["peak_rss_mib"]),
        "final_loss": s["final_loss"],
      }
    )
  base = {r["objective"]: r["sentences_per_s"] for r in rows}
  for r in rows:
    if "data2vec" in base:
      r["sentences_vs_v1"] = round(r["sentences_per_s"] / base["data2vec"], 3)
  common.print_table(rows, list(rows[0]) if rows else [])
  if not args.no_record and rows:
    common.append_result(
      "v2_step",
      common.cpu_device_label("jax only", 0, args.pin_cores),
      rows,
      config=args.config,
      batch=args.batch,
      seq=args.seq,
      clone_batch=args.clone_batch,
      rounds=args.rounds,
      steps=args.steps,
      note=args.note,
    )


if __name__ == "__main__":
  main()
