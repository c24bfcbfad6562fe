"""GLUE metrics (data2vec_jax/finetune/metrics.py) against scikit-learn and scipy on random inputs,
and the GLUE average against the paper's Table 4."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from data2vec_jax.finetune import metrics

# Float64 sums of at most a few thousand terms in another order than scipy's/sklearn's: ~n * 2e-16.
TOL = 1e-12


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 2000))
  labels = rng.integers(0, 2, n)
  # Predictions that agree with the labels ~70% of the time, so no metric sits at its bound.
  predictions = np.where(rng.random(n) < 0.7, labels, 1 - labels)
  assert metrics.accuracy(predictions, labels) == pytest.approx(
    sklearn.metrics.accuracy_score(labels, predictions), abs=TOL
  )
  assert metrics.binary_f1(predictions, labels) == pytest.approx(
    sklearn.metrics.f1_score(labels, predictions, pos_label=1, zero_division=0), abs=TOL
  )
  assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
    sklearn.metrics.matthews_corrcoef(labels, predictions), abs=TOL
  )
  three = rng.integers(0, 3, n)
  guesses = np.where(rng.random(n) < 0.6, three, rng.integers(0, 3, n))
  assert metrics.matthews_corrcoef(guesses, three) == pytest.approx(
    sklearn.metrics.matthews_corrcoef(three, guesses), abs=TOL
  )


def test_degenerate_cases_follow_sklearn():
  labels = np.array([0, 1, 1, 0, 1])
  constant = np.zeros(5, int)
  # MCC is 0 when a marginal is constant; F1 is 0 without any positive prediction.
  assert metrics.matthews_corrcoef(constant, labels) == 0.0
  assert sklearn.metrics.matthews_corrcoef(labels, constant) == 0.0
  assert metrics.binary_f1(constant, labels) == 0.0
  # F1 is for raw label 1, not symmetric under relabelling (MCC is).
  flipped = 1 - labels
  predictions = np.array([1, 1, 0, 1, 1])
  assert metrics.binary_f1(predictions, labels) != metrics.binary_f1(1 - predictions, flipped)
  assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
    metrics.matthews_corrcoef(1 - predictions, flipped), abs=TOL
  )


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(3, 1500))
  gold = rng.integers(0, 6, n).astype(float)  # STS-B labels lie in [0, 5]: many ties
  outputs = gold + rng.normal(0, 1.5, n)
  outputs[: n // 4] = np.round(outputs[: n // 4])  # ties among the predictions too
  assert metrics.pearson(outputs, gold) == pytest.approx(
    scipy.stats.pearsonr(outputs, gold)[0], abs=TOL
  )
  assert metrics.spearman(outputs, gold) == pytest.approx(
    scipy.stats.spearmanr(outputs, gold)[0], abs=TOL
  )
  assert np.isnan(metrics.pearson(np.ones(n), gold))  # scipy: NaN for a constant input


def test_task_scores_are_the_papers_per_task_numbers():
  labels = np.array([1, 1, 0, 1, 0, 0, 1, 1])
  predictions = np.array([1, 0, 0, 1, 1, 0, 1, 1])
  mrpc = metrics.task_metrics("mrpc", predictions, labels)
  assert set(mrpc) == {"accuracy", "f1", "score"}
  assert mrpc["score"] == pytest.approx((mrpc["accuracy"] + mrpc["f1"]) / 2)
  stsb = metrics.task_metrics("stsb", [0.1, 2.0, 3.5, 4.9], [0.0, 2.5, 3.0, 5.0])
  assert stsb["score"] == pytest.approx((stsb["pearson"] + stsb["spearman"]) / 2)
  assert set(metrics.task_metrics("cola", predictions, labels)) == {"mcc", "score"}
  with pytest.raises(ValueError, match="unknown GLUE task 'sts'"):
    metrics.task_metrics("sts", predictions, labels)
  with pytest.raises(ValueError, match="two 1-D arrays of one length"):
    metrics.accuracy([1, 0], [1, 0, 1])
  with pytest.raises(ValueError, match="no examples"):
    metrics.accuracy([], [])


@pytest.mark.parametrize(
  "row, printed",
  [
    # Table 4 (arXiv 2202.03555 v3): MNLI-m, QNLI, RTE, MRPC, QQP, STS-B, CoLA, SST -> Avg.
    ((83.2, 90.9, 67.0, 90.2, 89.1, 87.2, 62.2, 91.8), 82.7),  # data2vec
    ((84.1, 90.4, 69.3, 89.0, 89.3, 88.9, 56.8, 92.3), 82.5),  # RoBERTa baseline
    ((82.8, 91.1, 69.9, 90.0, 89.0, 87.7, 60.3, 92.4), 82.9),  # + wav2vec 2.0 masking
  ],
)
def test_glue_average_reproduces_table_4(row, printed):
  scores = dict(zip(metrics.GLUE_AVERAGE_TASKS, row))
  result = metrics.glue_average(scores)
  assert round(result["average"], 1) == printed
  assert result["average_without_rte"] == pytest.approx((sum(row) - row[2]) / 7)
  with pytest.raises(ValueError, match="needs a score for \\['cola'\\]"):
    metrics.glue_average({k: v for k, v in scores.items() if k != "cola"})


def test_percent_rounds_like_fairseq():
  assert metrics.percent(0.82349) == 82.3 and metrics.percent(0.62251) == 62.3
