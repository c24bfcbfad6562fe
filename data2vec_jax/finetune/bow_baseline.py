"""The non-neural baseline of the held-out tasks (`finetune.heldout_tasks`): TF-IDF bag of words
(unigrams and bigrams, fitted on the training examples only) + logistic regression.

A sentence pair is represented by the cosine similarity of its two sentences' vectors, optionally
with their element-wise product and absolute difference (shared words, and words in one only).
The regularisation C (and for pairs whether to add the word features) is chosen by stratified
3-fold cross-validation on the TRAIN examples of the budget (dev is never looked at until the
final score). The metric is accuracy: dev and every budget are balanced by
construction; the majority class's accuracy is reported beside it.

Needs scikit-learn (a dev dependency, not a runtime one: pyproject's [dev] extra).

  python -m data2vec_jax.finetune.bow_baseline [--seeds 0,1,2]   # prints the table
"""

from __future__ import annotations

import argparse
import collections
import sys
import types
from typing import Callable, Sequence

import numpy as np

from data2vec_jax.data.stdlib_corpus import reserved_documents
from data2vec_jax.finetune.heldout_tasks import (
  BUDGETS,
  TASKS,
  Example,
  budget_examples,
  task_splits,
)

C_GRID = (0.1, 1.0, 10.0, 100.0)
CV_FOLDS = 3


def _sklearn() -> types.SimpleNamespace:
  """scipy.sparse and the scikit-learn pieces the baseline uses, imported on first use:
  scikit-learn is an optional (dev) dependency, so importing this module never needs it, and
  using the baseline without it is one line saying what to install."""
  try:
    import scipy.sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
  except ImportError as e:
    raise ImportError(
      "the bag-of-words baseline needs scikit-learn: pip install -e '.[dev]' (or scikit-learn)"
    ) from e
  return types.SimpleNamespace(
    sparse=scipy.sparse,
    TfidfVectorizer=TfidfVectorizer,
    LogisticRegression=LogisticRegression,
    StratifiedKFold=StratifiedKFold,
  )


def fit_features(train_texts: Sequence[tuple[str, ...]], pair_words: bool = False) -> Callable:
  """A function texts -> features (scipy sparse [N, F], float64), its TF-IDF vocabulary fitted on
  `train_texts` (each item 1 or 2 sentences).

  A pair's features: the cosine similarity of its two TF-IDF vectors, and with `pair_words` also
  their element-wise product and absolute difference (which words are shared, which are not)."""
  vectorizer = _sklearn().TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
  vectorizer.fit([t for texts in train_texts for t in texts])

  def features(texts: Sequence[tuple[str, ...]]):
    if len(texts[0]) == 1:
      return vectorizer.transform([t[0] for t in texts])
    a = vectorizer.transform([t[0] for t in texts])
    b = vectorizer.transform([t[1] for t in texts])
    shared = a.multiply(b)
    cosine = _sklearn().sparse.csr_matrix(np.asarray(shared.sum(axis=1)))  # rows are L2-normalised
    return (
      _sklearn().sparse.hstack([cosine, shared, abs(a - b)] if pair_words else [cosine]).tocsr()
    )

  return features


def _fit(texts: Sequence[tuple[str, ...]], labels: Sequence[str], setting: dict):
  features = fit_features(texts, setting["pair_words"])
  model = _sklearn().LogisticRegression(C=setting["C"], max_iter=5000).fit(features(texts), labels)
  return lambda new_texts: model.predict(features(new_texts))


def choose_setting(texts: Sequence[tuple[str, ...]], labels: Sequence[str], seed: int) -> dict:
  """{'C', 'pair_words'}: the setting (C of `C_GRID`; for pairs also with or without the word
  features) with the best mean cross-validated accuracy on the training examples (ties: the
  first, i.e. the smaller C and the fewer features)."""
  smallest_class = min(collections.Counter(labels).values())
  folds = _sklearn().StratifiedKFold(n_splits=max(2, min(CV_FOLDS, smallest_class)), shuffle=True,
                          random_state=seed)  # fmt: skip
  labels = np.asarray(labels)
  word_options = (False, True) if len(texts[0]) == 2 else (False,)
  settings = [{"C": c, "pair_words": words} for words in word_options for c in C_GRID]
  scores = []
  for setting in settings:
    accuracy = []
    for fit_rows, held_rows in folds.split(np.zeros(len(labels)), labels):
      predict = _fit([texts[i] for i in fit_rows], labels[fit_rows], setting)
      accuracy.append(np.mean(predict([texts[i] for i in held_rows]) == labels[held_rows]))
    scores.append(np.mean(accuracy))
  return settings[int(np.argmax(scores))]


def evaluate(train: Sequence[Example], dev: Sequence[Example], seed: int = 0) -> dict[str, float]:
  """{'accuracy': on dev, 'majority': the train split's majority class's accuracy on dev, and the
  chosen setting: 'C', 'pair_words'}."""
  _sklearn()
  texts = [ex.texts for ex in train]
  labels = [ex.label for ex in train]
  setting = choose_setting(texts, labels, seed)
  predictions = _fit(texts, labels, setting)([ex.texts for ex in dev])
  dev_labels = np.asarray([ex.label for ex in dev])
  majority = collections.Counter(labels).most_common(1)[0][0]
  return {
    "accuracy": float(np.mean(predictions == dev_labels)),
    "majority": float(np.mean(dev_labels == majority)),
    **setting,
  }


def baseline_table(seeds: Sequence[int] = (0, 1, 2)) -> list[dict]:
  """One row per task and budget: mean and std (over seeds, i.e. over label subsets) of the dev
  accuracy, the majority-class accuracy and the setting chosen for each seed."""
  docs = reserved_documents()
  rows = []
  for task in TASKS:
    splits = task_splits(task, docs)
    for budget in BUDGETS:
      runs = [
        evaluate(budget_examples(splits["pool"], budget, seed), splits["dev"], seed)
        for seed in seeds
      ]
      accuracy = [r["accuracy"] for r in runs]
      rows.append({
        "task": task, "budget": budget, "dev": len(splits["dev"]),
        "accuracy": float(np.mean(accuracy)), "std": float(np.std(accuracy)),
        "majority": runs[0]["majority"],
        "settings": [f"C={r['C']:g}{'+words' if r['pair_words'] else ''}" for r in runs],
      })  # fmt: skip
  return rows


def format_table(rows: Sequence[dict]) -> str:
  lines = [
    "task            budget  dev  accuracy (mean ± std over seeds)  majority  setting per seed"
  ]
  for r in rows:
    lines.append(
      f"{r['task']:<15} {r['budget']:>6} {r['dev']:>4}  {100 * r['accuracy']:6.1f} ± "
      f"{100 * r['std']:4.1f}{'':20}{100 * r['majority']:6.1f}    {' '.join(r['settings'])}"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", default="0,1,2", help="comma list: one label subset per seed")
  args = parser.parse_args(argv)
  try:
    _sklearn()
  except ImportError as e:
    sys.exit(f"error: {e}")
  print(format_table(baseline_table([int(s) for s in args.seeds.split(",")])))


if __name__ == "__main__":
  main()
