"""A task of your own (data2vec_jax/finetune/generic_task.py) through the dispatcher, on tiny
TSV and JSONL files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data2vec_jax.data.sources import DataError
from data2vec_jax.finetune.sources import num_labels, read_split

GENERIC = dict(text_columns=["premise", "hypothesis"], label_column="label")


def write_tsv(path, rows) -> str:
  path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
  return str(path)


def write_jsonl(path, lines) -> str:
  path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
  return str(path)


def test_generic_tsv(tmp_path):
  header = ["id", "premise", "label", "hypothesis"]
  train = write_tsv(
    tmp_path / "train.tsv",
    [header, ["1", "a b", "yes", "c"], ["2", "d", "no", "e f"], [], ["3", "g", "maybe", "h"]],
  )
  got = read_split("generic", "mine", "train", path=train, **GENERIC)
  assert got.texts == (("a b", "d", "g"), ("c", "e f", "h"))
  assert got.label_names == ("maybe", "no", "yes") and got.labels.tolist() == [2, 1, 0]
  assert got.task == "mine" and got.skipped == 0
  assert num_labels("generic", "mine", label_names=got.label_names) == 3
  dev = write_tsv(tmp_path / "dev.tsv", [header, ["1", "x", "no", "y"], ["2", "z", "perhaps", "w"]])
  with pytest.raises(DataError, match=r"dev\.tsv:3: label 'perhaps' is not one of the 3 labels"):
    read_split("generic", "mine", "validation", path=dev, label_names=got.label_names, **GENERIC)
  with pytest.raises(DataError, match=r"pass label_names=<train split>\.label_names"):
    read_split("generic", "mine", "validation", path=dev, **GENERIC)
  dev = write_tsv(tmp_path / "dev.tsv", [header, ["1", "x", "no", "y"], ["2", "z", "yes", "w"]])
  got = read_split(
    "generic", "mine", "validation", path=dev, label_names=got.label_names, **GENERIC
  )
  assert got.labels.tolist() == [1, 2] and got.label_names == ("maybe", "no", "yes")

  bad = write_tsv(
    tmp_path / "bad.tsv",
    [header, ["1", "a", "yes", "b"], ["2", "only three", "no"], ["3", " ", "no", "x"]],
  )
  with pytest.raises(
    DataError,
    match=r"bad\.tsv:3: 3 tab-separated fields, the header has 4; fix or remove the line, or "
    r"set skip_malformed=True",
  ):
    read_split("generic", "mine", "train", path=bad, **GENERIC)
  got = read_split("generic", "mine", "train", path=bad, skip_malformed=True, **GENERIC)
  assert got.skipped == 2 and got.texts == (("a",), ("b",)) and got.label_names == ("yes",)
  with pytest.raises(DataError, match=r"column 'sentence' is not in the header"):
    read_split(
      "generic", "mine", "train", path=bad, text_columns=["sentence"], label_column="label"
    )


def test_generic_jsonl(tmp_path):
  rows = [
    {"a": "one", "b": "uno", "y": 10},
    {"a": "two", "b": "dos", "y": 2},
    {"a": "three", "b": "tres", "y": "0"},
  ]
  options = dict(text_columns=["a", "b"], label_column="y")
  got = read_split("generic", "t", "train", path=write_jsonl(tmp_path / "t.jsonl", rows), **options)
  assert got.label_names == ("0", "2", "10") and got.labels.tolist() == [2, 1, 0]  # numeric order
  assert got.texts == (("one", "two", "three"), ("uno", "dos", "tres"))
  bad = write_jsonl(
    tmp_path / "bad.jsonl", [rows[0], '{"a": "x", "b": ', {"a": "x", "y": 2}, rows[1]]
  )
  with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
    read_split("generic", "t", "train", path=bad, **options)
  got = read_split("generic", "t", "train", path=bad, skip_malformed=True, **options)
  assert got.skipped == 2 and got.texts == (("one", "two"), ("uno", "dos"))
  bad = write_jsonl(tmp_path / "bad2.jsonl", [rows[0], {"a": "x", "y": 2}])
  with pytest.raises(DataError, match=r"bad2\.jsonl:2: key\(s\) \['b'\] missing"):
    read_split("generic", "t", "train", path=bad, **options)
  bad = write_jsonl(tmp_path / "bad3.jsonl", [{"a": "x", "b": "y", "y": 1.0}])
  with pytest.raises(
    DataError, match=r"bad3\.jsonl:1: the label 1\.0 is not a string or an integer"
  ):
    read_split("generic", "t", "train", path=bad, **options)

  scores = [{"a": "x", "b": "y", "y": 0.5}, {"a": "z", "b": "w", "y": "4"}]
  path = write_jsonl(tmp_path / "r.jsonl", scores)
  got = read_split("generic", "r", "validation", path=path, regression=True, **options)
  assert got.labels.dtype == np.float32 and got.labels.tolist() == [0.5, 4.0]
  assert got.label_names is None and num_labels("generic", "r", regression=True) == 1
  path = write_jsonl(tmp_path / "r2.jsonl", scores + [{"a": "x", "b": "y", "y": "high"}])
  with pytest.raises(DataError, match=r"r2\.jsonl:3: the label 'high' is not a number"):
    read_split("generic", "r", "train", path=path, regression=True, **options)
