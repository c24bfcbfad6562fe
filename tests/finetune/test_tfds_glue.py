"""GLUE from TFDS (data2vec_jax/finetune/tfds_glue.py) through the dispatcher, on a tiny builder
with TFDS glue's features, split names and label names."""

from __future__ import annotations

import functools
import sys

import numpy as np
import pytest

from data2vec_jax.data.sources import DataError
from data2vec_jax.finetune.sources import read_split, task_splits

RTE = {
  "train": [
    ("A man sleeps.", "Nobody sleeps.", "not_entailment"),
    ("Dogs bark.", "Animals make noise.", "entailment"),
    ("naïve café — 東京 😀", "Tabs\tinside", "not_entailment"),
    ("Four.", "Fourth.", "entailment"),
  ],
  "validation": [("It rains.", "It is wet.", "entailment"), ("Sun.", "Moon.", "not_entailment")],
}
STSB = {
  "train": [("A man.", "A guy.", 4.25), ("A cat.", "A car.", 0.0), ("Hi.", "Hello.", 3.8)],
  "validation": [("One.", "Two.", 1.5)],
}
MNLI = {
  "train": [("p0", "h0", "neutral")],
  "validation_matched": [("pm0", "hm0", "contradiction"), ("pm1", "hm1", "entailment")],
  "validation_mismatched": [("pmm0", "hmm0", "neutral")],
}
# wnli is given rte's label order (TFDS wnli's is reversed): the reader must refuse it.
WNLI = {"train": [("a", "b", "entailment")], "validation": [("c", "d", "entailment")]}
# cola with a test-style -1 label in validation.
COLA = {"train": [("Fine.", "acceptable")], "validation": [("Bad bad.", -1)]}

_CONFIGS = {
  "rte": (("sentence1", "sentence2"), ["entailment", "not_entailment"], RTE),
  "stsb": (("sentence1", "sentence2"), None, STSB),
  "mnli": (("premise", "hypothesis"), ["entailment", "neutral", "contradiction"], MNLI),
  "wnli": (("sentence1", "sentence2"), ["entailment", "not_entailment"], WNLI),
  "cola": (("sentence",), ["unacceptable", "acceptable"], COLA),
}


@functools.lru_cache(maxsize=None)  # a builder class registers its name once per process
def _glue_like_builder_cls():
  import tensorflow_datasets as tfds

  class GlueForD2vTest(tfds.core.GeneratorBasedBuilder):
    """TFDS glue's features (text features, ClassLabel / float32 label, idx) for a few configs."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in _CONFIGS]

    def _info(self):
      text, label_names, _ = _CONFIGS[self.builder_config.name]
      features = {name: tfds.features.Text() for name in text}
      features["label"] = tfds.features.ClassLabel(names=label_names) if label_names else np.float32
      features["idx"] = np.int32
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      return {
        split: self._generate_examples(split) for split in _CONFIGS[self.builder_config.name][2]
      }

    def _generate_examples(self, split):
      text, _, data = _CONFIGS[self.builder_config.name]
      for i, row in enumerate(data[split]):
        yield i, {**dict(zip(text, row[:-1])), "label": row[-1], "idx": i}

  return GlueForD2vTest


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  cls = _glue_like_builder_cls()
  for config in _CONFIGS:
    cls(config=config, data_dir=str(d), file_format="array_record").download_and_prepare()
  return str(d)


def _tfds(task, split, data_dir):
  return read_split("tfds", task, split, data_dir=data_dir, builder="glue_for_d2v_test")


def test_tfds_pair_task_texts_and_ids(tfds_dir):
  for split, rows in RTE.items():
    got = _tfds("rte", split, tfds_dir)
    # source-file (idx) order, str texts, TFDS label ids
    assert got.texts == (tuple(r[0] for r in rows), tuple(r[1] for r in rows))
    assert got.labels.dtype == np.int64
    assert got.labels.tolist() == [("entailment", "not_entailment").index(r[2]) for r in rows]
    assert got.label_names == ("entailment", "not_entailment") and got.skipped == 0
    assert got.token_ids is None and got.split == split and got.task == "rte"
  assert "tensorflow" not in sys.modules


def test_tfds_regression_and_mnli_splits(tfds_dir):
  got = _tfds("stsb", "train", tfds_dir)
  assert got.labels.dtype == np.float32 and got.label_names is None
  np.testing.assert_array_equal(got.labels, np.float32([4.25, 0.0, 3.8]))
  assert got.texts[1] == ("A guy.", "A car.", "Hello.")
  for split in ("validation_matched", "validation_mismatched"):
    got = _tfds("mnli", split, tfds_dir)
    assert got.texts == tuple(tuple(r[c] for r in MNLI[split]) for c in (0, 1))
    assert got.labels.tolist() == [
      ("entailment", "neutral", "contradiction").index(r[2]) for r in MNLI[split]
    ]
  assert task_splits("tfds", "mnli") == {
    "train": "train",
    "evaluation": ("validation_matched", "validation_mismatched"),
  }


def test_tfds_matches_glue_tsv(tfds_dir, tmp_path):
  """The same rows as GLUE TSV and as TFDS give the same LabeledSplit."""
  rows = [["index", "sentence1", "sentence2", "label"]]
  rows += [[str(i), *r] for i, r in enumerate(RTE["validation"])]
  (tmp_path / "dev.tsv").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
  tsv = read_split("glue_tsv", "rte", "validation", path=str(tmp_path))
  got = _tfds("rte", "validation", tfds_dir)
  assert tsv.texts == got.texts and tsv.labels.tolist() == got.labels.tolist()
  assert tsv.label_names == got.label_names


def test_tfds_errors(tfds_dir, tmp_path):
  with pytest.raises(DataError, match=r"label names \['entailment', 'not_entailment'\] differ"):
    _tfds("wnli", "train", tfds_dir)
  with pytest.raises(DataError, match=r"split 'validation': example 0 \(idx 0\) has label -1"):
    _tfds("cola", "validation", tfds_dir)
  assert _tfds("cola", "train", tfds_dir).texts == (("Fine.",),)
  # Not prepared: one error with the command, and nothing is written or downloaded.
  empty = tmp_path / "empty"
  empty.mkdir()
  for builder in ("glue", "glue_for_d2v_test"):
    with pytest.raises(
      DataError, match=r"not prepared.*tfds build .*rte --file_format array_record"
    ):
      read_split("tfds", "rte", "train", data_dir=str(empty), builder=builder)
  with pytest.raises(DataError, match="nothing is downloaded at run time"):
    read_split("tfds", "rte", "train", data_dir=str(empty))
  assert list(empty.iterdir()) == []
  with pytest.raises(DataError, match="'no_such_glue/rte' is not available"):
    read_split("tfds", "rte", "train", data_dir=str(empty), builder="no_such_glue")
  with pytest.raises(DataError, match="has no split 'validation_matched'"):
    _tfds("rte", "validation_matched", tfds_dir)
