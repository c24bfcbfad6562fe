"""The fine-tuning data sources' dispatcher (data2vec_jax/finetune/sources.py): its option and
split checks and the task facts. Each reader has its own test file: test_glue_tsv.py,
test_tfds_glue.py, test_fairseq_glue.py, test_generic_task.py."""

from __future__ import annotations

import pytest

from data2vec_jax.data.sources import DataError
from data2vec_jax.finetune import sources
from data2vec_jax.finetune.sources import num_labels, read_split, task_splits

GENERIC = dict(text_columns=["premise", "hypothesis"], label_column="label")


def test_dispatcher_errors_and_task_facts(tmp_path):
  with pytest.raises(DataError, match=r"unknown fine-tuning data source 'hf'; known: \['glue_tsv'"):
    read_split("hf", "rte", "train")
  with pytest.raises(DataError, match=r"source 'fairseq_bin' needs the option\(s\) \['path'\]"):
    read_split("fairseq_bin", "rte", "train")
  with pytest.raises(DataError, match=r"source 'tfds' has no option\(s\) \['path'\]"):
    read_split("tfds", "rte", "train", path="x")
  with pytest.raises(
    DataError, match=r"has no split 'validation'; known: \['train', 'validation_matched'"
  ):
    read_split("fairseq_bin", "mnli", "validation", path="x")
  with pytest.raises(DataError, match=r"unknown GLUE task 'squad'"):
    read_split("glue_tsv", "squad", "train", path="x")
  with pytest.raises(DataError, match=r"generic task 'mine' has no split 'test'"):
    read_split("generic", "mine", "test", path="x", **GENERIC)
  with pytest.raises(DataError, match="num_labels needs label_names"):
    num_labels("generic", "mine")
  assert task_splits("glue_tsv", "rte") == {"train": "train", "evaluation": ("validation",)}
  assert task_splits("generic", "anything")["evaluation"] == ("validation",)
  assert [num_labels("tfds", t) for t in ("mnli", "stsb", "cola")] == [3, 1, 2]
  assert sources.SOURCES == ("glue_tsv", "tfds", "fairseq_bin", "generic")
