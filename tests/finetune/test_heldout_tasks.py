"""The held-out tasks: built from given (reserved) documents, train and dev disjoint by document,
balanced nested label budgets, written as generic TSVs the fine-tuning source reads."""

from __future__ import annotations

import collections

import pytest

from data2vec_jax.configs.finetune import get_config
from data2vec_jax.data.stdlib_corpus import CorpusDocument
from data2vec_jax.finetune.data import read_labeled_split
from data2vec_jax.finetune.heldout_tasks import (
  AREAS,
  TASKS,
  TEXT_COLUMNS,
  budget_examples,
  is_dev_document,
  task_splits,
  write_task,
)
from tests.finetune_helpers import area_documents


def fake_documents() -> list[CorpusDocument]:
  """finetune_helpers.area_documents, and one manual document in no area."""
  docs = area_documents()
  docs.append(CorpusDocument("manual:x#1", "manual:x", ("Not in any area at all, sadly.",)))
  return docs


@pytest.mark.parametrize("task", TASKS)
def test_splits_are_deterministic_disjoint_by_document_and_balanced(task):
  docs = fake_documents()
  splits = task_splits(task, docs)
  assert splits == task_splits(task, docs)
  dev_docs = {d for ex in splits["dev"] for d in ex.doc_ids}
  pool_docs = {d for ex in splits["pool"] for d in ex.doc_ids}
  assert dev_docs and pool_docs and not dev_docs & pool_docs
  assert all(is_dev_document(d) for d in dev_docs)
  dev_texts = {t for ex in splits["dev"] for t in ex.texts}
  assert not dev_texts & {t for ex in splits["pool"] for t in ex.texts}
  counts = collections.Counter(ex.label for ex in splits["dev"])
  expected = set(AREAS) if task == "stdlib_area" else {"same", "different"}
  assert set(counts) == expected and max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("task", TASKS)
def test_budgets_are_nested_balanced_and_seeded(task):
  pool = task_splits(task, fake_documents())["pool"]
  small, large = budget_examples(pool, 12, 0), budget_examples(pool, 40, 0)
  assert large[:12] == small and len(set(large)) == 40
  counts = collections.Counter(ex.label for ex in small)
  assert max(counts.values()) - min(counts.values()) <= 1
  assert budget_examples(pool, 40, 0) == large != budget_examples(pool, 40, 1)
  with pytest.raises(ValueError, match="exceeds"):
    budget_examples(pool, len(pool) + 1, 0)


@pytest.mark.parametrize("task", TASKS)
def test_written_budget_loads_through_the_generic_finetuning_source(tmp_path, task):
  counts = write_task(str(tmp_path), task, fake_documents(), budgets=(10, 30))
  assert counts["10"] == 10 and counts["dev"] > 10
  assert (tmp_path / task / "30" / "validation.tsv").read_bytes() == (
    tmp_path / task / "dev.tsv"
  ).read_bytes()
  data = get_config().data
  data.source, data.path = "generic", str(tmp_path / task / "10")
  data.text_columns = TEXT_COLUMNS[task]
  train = read_labeled_split(data, task, "train", None)
  dev = read_labeled_split(data, task, "validation", train.label_names)
  assert len(train.labels) == 10 and len(dev.labels) == counts["dev"]
  assert len(train.texts) == len(TEXT_COLUMNS[task])
  expected = tuple(sorted(AREAS)) if task == "stdlib_area" else ("different", "same")
  assert train.label_names == expected
  write_task(str(tmp_path / "again"), task, fake_documents(), budgets=(10, 30))
  for name in ("dev.tsv", "30/train.tsv"):
    assert (tmp_path / task / name).read_bytes() == (tmp_path / "again" / task / name).read_bytes()
