"""Scores of every evaluated model on every task, label budget and seed, by fine-tuning and by
a linear probe; one line each in results.jsonl (a re-run skips the lines already there).

Models: each recipe's checkpoints at `plan.evaluated` (exported student weights, `train.export`)
and random weights (`scratch`: the same architecture and tokenizer; fine-tuning's
`from_scratch`, and for the probe a random encoder seeded like the run).

Fine-tuning runs at `plan.finetune_budgets` for the last checkpoints and random weights and at
`plan.finetune_budgets_along` for the earlier checkpoints; the probe at every budget.

Fine-tuning recipe, fixed in advance (the demo's, scaled by the budget; no setting is chosen
by a dev score): AdamW lr 1e-3, 16 sentences per update, 6% warmup then linear decay, for
max(8 epochs, `MIN_UPDATES` updates); one evaluation, at the end, and that is the score
(`train.report='last'`: no best-epoch pick on dev). The seed picks the label subset
(heldout_tasks' `<budget>-seed<S>`) and the run's own seed (S + 1).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from typing import Any, Iterator

import jax
import numpy as np

from data2vec_jax.configs import finetune as finetune_configs
from data2vec_jax.embed import embed
from data2vec_jax.finetune.grid import run_finetuning
from data2vec_jax.finetune.heldout_tasks import TEXT_COLUMNS
from data2vec_jax.model.encoder import init_params
from data2vec_jax.train.export import export_from_checkpoint
from data2vec_jax.transfer import probe
from data2vec_jax.transfer.plan import SCRATCH, Plan, evaluated_steps, model_name
from data2vec_jax.weights.model_tokenizer import load_model_tokenizer
from data2vec_jax.weights.pretrained import load_pretrained

LR = 1e-3
BATCH_SIZE = 16
MIN_EPOCHS = 8
MIN_UPDATES = 150


def models(plan: Plan, calibration: dict) -> list[dict[str, Any]]:
  """[{'name', 'recipe', 'step', 'steps'}] of every model evaluated, in the order they run:
  random weights, each recipe's last checkpoint, then the earlier checkpoints, latest first (a
  stopped evaluation has the main comparison first)."""
  by_rank: dict[int, list[dict[str, Any]]] = {}
  for recipe in plan.recipes:
    steps = int(calibration["recipes"][recipe]["steps"])
    for rank, step in enumerate(reversed(evaluated_steps(plan, steps))):
      model = {"name": model_name(recipe, step), "recipe": recipe, "step": step, "steps": steps}
      by_rank.setdefault(rank, []).append(model)
  scratch = {"name": SCRATCH, "recipe": SCRATCH, "step": 0, "steps": 0}
  return [scratch] + [m for rank in sorted(by_rank) for m in by_rank[rank]]


def export_model(plan: Plan, model: dict[str, Any]) -> str:
  """The model directory of a recipe's checkpoint (exported once, via `<dir>.partial`)."""
  target = plan.model_dir(model["name"])
  if not os.path.isfile(os.path.join(target, "config.json")):
    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    export_from_checkpoint(plan.pretrain_dir(model["recipe"]), partial, step=model["step"])
    os.replace(partial, target)
  return target


