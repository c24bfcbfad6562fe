"""The linear probe: heldout_tasks TSVs read back, pair features, and a logistic regression whose
C is picked by cross-validation on the train labels (well above chance when the features carry
the label, at chance when they do not)."""

from __future__ import annotations

import numpy as np
import pytest

from data2vec_jax.finetune.heldout_tasks import Example, write_tsv
from data2vec_jax.transfer.probe import C_GRID, pair_features, probe_accuracy, read_tsv


def test_read_tsv_one_and_two_sentences(tmp_path):
  path = str(tmp_path / "area.tsv")
  write_tsv(path, "stdlib_area", [Example(("Open a file, quoted \"so\".",), "files", ("a",)),
                                  Example(("Send a packet 'now'.",), "network", ("b",))])  # fmt: skip
  assert read_tsv(path) == (
    [("Open a file, quoted \"so\".",), ("Send a packet 'now'.",)],
    ["files", "network"],
  )
  path = str(tmp_path / "pairs.tsv")
  write_tsv(path, "same_docstring", [Example(("One thing.", "Another thing."), "same", ("a",))])
  assert read_tsv(path) == ([("One thing.", "Another thing.")], ["same"])


def test_read_tsv_refuses_a_file_without_labels(tmp_path):
  path = tmp_path / "bad.tsv"
  path.write_text("sentence\tcategory\nsome text\tx\n", encoding="utf-8")
  with pytest.raises(ValueError, match="the last column is 'category', expected 'label'"):
    read_tsv(str(path))


def test_pair_features():
  u = np.arange(6, dtype=np.float32).reshape(2, 3)
  v = np.array([[1, -1, 2], [0, 5, 5]], dtype=np.float32)
  assert pair_features([u]) is u
  out = pair_features([u, v])
  assert out.shape == (2, 12)
  np.testing.assert_array_equal(out[:, :3], u)
  np.testing.assert_array_equal(out[:, 3:6], v)
  np.testing.assert_array_equal(out[:, 6:9], np.abs(u - v))
  np.testing.assert_array_equal(out[:, 9:], u * v)
  np.testing.assert_array_equal(out[1], [3, 4, 5, 0, 5, 5, 3, 1, 0, 0, 20, 25])


def blobs(rng, n: int, labels: tuple[str, ...], signal: float):
  y = [labels[i % len(labels)] for i in range(n)]
  centers = {label: rng.normal(size=16) for label in labels}
  x = np.stack([signal * centers[label] + rng.normal(size=16) for label in y])
  return x.astype(np.float32), y


def test_probe_learns_separable_features():
  rng = np.random.default_rng(0)
  labels = ("a", "b", "c")
  centers_rng = np.random.default_rng(1)
  x, y = blobs(centers_rng, 300, labels, 3.0)
  train_x, train_y, dev_x, dev_y = x[:60], y[:60], x[60:], y[60:]
  out = probe_accuracy(train_x + 100.0, train_y, dev_x + 100.0, dev_y, seed=0)  # offset: scaled
  assert out["accuracy"] > 0.9 and out["C"] in C_GRID
  assert set(out) == {"accuracy", "C"}
  # Random labels: nothing to learn; accuracy near chance (1/3) on 240 dev examples.
  shuffled = list(rng.permutation(y))
  out = probe_accuracy(x[:60], shuffled[:60], x[60:], shuffled[60:], seed=0)
  assert out["C"] in C_GRID and 0.2 < out["accuracy"] < 0.5


def test_probe_is_deterministic_for_a_seed():
  x, y = blobs(np.random.default_rng(2), 90, ("same", "different"), 0.5)
  first = probe_accuracy(x[:45], y[:45], x[45:], y[45:], seed=3)
  assert first == probe_accuracy(x[:45], y[:45], x[45:], y[45:], seed=3)
