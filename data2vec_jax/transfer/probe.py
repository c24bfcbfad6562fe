"""Linear probe: frozen sentence features, logistic regression on the label budget.

Features: the mean over a sentence's tokens of the last block's output (`embed.embed`,
pooling='mean'); a pair (u, v) is [u, v, |u - v|, u * v] (the usual sentence-pair features).
Standardised with the train examples' mean and std. The regularisation C is chosen by 3-fold
cross-validation on the train labels only, from `C_GRID`, never by the dev score reported.
scikit-learn is a dev requirement (requirements-dev.txt), imported when a probe runs.
"""

from __future__ import annotations

import csv
from typing import Sequence

import numpy as np

C_GRID = (0.01, 0.1, 1.0, 10.0)


def read_tsv(path: str) -> tuple[list[tuple[str, ...]], list[str]]:
  """(texts per example, labels) of a heldout_tasks TSV (text columns, then `label`)."""
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  header, body = rows[0], rows[1:]
  if header[-1] != "label":
    raise ValueError(f"{path}: the last column is {header[-1]!r}, expected 'label'")
  return [tuple(r[:-1]) for r in body], [r[-1] for r in body]


def pair_features(parts: Sequence[np.ndarray]) -> np.ndarray:
  """[N, D] for one sentence, [N, 4D] for a pair: u, v, |u - v|, u * v."""
  if len(parts) == 1:
    return parts[0]
  u, v = parts
  return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def probe_accuracy(
  train_x: np.ndarray, train_y: Sequence[str], dev_x: np.ndarray, dev_y: Sequence[str], seed: int
) -> dict[str, float]:
  """{'accuracy': on dev, 'C': the one cross-validation chose} for features [N, F]."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import StratifiedKFold, cross_val_score

  mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
  train_x, dev_x = (train_x - mean) / std, (dev_x - mean) / std
  train_y, dev_y = np.asarray(train_y), np.asarray(dev_y)
  folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
  scores = []
  for c in C_GRID:
    model = LogisticRegression(C=c, max_iter=2000)
    scores.append(cross_val_score(model, train_x, train_y, cv=folds).mean())
  best = C_GRID[int(np.argmax(scores))]
  model = LogisticRegression(C=best, max_iter=2000).fit(train_x, train_y)
  return {"accuracy": float(np.mean(model.predict(dev_x) == dev_y)), "C": best}
