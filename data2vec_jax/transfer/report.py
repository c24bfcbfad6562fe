"""The experiment's report: report.md and two plots, from results.jsonl and the pretraining runs.

* `transfer_vs_compute.png`: dev accuracy against pretraining compute (token positions through
  the student, which for one model and recipe is proportional to FLOPs; log scale), every
  recipe fine-tuned (solid) and probed (dashed), with random weights and the bag-of-words
  baseline as horizontal lines; one panel per task and label budget.
* `recipes_vs_wall_clock.png`: the same against pretraining wall-clock minutes on this machine
  (the time each checkpoint was reached, read from the run's metrics).

Scores are means over seeds; spreads are sample standard deviations (ddof=1) over the seeds,
which vary the label subset and the fine-tuning run together (dev is fixed). "Beats random
weights" is judged at the smallest budget by the difference of the means against twice the larger
of the two spreads, as the issue asks.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Sequence

import numpy as np

from data2vec_jax.atomic_files import read_json, write_text_atomically
from data2vec_jax.transfer.baseline import BOW
from data2vec_jax.transfer.plan import RECIPE_NAMES, SCRATCH, Plan

REPORT = "report.md"
COMPUTE_PLOT = "transfer_vs_compute.png"
WALL_CLOCK_PLOT = "recipes_vs_wall_clock.png"
METHOD_NAMES = {"finetune": "fine-tuned", "probe": "probed"}
COLORS = {"release": "tab:blue", "roberta": "tab:orange", "data2vec2": "tab:green"}


def read_results(plan: Plan) -> list[dict[str, Any]]:
  """results.jsonl's rows, one per (model, method, task, budget, seed): a later line wins (an
  evaluation repeated after a kill, or by two runs of the experiment at once)."""
  if not os.path.isfile(plan.results_path):
    return []
  with open(plan.results_path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.endswith("\n")]
  keyed = {(r["model"], r["method"], r["task"], r["budget"], r["seed"]): r for r in rows}
  return list(keyed.values())


def score_table(rows: Sequence[dict]) -> dict[tuple, tuple[float, float, int]]:
  """(model, method, task, budget) -> (mean, std ddof=1 (0 for one seed), seeds) in percent."""
  groups: dict[tuple, list[float]] = collections.defaultdict(list)
  for r in rows:
    if r.get("accuracy") is not None:
      groups[(r["model"], r["method"], r["task"], r["budget"])].append(100 * r["accuracy"])
  return {
    key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
    for key, v in groups.items()
  }


def run_clock(pretrain_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, minutes since the run started) at the logged steps of a pretraining run; the start
  is the first step's end minus its time (compilation included)."""
  with open(os.path.join(pretrain_dir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.endswith("\n")]
  rows = [r for r in rows if "time" in r and "loss" in r]
  first = next(r for r in rows if "first_step_s" in r)
  start = first["time"] - first["first_step_s"]
  by_step = {r["step"]: r["time"] for r in rows}  # a resumed run logs a step again: the later wins
  steps = np.array(sorted(by_step))
  return steps, (np.array([by_step[s] for s in steps]) - start) / 60


def tokens_per_step(pretrain_dir: str) -> int:
  """Token positions through the student per update: sequences (x clones for data2vec 2.0) x
  sample length."""
  config = read_json(os.path.join(pretrain_dir, "config.json")) or {}
  data, objective = config.get("data", {}), config.get("objective", {})
  clones = int(objective.get("clone_batch", 1)) if objective.get("kind") == "data2vec2" else 1
  return int(data.get("global_batch_size", 0)) * int(data.get("tokens_per_sample", 0)) * clones


def checkpoint_points(plan: Plan, rows: Sequence[dict]) -> dict[str, list[dict]]:
  """recipe -> [{'model', 'step', 'minutes', 'tokens'}] of its evaluated checkpoints, by step."""
  out: dict[str, list[dict]] = {}
  for recipe in plan.recipes:
    models = sorted({(r["step"], r["model"]) for r in rows if r["recipe"] == recipe})
    if not models:
      continue
    steps, minutes = run_clock(plan.pretrain_dir(recipe))
    per_step = tokens_per_step(plan.pretrain_dir(recipe))
    out[recipe] = [
      {
        "model": name,
        "step": step,
        "minutes": float(np.interp(step, steps, minutes)),
        "tokens": step * per_step,
      }
      for step, name in models
    ]
  return out


def _versus(points: dict) -> str:
  """'data2vec v1 vs MLM (RoBERTa) vs ...': the recipes that have scores, for titles."""
  return " vs ".join(RECIPE_NAMES[r] for r in points)


def _fmt(cell: tuple[float, float, int] | None) -> str:
  return "–" if cell is None else f"{cell[0]:.1f} ± {cell[1]:.1f}"


def _against_random(plan: Plan, table: dict, points: dict):
  """(task, budget, method, recipe, random weights' cell, [(checkpoint, its cell)] of the scored
  checkpoints) at the smallest budget, where random weights were scored."""
  budget = min(plan.budgets)
  for task in plan.tasks:
    for method in ("finetune", "probe"):
      scratch = table.get((SCRATCH, method, task, budget))
      if scratch is None:
        continue
      for recipe, pts in points.items():
        cells = [(p, table.get((p["model"], method, task, budget))) for p in pts]
        yield task, budget, method, recipe, scratch, [(p, c) for p, c in cells if c is not None]


def verdicts(plan: Plan, table: dict, points: dict) -> list[str]:
  """At the smallest budget, per task and method: each recipe's last checkpoint vs random weights."""
  lines = []
  for task, budget, method, recipe, scratch, cells in _against_random(plan, table, points):
    if not cells or cells[-1][0] is not points[recipe][-1]:
      continue  # the last checkpoint has no score yet
    ours = cells[-1][1]
    gap, bar = ours[0] - scratch[0], 2 * max(ours[1], scratch[1])
    verdict = "beats random weights" if gap > bar else "does not beat random weights"
    lines.append(
      f"- {task}, {budget} labels, {method}: {RECIPE_NAMES[recipe]} {_fmt(ours)} vs random "
      f"{_fmt(scratch)}: difference {gap:+.1f}, twice the spread {bar:.1f}: **{verdict}**"
    )
  return lines


def trends(plan: Plan, table: dict, points: dict) -> list[str]:
  """At the smallest budget, per recipe, task and method: the least-squares slope of the mean
  score against log2(pretraining tokens) over the evaluated checkpoints (points per doubling of
  pretraining compute) and, where it rises, the tokens at which that line would reach random
  weights' mean plus twice the larger spread: an extrapolation of the measured points, stated as
  one, not a prediction."""
  lines = []
  for task, budget, method, recipe, scratch, cells in _against_random(plan, table, points):
    if len(cells) < 3:
      continue
    x = np.log2([p["tokens"] for p, _ in cells])
    y = np.array([c[0] for _, c in cells])
    (slope, intercept), cov = np.polyfit(x, y, 1, cov="unscaled")
    # The slope's standard error from the fit's residuals (n - 2 degrees of freedom).
    residual = y - (slope * x + intercept)
    se = float(np.sqrt(cov[0, 0] * (residual @ residual) / max(len(x) - 2, 1)))
    target = scratch[0] + 2 * max([scratch[1]] + [c[1] for _, c in cells])
    measured = cells[-1][0]["tokens"]
    text = (
      f"- {task}, {budget} labels, {method}, {RECIPE_NAMES[recipe]}: "
      f"{slope:+.2f} ± {se:.2f} points per doubling of pretraining tokens "
      f"({len(cells)} checkpoints, {cells[0][0]['tokens'] / 1e6:.1f}M to "
      f"{measured / 1e6:.1f}M tokens)"
    )
    if y[-1] > target:
      text += f"; already above random + 2 spreads ({target:.1f})"
    elif slope < -2 * se:
      text += "; falling (by more than 2 standard errors): no extrapolation"
    elif slope <= 2 * se:
      text += "; not distinguishable from flat (within 2 standard errors): no extrapolation"
    else:
      needed = 2 ** ((target - intercept) / slope)
      where = (
        "beyond 1000x the tokens measured"
        if needed > 1000 * measured
        else f"at ~{needed / 1e6:,.0f}M tokens ({needed / measured:.0f}x the tokens measured)"
      )
      text += f"; the line reaches {target:.1f} (random + 2 spreads) {where}"
    lines.append(text)
  return lines


# Runs whose wall times differ by more than this fraction are flagged as not at equal time.
EQUAL_TIME_TOLERANCE = 0.1


def equal_time(plan: Plan, table: dict, points: dict) -> list[str]:
  """The recipes side by side at equal wall time: a markdown table with one row per checkpoint
  rank (the k-th evaluated checkpoint of every run, reached at about the same minute when the
  calibration held), task, budget and method (earlier checkpoints at the smallest budget, the
  last at every budget), and which recipe leads: the best mean ahead of the second by more than
  twice the larger of their spreads, else none. Runs whose wall times differ by more than
  `EQUAL_TIME_TOLERANCE` are flagged above the table."""
  recipes = [r for r in plan.recipes if r in points]
  if len(recipes) < 2:
    return []
  ranks = min(len(points[r]) for r in recipes)
  lines = []
  ends = [points[r][-1]["minutes"] for r in recipes]
  if max(ends) > (1 + EQUAL_TIME_TOLERANCE) * min(ends):
    lines += [
      f"**Not equal time:** the runs ended at {' / '.join(f'{m:.1f}' for m in ends)} minutes "
      f"(more than {EQUAL_TIME_TOLERANCE:.0%} apart).",
      "",
    ]
  names = [RECIPE_NAMES[r] for r in recipes]
  header = ["checkpoint", f"minutes ({' / '.join(names)})", "task", "labels", "method"]
  header += names + ["leader (by > 2 spreads)"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for rank in range(ranks):
    last = rank == ranks - 1
    ats = [points[r][rank - ranks] for r in recipes]  # counted from each run's last checkpoint
    minutes = " / ".join(f"{p['minutes']:.1f}" for p in ats)
    for task in plan.tasks:
      for budget in plan.budgets if last else (min(plan.budgets),):
        for method in METHOD_NAMES:
          cells = [table.get((p["model"], method, task, budget)) for p in ats]
          if any(c is None for c in cells):
            continue
          order = sorted(range(len(recipes)), key=lambda i: -cells[i][0])
          first, second = cells[order[0]], cells[order[1]]
          gap, bar = first[0] - second[0], 2 * max(first[1], second[1])
          leader = (
            f"**{RECIPE_NAMES[recipes[order[0]]]}** (+{gap:.1f} > {bar:.1f})"
            if gap > bar
            else f"none (+{gap:.1f} ≤ {bar:.1f})"
          )
          fraction = f"{plan.evaluated[rank - ranks]}/{plan.checkpoints}"
          row = [fraction, minutes, task, str(budget), METHOD_NAMES[method]]
          row += [_fmt(c) for c in cells] + [leader]
          lines.append("| " + " | ".join(row) + " |")
  return lines


def markdown(plan: Plan, calibration: dict, rows: Sequence[dict]) -> str:
  table = score_table(rows)
  points = checkpoint_points(plan, rows)
  runs = ", ".join(
    f"{RECIPE_NAMES[r]} {calibration['recipes'][r]['steps']} steps in {pts[-1]['minutes']:.1f} min"
    for r, pts in points.items()
  )
  lines = [
    "# The small transfer experiment",
    "",
    # The minutes the runs were calibrated for (calibration.json), not this invocation's
    # --minutes: a report redrawn with other flags still says what was run.
    f"Pretraining: {calibration.get('minutes', plan.minutes):g} minutes per recipe planned "
    f"({runs}). Dev accuracy "
    f"in percent, mean ± std (ddof 1) over seeds {', '.join(map(str, plan.seeds))}.",
    "",
    "## Last checkpoints, random weights and the bag-of-words baseline",
    "",
  ]
  header = ["task", "labels", "BoW", "random (ft)", "random (probe)"]
  for recipe in points:
    header += [f"{RECIPE_NAMES[recipe]} (ft)", f"{RECIPE_NAMES[recipe]} (probe)"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for task in plan.tasks:
    for budget in plan.budgets:
      cells = [task, str(budget), _fmt(table.get((BOW, BOW, task, budget)))]
      cells += [_fmt(table.get((SCRATCH, m, task, budget))) for m in ("finetune", "probe")]
      for recipe, pts in points.items():
        cells += [
          _fmt(table.get((pts[-1]["model"], m, task, budget))) for m in ("finetune", "probe")
        ]
      lines.append("| " + " | ".join(cells) + " |")
  lines += ["", f"## At {min(plan.budgets)} labels: pretrained vs random weights", ""]
  lines += verdicts(plan, table, points) or ["(no scores yet)"]
  lines += ["", "Trend along pretraining (least squares on the evaluated checkpoints):", ""]
  lines += trends(plan, table, points) or ["(fewer than 3 checkpoints scored yet)"]
  lines += ["", f"## At equal wall time: {_versus(points)}", ""]
  lines += equal_time(plan, table, points) or [
    "(needs two recipes with scores: nothing to compare)"
  ]
  lines += ["", "## Along pretraining (fine-tuning / probe)", ""]
  header = ["recipe", "step", "minutes", "tokens (M)"]
  header += [f"{task} {budget}" for task in plan.tasks for budget in plan.budgets]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for recipe, pts in points.items():
    for p in pts:
      cells = [
        RECIPE_NAMES[recipe],
        str(p["step"]),
        f"{p['minutes']:.1f}",
        f"{p['tokens'] / 1e6:.1f}",
      ]
      for task in plan.tasks:
        for budget in plan.budgets:
          ft = table.get((p["model"], "finetune", task, budget))
          pr = table.get((p["model"], "probe", task, budget))
          cells.append(f"{_fmt(ft)} / {_fmt(pr)}")
      lines.append("| " + " | ".join(cells) + " |")
  lines += ["", f"Plots: {COMPUTE_PLOT}, {WALL_CLOCK_PLOT}.", ""]
  return "\n".join(lines)


def _panels(plan: Plan):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(
    len(plan.tasks), len(plan.budgets), figsize=(4.2 * len(plan.budgets), 3.4 * len(plan.tasks)),
    squeeze=False,
  )  # fmt: skip
  return plt, fig, axes


def _references(ax, table: dict, task: str, budget: int) -> None:
  """Random weights (fine-tuned: grey band of ±1 std; probed: grey dashed) and BoW (black dotted)."""
  scratch = table.get((SCRATCH, "finetune", task, budget))
  if scratch:
    ax.axhline(scratch[0], color="grey", label="random weights, fine-tuned")
    ax.axhspan(scratch[0] - scratch[1], scratch[0] + scratch[1], color="grey", alpha=0.15)
  probe = table.get((SCRATCH, "probe", task, budget))
  if probe:
    ax.axhline(probe[0], color="grey", linestyle="--", label="random weights, probed")
  bow = table.get((BOW, BOW, task, budget))
  if bow:
    ax.axhline(bow[0], color="black", linestyle=":", label="TF-IDF + LR")


def _curve(ax, table, pts, x_key, method, task, budget, **style) -> None:
  xs, ys, es = [], [], []
  for p in pts:
    cell = table.get((p["model"], method, task, budget))
    if cell:
      xs.append(p[x_key] / (1e6 if x_key == "tokens" else 1))
      ys.append(cell[0])
      es.append(cell[1])
  if xs:
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, **style)


def plot_scores(plan: Plan, table: dict, points: dict, path: str, x_key: str) -> None:
  """One panel per task and budget: every recipe's checkpoints, fine-tuned (solid) and probed
  (dashed), against pretraining tokens (x_key='tokens', log scale: the trend is fitted per
  doubling) or wall-clock minutes (x_key='minutes')."""
  from matplotlib.ticker import ScalarFormatter

  plt, fig, axes = _panels(plan)
  for i, task in enumerate(plan.tasks):
    for j, budget in enumerate(plan.budgets):
      ax = axes[i][j]
      _references(ax, table, task, budget)
      for recipe, pts in points.items():
        color, name = COLORS.get(recipe), RECIPE_NAMES[recipe]
        for method, style in (("finetune", {}), ("probe", {"linestyle": "--", "alpha": 0.6})):
          label = f"{name}, {METHOD_NAMES[method]}"
          _curve(ax, table, pts, x_key, method, task, budget, color=color, label=label, **style)
      ax.set_title(f"{task}, {budget} labels")
      if x_key == "tokens":
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("pretraining tokens (millions, log scale)")
      else:
        ax.set_xlabel("pretraining wall-clock (minutes, 2 CPU cores)")
      ax.set_ylabel("dev accuracy (%)")
  # One legend for every panel, below them: inside a panel it hides the points.
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
  against = "pretraining compute (tokens)" if x_key == "tokens" else "pretraining wall clock"
  fig.suptitle(f"{_versus(points)} against {against}: mean ± std over {len(plan.seeds)} seeds")
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(plan: Plan, calibration: dict) -> str:
  """Writes report.md and the plots into the workdir; returns the markdown."""
  rows = read_results(plan)
  text = markdown(plan, calibration, rows)
  table, points = score_table(rows), checkpoint_points(plan, rows)
  plot_scores(plan, table, points, plan.path(COMPUTE_PLOT), "tokens")
  plot_scores(plan, table, points, plan.path(WALL_CLOCK_PLOT), "minutes")
  write_text_atomically(plan.path(REPORT), text)
  return text
