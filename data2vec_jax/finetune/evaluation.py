"""A fine-tuning run's dev evaluations as records: scored, written, read back, compared, shown.

An evaluation is a dict {update, epoch, score, selection, splits: {split: metrics}}: `score` is
the first dev split's GLUE score, `selection` the value the reported evaluation is chosen by
(`train.select_by`: the score or the accuracy). Its metrics.jsonl row holds the same numbers as
`dev/...` keys, so a resumed run reads its evaluations so far back from the rows
(`from_row(to_row(e)) == e`, with the row's `step`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data2vec_jax.finetune.data import TaskData
from data2vec_jax.finetune.metrics import metrics_of
from data2vec_jax.finetune.settings import RunSettings


def split_scores(settings: RunSettings, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """The task's metrics on one dev split (fractions), its GLUE score and its accuracy.

  logits: float32 [N, C]; labels: [N] ids, or float targets for regression (scaled like the
  training targets: correlations do not change with the scale).
  """
  if settings.num_labels == 1:
    predictions = logits[:, 0].astype(np.float64)
  else:
    predictions = np.argmax(logits, axis=-1)
  metrics = metrics_of(settings.metric_names, predictions, labels)
  if settings.num_labels > 1:
    metrics.setdefault("accuracy", float(np.mean(predictions == labels)))
  else:
    metrics.setdefault("accuracy", metrics["score"])  # regression: select on the score
  metrics["examples"] = int(len(labels))
  return metrics


def majority_class(settings: RunSettings, task_data: TaskData) -> dict[str, Any] | None:
  """The dev scores of predicting the train set's most common label for every example: the
  floor a classifier has to beat (summary.md, dev_curves.png). None for regression."""
  if settings.num_labels == 1 or not len(task_data.train):
    return None
  label = int(np.bincount(np.asarray(task_data.train.labels, np.int64)).argmax())
  splits = {}
  for name, split in task_data.evals.items():
    logits = np.zeros((len(split), settings.num_labels), np.float32)
    logits[:, label] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):  # MCC/F1 of a constant: 0
      splits[name] = split_scores(settings, logits, np.asarray(split.labels))
  names = settings.label_names
  return {
    "label": names[label] if names is not None else label,
    "score": next(iter(splits.values()))["score"],
    "splits": splits,
  }


def record(update: int, epoch: float, result: dict[str, Any]) -> dict[str, Any]:
  """The record of a dev evaluation at `update` (`result`: {splits, score, selection})."""
  return {
    "update": update,
    "epoch": epoch,
    "score": result["score"],
    "selection": result["selection"],
    "splits": result["splits"],
  }


def to_row(evaluation: dict[str, Any]) -> dict[str, float]:
  """The evaluation's metrics.jsonl / TensorBoard row (`dev/...` keys)."""
  out = {
    "dev/score": evaluation["score"],
    "dev/selection": evaluation["selection"],
    "dev/epoch": evaluation["epoch"],
  }
  for split, metrics in evaluation["splits"].items():
    out.update({f"dev/{split}/{k}": v for k, v in metrics.items()})
  return out


def from_row(row: dict[str, Any]) -> dict[str, Any]:
  """An evaluation read back from its metrics.jsonl row (a resumed run's history)."""
  splits: dict[str, dict[str, float]] = {}
  for key, value in row.items():
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "dev":
      splits.setdefault(parts[1], {})[parts[2]] = value
  for metrics in splits.values():
    metrics["examples"] = int(metrics["examples"])
  return {
    "update": int(row["step"]),
    "epoch": row["dev/epoch"],
    "score": row["dev/score"],
    "selection": row["dev/selection"],
    "splits": splits,
  }


def best(evaluations: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The first evaluation with the highest selection value (ties: the earlier one)."""
  found = None
  for e in evaluations:
    if found is None or e["selection"] > found["selection"]:
      found = e
  return found


def describe(result: dict[str, Any]) -> str:
  """An evaluation's log line: each split's metrics in percent, then the score."""
  parts = []
  for split, metrics in result["splits"].items():
    shown = ", ".join(
      f"{k} {100 * v:.2f}" for k, v in metrics.items() if k not in ("examples", "score")
    )
    parts.append(f"{split}: {shown}")
  return "; ".join(parts) + f" | score {100 * result['score']:.2f}"
