"""The fine-tuning grid's summary.md and dev_curves.png (data2vec_jax/finetune/grid_report.py), from
runs written by the test: a 'partial' marker while runs are missing, the majority-class and
sampling-noise lines, no repeated single-lr tables, and what the figure draws."""

from __future__ import annotations

import json
import os

import numpy as np

from data2vec_jax.finetune import grid, grid_report

DEV = 220  # dev examples of the fake task
MAJORITY = 0.541


def fake_run(workdir, lr, seed, scores, *, scratch=False, task="topics"):
  """A finished run's results.json: one evaluation per epoch with `scores` (accuracies)."""
  evaluations = [
    {
      "update": 10 * epoch,
      "epoch": float(epoch),
      "score": s,
      "selection": s,
      "splits": {"validation": {"accuracy": s, "score": s, "examples": DEV}},
    }
    for epoch, s in enumerate(scores, start=1)
  ]
  best = max(evaluations, key=lambda e: e["score"])
  path = grid.run_directory(workdir, task, lr, seed, scratch)
  os.makedirs(path)
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(
      {
        "task": task,
        "lr": lr,
        "seed": seed,
        "from_scratch": scratch,
        "stop_reason": "completed",
        "score": best["score"],
        "reported": best,
        "evaluations": evaluations,
        "majority_class": {"label": "statements", "score": MAJORITY, "splits": {}},
      },
      f,
    )


SEEDS = {1: [0.55, 0.62, 0.66], 2: [0.57, 0.60, 0.64], 3: [0.56, 0.63, 0.68]}


def demo_like(workdir, *, scratch_seeds=(1, 2, 3), lrs=(1e-3,)):
  for lr in lrs:
    for seed, scores in SEEDS.items():
      fake_run(workdir, lr, seed, scores)
    for seed in scratch_seeds:
      fake_run(workdir, lr, seed, [s - 0.02 for s in SEEDS[seed]], scratch=True)


def test_partial_marker_while_runs_are_missing(tmp_path):
  workdir = str(tmp_path)
  demo_like(workdir, scratch_seeds=(1,))
  summary = grid_report.write_summary(workdir, planned=6)
  text = open(os.path.join(workdir, grid_report.SUMMARY_MD)).read()
  assert text.startswith("**Partial: 4 of 6 runs finished**")
  assert summary["partial"] and summary["runs_finished"] == 4
  assert json.load(open(os.path.join(workdir, grid_report.SUMMARY_JSON)))["partial"] is True
  fake_run(workdir, 1e-3, 2, [0.5], scratch=True)
  fake_run(workdir, 1e-3, 3, [0.5], scratch=True)
  summary = grid_report.write_summary(workdir, planned=6)
  assert not summary["partial"] and "Partial" not in summary["markdown"]


def test_majority_class_and_sampling_noise_lines(tmp_path):
  workdir = str(tmp_path)
  demo_like(workdir)
  text = grid_report.write_summary(workdir, planned=6)["markdown"]
  p = np.mean([max(s) for s in SEEDS.values()])  # the pretrained runs' mean best score
  se = np.sqrt(p * (1 - p) / DEV)
  assert (
    "majority class (the train set's most common label, 'statements', for every dev example): "
    "54.1" in text
  )
  assert (
    f"on {DEV} dev examples an accuracy near {100 * p:.1f} has a binomial standard error of "
    f"±{100 * se:.1f}" in text
  )


def test_a_single_lr_is_not_tabled_three_times(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  demo_like(one)
  text = grid_report.write_summary(one, planned=6)["markdown"]
  # The comparison table holds every cell; no per-group lr tables or chosen-lr repeats.
  assert text.count("| topics | 0.001 |") == 1
  assert "### Runs" not in text and "Chosen lrs" not in text
  demo_like(two, lrs=(1e-3, 2e-3))
  text = grid_report.write_summary(two, planned=12)["markdown"]
  assert "### Runs from pretrained weights" in text and "Chosen lrs" in text
  assert "by the median over seeds" in text  # 3 seeds: the median can differ from the mean


def test_dev_curves_draw_seed_means_spread_and_the_majority_class(tmp_path):
  workdir = str(tmp_path)
  demo_like(workdir)
  fig = grid_report.dev_curves_figure(workdir)
  (ax,) = fig.axes
  assert ax.get_ylabel() == "dev accuracy (x100)" and ax.get_xlabel() == "epoch"
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  assert labels == [
    "pretrained: mean of 3 seeds",
    "pretrained: min-max over seeds",
    "random init: mean of 3 seeds",
    "random init: min-max over seeds",
    f"majority class ({100 * MAJORITY:.1f})",
  ]
  mean_line = next(line for line in ax.get_lines() if line.get_label() == labels[0])
  expected = 100 * np.mean(list(SEEDS.values()), axis=0)
  np.testing.assert_allclose(mean_line.get_ydata(), expected, rtol=1e-12)
  assert fig.get_size_inches()[0] >= 7  # readable: not the old 5 x 4 inches
  assert (
    grid_report.plot_dev_curves(workdir, str(tmp_path / "d.png"))
    and os.path.getsize(tmp_path / "d.png") > 10_000
  )


def test_the_summary_command_writes_without_a_plan(tmp_path):
  demo_like(str(tmp_path))
  grid.main(["--workdir", str(tmp_path)])
  assert not json.load(open(tmp_path / grid_report.SUMMARY_JSON))["partial"]
