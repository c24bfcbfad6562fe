"""The bag-of-words baseline learns a tiny separable task (one sentence and pairs) and beats the
majority class; C is chosen on the training examples only."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from data2vec_jax.finetune.bow_baseline import C_GRID, evaluate  # noqa: E402
from data2vec_jax.finetune.heldout_tasks import Example  # noqa: E402

FILLER = "the of a to is in it for".split()


def sentence(word: str, i: int) -> str:
  return f"{FILLER[i % 8]} {word} {FILLER[(i + 3) % 8]} {FILLER[(i + 5) % 8]} {i}"


def test_baseline_beats_the_majority_class_on_a_separable_task():
  keywords = {"files": "path", "network": "socket", "numbers": "decimal"}
  make = lambda n, offset: [  # noqa: E731
    Example((sentence(word, i + offset),), label, (f"{label}{i}",))
    for label, word in keywords.items()
    for i in range(n)
  ]
  train, dev = make(8, 0) + make(2, 100)[:1], make(10, 1000)
  result = evaluate(train, dev)
  assert (
    result["accuracy"] == 1.0 > result["majority"]
    and result["C"] in C_GRID
    and not result["pair_words"]
  )


def test_baseline_reads_sentence_pairs():
  words = ["red", "green", "blue", "black", "white", "pink", "gray", "brown", "cyan", "teal"]
  make = lambda pairs: [  # noqa: E731
    Example((sentence(a, i), sentence(b, i + 1)), "same" if a == b else "different", (str(i),))
    for i, (a, b) in enumerate(pairs)
  ]
  same = [(w, w) for w in words]
  train = make(same + [(w, words[(k + 1) % 10]) for k, w in enumerate(words)])
  dev = make(same[::-1] + [(w, words[(k + 3) % 10]) for k, w in enumerate(words)])
  result = evaluate(train, dev)
  assert result["accuracy"] > result["majority"] == 0.5
