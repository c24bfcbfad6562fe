"""The demo's offline fine-tuning task: built from the CPython-shipped reference manual, classes
from whole documents, dev documents disjoint from training ones, deterministic."""

from __future__ import annotations

import collections

import pytest

from data2vec_jax.data.offline_corpus import named_topic_documents
from data2vec_jax.finetune.demo_task import TOPIC_CLASSES, topic_examples, write_topic_task
from data2vec_jax.finetune.generic_task import read_generic_split


@pytest.mark.parametrize("split_by", ["sentence", "document"])
def test_topic_task_is_well_formed_and_deterministic(tmp_path, split_by):
  splits = topic_examples(split_by=split_by)
  assert splits == topic_examples(split_by=split_by)  # same Python -> same task
  train, dev = splits["train"], splits["validation"]
  assert len(train) > 1000 and len(dev) > 150
  train_sentences = {s for s, _ in train}
  assert not any(s in train_sentences for s, _ in dev)  # no dev sentence is trained on
  for split in (train, dev):
    counts = collections.Counter(y for _, y in split)
    assert set(counts) == set(TOPIC_CLASSES) and min(counts.values()) > 0.1 * len(split)
  # Labels come from the sentence's pydoc topic.
  topic_of = {s: t for t, sentences in named_topic_documents() for s in sentences}
  class_of = {t: c for c, topics in TOPIC_CLASSES.items() for t in topics}
  assert all(class_of[topic_of[s]] == y for s, y in train[:200] + dev[:200])

  counts = write_topic_task(str(tmp_path), max_train=300, split_by=split_by)
  assert counts == {"train": 300, "validation": len(dev)}
  read = read_generic_split(
    str(tmp_path / "train.tsv"), text_columns=("sentence",), label_column="label"
  )
  assert read.texts[0] == tuple(" ".join(s.split()) for s, _ in train[:300])
  assert read.label_names == tuple(sorted(TOPIC_CLASSES))
