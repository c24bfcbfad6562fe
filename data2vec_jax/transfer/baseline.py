"""The non-neural baseline on the experiment's own label subsets: TF-IDF + logistic regression
(`finetune/bow_baseline.py`, its settings chosen by cross-validation on the train labels), one
results.jsonl line per task, budget and seed (model 'bow', method 'bow')."""

from __future__ import annotations

import json
import os

from data2vec_jax.finetune import bow_baseline
from data2vec_jax.finetune.heldout_tasks import Example
from data2vec_jax.transfer.plan import Plan
from data2vec_jax.transfer.probe import read_tsv

BOW = "bow"


def _examples(path: str) -> list[Example]:
  texts, labels = read_tsv(path)
  return [Example(t, label, ()) for t, label in zip(texts, labels)]


def baseline(plan: Plan) -> None:
  done = set()
  if os.path.isfile(plan.results_path):
    with open(plan.results_path, encoding="utf-8") as f:
      rows = [json.loads(line) for line in f if line.endswith("\n")]
    done = {(r["task"], r["budget"], r["seed"]) for r in rows if r["method"] == BOW}
  for task in plan.tasks:
    for budget in plan.budgets:
      for seed in plan.seeds:
        if (task, budget, seed) in done:
          continue
        folder = plan.task_dir(task, budget, seed)
        scores = bow_baseline.evaluate(
          _examples(os.path.join(folder, "train.tsv")),
          _examples(os.path.join(folder, "validation.tsv")),
          seed,
        )
        row = {"model": BOW, "recipe": BOW, "step": 0, "steps": 0, "task": task,
               "budget": budget, "seed": seed, "method": BOW, **scores}  # fmt: skip
        with open(plan.results_path, "a", encoding="utf-8") as f:
          f.write(json.dumps(row) + "\n")