def finetune_config(plan: Plan, task: str, budget: int, seed: int, init: str, scratch: bool):
  c = finetune_configs.get_config(f"task={task},own=true")
  c.init = init
  c.from_scratch = scratch
  c.data.update(source="generic", path=plan.task_dir(task, budget, seed))
  c.data.text_columns = TEXT_COLUMNS[task]
  # A few pairs exceed the 128 positions: cut like the probe (embed's truncate), never dropped,
  # so every method scores the same dev examples.
  c.data.update(train_too_long="truncate", eval_too_long="truncate")
  updates = max(MIN_EPOCHS * math.ceil(budget / BATCH_SIZE), MIN_UPDATES)
  c.optimizer.update(lr=LR, max_update=updates, max_epochs=updates)  # max_update is the cap
  c.train.update(
    batch_size=BATCH_SIZE,
    seed=seed + 1,
    eval_every=updates,
    report="last",
    export_model=False,
    tensorboard=False,
    log_every=max(updates // 3, 1),
    # One persistent compilation cache for every run: the runs share their shapes, and a run's
    # own <run>/jax_cache would compile each from scratch (~8 s a run).
    compilation_cache=plan.path("jax_cache"),
  )
  return c


def _done(plan: Plan) -> set[tuple]:
  if not os.path.isfile(plan.results_path):
    return set()
  with open(plan.results_path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.endswith("\n")]
  return {(r["model"], r["task"], r["budget"], r["seed"], r["method"]) for r in rows}


def _append(plan: Plan, row: dict[str, Any]) -> None:
  # One line per write, flushed: a kill loses at most the evaluation in progress.
  with open(plan.results_path, "a", encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")


def _cells(plan: Plan) -> Iterator[tuple[str, int, int]]:
  for task in plan.tasks:
    for budget in plan.budgets:
      for seed in plan.seeds:
        yield task, budget, seed


def evaluate(plan: Plan, calibration: dict) -> None:
  todo = models(plan, calibration)
  architecture = todo[1]  # the first recipe's last checkpoint: scratch's architecture, tokenizer
  done = _done(plan)
  for number, model in enumerate(todo, start=1):
    scratch = model["name"] == SCRATCH
    directory = export_model(plan, architecture if scratch else model)
    start = time.time()
    _probe_model(plan, model, directory, scratch, done)
    last = scratch or model["step"] == model["steps"]
    budgets = plan.finetune_budgets if last else plan.finetune_budgets_along
    for task, budget, seed in _cells(plan):
      if budget not in budgets or (model["name"], task, budget, seed, "finetune") in done:
        continue
      run_dir = plan.finetune_dir(model["name"], task, budget, seed)
      results = run_finetuning(
        finetune_config(plan, task, budget, seed, directory, scratch), run_dir
      )
      if results.get("stop_reason") != "completed":  # a preemption notice: resume next time
        logging.warning(
          "evaluate: %s stopped (%s); re-run to resume", run_dir, results.get("stop_reason")
        )
        return
      _append(plan, {**_row(model, task, budget, seed, "finetune"), "accuracy": results["score"]})
    logging.info(
      "evaluate: [%d/%d] %s done in %.0f s", number, len(todo), model["name"], time.time() - start
    )


def _row(model: dict, task: str, budget: int, seed: int, method: str) -> dict[str, Any]:
  return {
    "model": model["name"],
    "recipe": model["recipe"],
    "step": model["step"],
    "steps": model["steps"],
    "task": task,
    "budget": budget,
    "seed": seed,
    "method": method,
  }


def _probe_model(plan: Plan, model: dict, directory: str, scratch: bool, done: set) -> None:
  config, pretrained = load_pretrained(directory)
  tokenizer = load_model_tokenizer(directory)
  features: dict[tuple[str, ...], np.ndarray] = {}

  def featurize(texts: list[tuple[str, ...]], params: Any, key: tuple) -> np.ndarray:
    parts = []
    for column in range(len(texts[0])):
      strings = [t[column] for t in texts]
      missing = [s for s in dict.fromkeys(strings) if (key, s) not in features]
      if missing:
        rows = embed(config, params, tokenizer, missing, truncate=True, batch_size=64)
        features.update({(key, s): row for s, row in zip(missing, rows)})
      parts.append(np.stack([features[(key, s)] for s in strings]))
    return probe.pair_features(parts)

  for task, budget, seed in _cells(plan):
    if (model["name"], task, budget, seed, "probe") in done:
      continue
    params, key = pretrained, ("pretrained",)
    if scratch:  # a random encoder per seed, as fine-tuning from scratch draws one per run
      params, key = init_params(config, jax.random.PRNGKey(seed + 1)), ("scratch", seed)
    train_x, train_y = probe.read_tsv(os.path.join(plan.task_dir(task, budget, seed), "train.tsv"))
    dev_x, dev_y = probe.read_tsv(os.path.join(plan.task_dir(task, budget, seed), "validation.tsv"))
    scores = probe.probe_accuracy(
      featurize(train_x, params, key), train_y, featurize(dev_x, params, key), dev_y, seed
    )
    _append(plan, {**_row(model, task, budget, seed, "probe"), **scores})
