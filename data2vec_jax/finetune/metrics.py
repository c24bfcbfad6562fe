"""GLUE dev metrics exactly as GLUE defines them, and the paper's GLUE average.

Definitions (docs/reference/finetuning_reference.md §3; huggingface `evaluate` glue.py; fairseq
`criterions/sentence_prediction.py`):

| task  | metrics                    | the paper's per-task number (Table 4) |
|-------|----------------------------|---------------------------------------|
| CoLA  | Matthews correlation       | mcc                                   |
| SST-2, QNLI, RTE, WNLI | accuracy  | accuracy                              |
| MRPC, QQP | accuracy, F1 of raw label 1 | (accuracy + F1) / 2               |
| STS-B | Pearson r, Spearman rho on the raw regression outputs (no clipping) | (r + rho) / 2 |
| MNLI  | accuracy on dev matched and on dev mismatched | reported as m/mm       |

Values are fractions in [0, 1] (correlations in [-1, 1]); fairseq logs them x100 rounded to one
decimal (`percent`). F1 is for raw label 1 ("equivalent" / "duplicate"), whatever order the
classes have in a model's output: callers pass raw labels. Everything is computed in float64 on
the host from numpy arrays.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

# Task -> the metrics reported for it, in order; the paper's score is their mean (MNLI: per split).
TASK_METRICS: dict[str, tuple[str, ...]] = {
  "cola": ("mcc",),
  "sst2": ("accuracy",),
  "mrpc": ("accuracy", "f1"),
  "qqp": ("accuracy", "f1"),
  "stsb": ("pearson", "spearman"),
  "mnli": ("accuracy",),  # scored per split: dev matched and dev mismatched
  "qnli": ("accuracy",),
  "rte": ("accuracy",),
  "wnli": ("accuracy",),
}
# The eight tasks of the paper's Avg. column (WNLI excluded).
GLUE_AVERAGE_TASKS = ("mnli", "qnli", "rte", "mrpc", "qqp", "stsb", "cola", "sst2")


def _pair(predictions, labels, dtype) -> tuple[np.ndarray, np.ndarray]:
  p, y = np.asarray(predictions, dtype), np.asarray(labels, dtype)
  if p.ndim != 1 or p.shape != y.shape:
    raise ValueError(
      f"predictions {p.shape} and labels {y.shape} must be two 1-D arrays of one length"
    )
  if p.size == 0:
    raise ValueError("no examples to score")
  return p, y


def accuracy(predictions, labels) -> float:
  """Fraction of predictions equal to the label."""
  p, y = _pair(predictions, labels, np.int64)
  return float(np.mean(p == y))


def binary_f1(predictions, labels, positive: int = 1) -> float:
  """F1 of class `positive`: 2 TP / (2 TP + FP + FN); 0 when there is no positive at all
  (sklearn's `f1_score` with zero_division=0)."""
  p, y = _pair(predictions, labels, np.int64)
  tp = np.sum((p == positive) & (y == positive))
  denominator = (
    2 * tp + np.sum((p == positive) & (y != positive)) + np.sum((p != positive) & (y == positive))
  )
  return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(predictions, labels) -> float:
  """Matthews correlation (multi-class form, as sklearn): 0 when a marginal is constant."""
  p, y = _pair(predictions, labels, np.int64)
  classes, index = np.unique(np.concatenate([y, p]), return_inverse=True)
  confusion = np.zeros((len(classes), len(classes)), np.float64)
  np.add.at(confusion, (index[: len(y)], index[len(y) :]), 1.0)
  true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
  correct, total = np.trace(confusion), confusion.sum()
  cov_true_pred = correct * total - true_counts @ predicted_counts
  cov_pred = total * total - predicted_counts @ predicted_counts
  cov_true = total * total - true_counts @ true_counts
  if cov_pred * cov_true == 0:
    return 0.0
  return float(cov_true_pred / np.sqrt(cov_true * cov_pred))


def pearson(predictions, labels) -> float:
  """Pearson's r; NaN when either side is constant (as scipy, which also warns)."""
  x, y = _pair(predictions, labels, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
  return float(np.sum(x * y) / denominator) if denominator else float("nan")


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks, ties sharing their average rank (scipy `rankdata(method='average')`)."""
  order = np.argsort(x, kind="mergesort")
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]
  ranks = np.empty(len(x), np.float64)
  for start, end in zip(starts, ends):
    ranks[order[start:end]] = 0.5 * (start + 1 + end)
  return ranks


def spearman(predictions, labels) -> float:
  """Spearman's rho: Pearson's r of the average ranks."""
  x, y = _pair(predictions, labels, np.float64)
  return pearson(_average_ranks(x), _average_ranks(y))


_METRIC_FUNCTIONS = {
  "accuracy": accuracy,
  "f1": binary_f1,
  "mcc": matthews_corrcoef,
  "pearson": pearson,
  "spearman": spearman,
}


# Metric sets a task of your own can be scored with (finetune config `data.metric`).
METRIC_SETS: dict[str, tuple[str, ...]] = {
  "accuracy": ("accuracy",),
  "mcc": ("mcc",),
  "accuracy_f1": ("accuracy", "f1"),
  "pearson_spearman": ("pearson", "spearman"),
}


def metrics_of(names: tuple[str, ...], predictions, labels) -> dict[str, float]:
  """The named metrics (see `_METRIC_FUNCTIONS`) and 'score', their mean, as fractions."""
  unknown = [n for n in names if n not in _METRIC_FUNCTIONS]
  if unknown or not names:
    raise ValueError(f"unknown metrics {unknown or names}; known: {sorted(_METRIC_FUNCTIONS)}")
  values = {name: _METRIC_FUNCTIONS[name](predictions, labels) for name in names}
  values["score"] = float(np.mean(list(values.values())))
  return values


def task_metrics(task: str, predictions, labels) -> dict[str, float]:
  """The task's metrics and its paper score ('score': their mean), as fractions.

  predictions / labels: [N] raw class labels (classification) or floats (STS-B). For MNLI call
  it once per dev split.
  """
  if task not in TASK_METRICS:
    raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(TASK_METRICS)}")
  return metrics_of(TASK_METRICS[task], predictions, labels)


def glue_average(scores: Mapping[str, float], *, mnli: float | None = None) -> dict[str, float]:
  """The paper's Avg. column: the unweighted mean of the eight tasks' scores.

  scores: task -> its paper score ('mnli' = dev matched, the paper's convention; pass `mnli` to
  use another value, e.g. the mean of matched and mismatched). Returns {'average': the Avg-8,
  'average_without_rte': the mean of the other seven, as fairseq's internal tools also print}.
  """
  values = dict(scores)
  if mnli is not None:
    values["mnli"] = mnli
  missing = [t for t in GLUE_AVERAGE_TASKS if t not in values]
  if missing:
    raise ValueError(f"the GLUE average needs a score for {missing}")
  eight = [float(values[t]) for t in GLUE_AVERAGE_TASKS]
  seven = [float(values[t]) for t in GLUE_AVERAGE_TASKS if t != "rte"]
  return {"average": float(np.mean(eight)), "average_without_rte": float(np.mean(seven))}


def percent(value: float) -> float:
  """x100, rounded to one decimal, as fairseq logs and the paper reports."""
  return round(100.0 * value, 1)
