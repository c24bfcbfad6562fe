"""transfer.report: one row per evaluation, sample spreads over seeds, the 50-label verdicts and
the trend along pretraining (its extrapolation only where the slope is clearly positive)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data2vec_jax.transfer import report
from data2vec_jax.transfer.plan import SCRATCH, Plan

TASK, BUDGET = "stdlib_area", 50


def setup(scores, *, scratch=(30.0, 1.0, 3), spread=1.0):
  """A plan with one recipe whose checkpoints k = 1.. saw 2**k million tokens and scored
  `scores` (fine-tuned and probed alike)."""
  plan = Plan(workdir="unused", recipes=("release",), tasks=(TASK,), budgets=(BUDGET,))
  pts = [
    {"model": f"release-{k}", "step": k, "minutes": float(k), "tokens": 2**k * 1e6}
    for k in range(1, len(scores) + 1)
  ]
  table = {(SCRATCH, m, TASK, BUDGET): scratch for m in ("finetune", "probe")}
  for p, y in zip(pts, scores):
    for m in ("finetune", "probe"):
      table[(p["model"], m, TASK, BUDGET)] = (y, spread, 3)
  return plan, table, {"release": pts}


def test_an_exact_rising_line_is_extrapolated_to_random_plus_two_spreads():
  # y = 20 + 2 log2(tokens / 1M): 2 points per doubling; random 30 +- 1, so the bar is 32,
  # reached at 2**6 M = 64M tokens, 4x the 16M measured.
  plan, table, points = setup([22.0, 24.0, 26.0, 28.0])
  (line, _) = report.trends(plan, table, points)
  assert "+2.00 ± 0.00 points per doubling" in line
  assert (
    "the line reaches 32.0 (random + 2 spreads) at ~64M tokens (4x the tokens measured)" in line
  )


@pytest.mark.parametrize(
  "scores, words",
  [
    ([28.0, 26.0, 24.0, 22.0], "falling (by more than 2 standard errors)"),
    ([25.0, 26.0, 25.0, 26.0], "not distinguishable from flat"),
    ([22.0, 24.0, 26.0, 33.0], "already above random + 2 spreads (32.0)"),
  ],
)
def test_trend_wording(scores, words):
  plan, table, points = setup(scores)
  assert all(words in line for line in report.trends(plan, table, points))


def test_a_line_far_beyond_the_measured_range_is_not_given_a_number():
  plan, table, points = setup([22.0, 22.1, 22.2, 22.3])  # 0.1 per doubling, exact
  (line, _) = report.trends(plan, table, points)
  assert "beyond 1000x the tokens measured" in line


def test_verdict_needs_more_than_twice_the_larger_spread():
  plan, table, points = setup([22.0, 24.0, 26.0, 28.0], scratch=(25.0, 1.4, 3), spread=0.5)
  # 28.0 - 25.0 = 3.0 > 2 x 1.4
  assert all("**beats random weights**" in v for v in report.verdicts(plan, table, points))
  plan, table, points = setup([22.0, 24.0, 26.0, 28.0], scratch=(25.0, 1.6, 3), spread=0.5)
  assert all("**does not beat random weights**" in v for v in report.verdicts(plan, table, points))


def test_read_results_keeps_the_later_row_and_score_table_uses_sample_spreads(tmp_path):
  plan = Plan(workdir=str(tmp_path))
  rows = [
    {"model": "m", "method": "probe", "task": TASK, "budget": BUDGET, "seed": s, "accuracy": a}
    for s, a in ((0, 0.2), (1, 0.3), (2, 0.4), (2, 0.6))  # seed 2 evaluated twice: 0.6 wins
  ]
  with open(plan.results_path, "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  kept = report.read_results(plan)
  assert sorted(r["accuracy"] for r in kept) == [0.2, 0.3, 0.6]
  mean, std, n = report.score_table(kept)[("m", "probe", TASK, BUDGET)]
  assert n == 3 and mean == pytest.approx(100 * np.mean([0.2, 0.3, 0.6]))
  assert std == pytest.approx(100 * np.std([0.2, 0.3, 0.6], ddof=1))


def two_recipes(v1, mlm, *, v1_minutes=(7.5, 15.0), mlm_minutes=(7.4, 14.8)):
  """Two recipes with two evaluated checkpoints each; `v1` and `mlm` are {(method, budget, k):
  (mean, std)} of checkpoint k (1: halfway, 2: the end)."""
  plan = Plan(
    workdir="unused",
    recipes=("release", "roberta"),
    tasks=(TASK,),
    budgets=(BUDGET, 200),
    evaluated=(4, 8),
  )
  table, points = {}, {}
  for recipe, scores, minutes in (("release", v1, v1_minutes), ("roberta", mlm, mlm_minutes)):
    points[recipe] = [
      {"model": f"{recipe}-{k}", "step": k, "minutes": m, "tokens": k * 1e6}
      for k, m in zip((1, 2), minutes)
    ]
    for (method, budget, k), (mean, std) in scores.items():
      table[(f"{recipe}-{k}", method, TASK, budget)] = (mean, std, 3)
  return plan, table, points


def test_equal_time_names_a_leader_only_beyond_twice_the_larger_spread():
  v1 = {("finetune", BUDGET, 1): (30.0, 1.0), ("finetune", BUDGET, 2): (30.0, 1.0)}
  mlm = {("finetune", BUDGET, 1): (32.1, 0.5), ("finetune", BUDGET, 2): (31.9, 1.0)}
  # Both at 200 labels as well, at the end only: the earlier checkpoints are compared at the
  # smallest budget.
  v1[("probe", 200, 1)], mlm[("probe", 200, 1)] = (50.0, 1.0), (40.0, 1.0)
  v1[("probe", 200, 2)], mlm[("probe", 200, 2)] = (50.0, 1.0), (40.0, 1.0)
  plan, table, points = two_recipes(v1, mlm)
  lines = report.equal_time(plan, table, points)
  assert lines[0].startswith("| checkpoint | minutes (data2vec v1 / MLM (RoBERTa))")
  rows = lines[2:]
  assert len(rows) == 3  # halfway: 50-label fine-tuning only; end: that and the 200-label probe
  halfway, end, end_200 = rows
  assert halfway.startswith("| 4/8 | 7.5 / 7.4 | stdlib_area | 50 | fine-tuned |")
  assert "**MLM (RoBERTa)** (+2.1 > 2.0)" in halfway  # 32.1 - 30.0 beats 2 x max(1.0, 0.5)
  assert end.startswith("| 8/8 | 15.0 / 14.8 |") and "none (+1.9 ≤ 2.0)" in end
  assert "| 200 | probed |" in end_200 and "**data2vec v1** (+10.0 > 2.0)" in end_200
  assert not any("Not equal time" in line for line in lines)


def test_equal_time_flags_runs_that_did_not_get_equal_time():
  scores = {("finetune", BUDGET, 2): (30.0, 1.0)}
  plan, table, points = two_recipes(scores, scores, mlm_minutes=(6.0, 13.3))
  lines = report.equal_time(plan, table, points)
  assert lines[0] == (
    "**Not equal time:** the runs ended at 15.0 / 13.3 minutes (more than 10% apart)."
  )


def test_report_states_the_minutes_the_runs_were_calibrated_for(tmp_path):
  # A report redrawn without --minutes (plan default 15) of a 30-minute experiment says 30.
  plan = Plan(workdir=str(tmp_path))
  text = report.markdown(plan, {"minutes": 30.0, "recipes": {}}, [])
  assert "Pretraining: 30 minutes per recipe planned" in text
