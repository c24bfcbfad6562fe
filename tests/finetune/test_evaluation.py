"""A fine-tuning run's dev evaluations as records (finetune/evaluation.py): the metrics.jsonl
row round trip a resumed run relies on, the best-evaluation rule, the log line."""

from __future__ import annotations

from data2vec_jax.finetune import evaluation as evaluation_lib


def _result(score: float, selection: float) -> dict:
  metrics = {"accuracy": selection, "score": score, "examples": 40}
  return {"splits": {"validation": metrics}, "score": score, "selection": selection}


def test_an_evaluation_reads_back_from_its_row():
  record = evaluation_lib.record(12, 1.5, _result(0.75, 0.8))
  row = {"step": 12, "time": 0.0, **evaluation_lib.to_row(record)}
  assert row["dev/validation/accuracy"] == 0.8 and row["dev/epoch"] == 1.5
  assert evaluation_lib.from_row(row) == record


def test_the_best_is_the_first_with_the_highest_selection():
  records = [
    evaluation_lib.record(u, u / 10, _result(0.5, s)) for u, s in ((1, 0.6), (2, 0.7), (3, 0.7))
  ]
  assert evaluation_lib.best(records)["update"] == 2
  assert evaluation_lib.best([]) is None


def test_the_log_line_shows_percent():
  line = evaluation_lib.describe(_result(0.75, 0.8))
  assert line == "validation: accuracy 80.00 | score 75.00"
