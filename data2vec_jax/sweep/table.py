"""The sweep's table: one row per cell from whatever cells have finished runs.

Per cell, the fine-tuning grid's summary (data2vec_jax/finetune/grid_report.py) gives each task's
score at the chosen lr (the grid's lr_choice, `global` by default: one lr for all tasks, the
paper's §4.3) as the mean over fine-tuning seeds of each run's reported dev score, and its
standard deviation over the seeds. The average is the paper's GLUE Avg-8 when the eight tasks
are there (MNLI dev matched counted once), else the mean of the tasks run; its spread is the
standard deviation over seeds of the per-seed averages (seed s: every task's run with seed s at
the chosen lr). Runs from random weights (grid.from_scratch) are not part of the table.

Written to the sweep's workdir: results.csv (full precision, one row per cell), results.md (the
table beside the paper's numbers), results.json (the same rows) and axis_plot.png (the axis
against the average, with the seeds' spread, the baselines and the paper's points); sweep.py
rewrites them after every cell, marked partial until every cell is done.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import ml_collections
import numpy as np

from data2vec_jax.atomic_files import read_json, write_json_atomically, write_text_atomically
from data2vec_jax.finetune import grid_report, recipes
from data2vec_jax.finetune.metrics import GLUE_AVERAGE_TASKS, glue_average
from data2vec_jax.sweep import paper
from data2vec_jax.sweep.definition import Cell, label
from data2vec_jax.sweep.runner import (
  StageConfigs,
  finetuning_progress,
  pretraining_finished,
  read_status,
)

RESULTS_CSV, RESULTS_MD, RESULTS_JSON, AXIS_PLOT = (
  "results.csv",
  "results.md",
  "results.json",
  "axis_plot.png",
)


def cell_row(sweep: ml_collections.ConfigDict, cell: Cell, configs: StageConfigs) -> dict[str, Any]:
  """The cell's status and scores (x100); scores are None until a run has finished."""
  finetune_config = configs.get(cell, "finetune")
  done, planned = finetuning_progress(cell, finetune_config)
  row: dict[str, Any] = {
    "cell": cell.index,
    "value": cell.value,
    "name": cell.name,
    "status": _status(cell, configs, done, planned),
    "finetune_runs": f"{done}/{planned}",
    "tasks": {},
    "average": None,
    "average_std": None,
    "average_kind": None,
    "seeds": 0,
    "seed_averages": [],
    "majority_class": None,
    "random_init": None,
    "lrs": {},
  }
  paper_row = dict(sweep.get("paper_rows", {})).get(cell.value)
  row["paper_row"] = paper_row
  row["paper"] = dict(paper.TABLE4[paper_row]) if paper_row else {}
  if done == 0:
    return row
  summary = grid_report.summarize(cell.finetune_dir, str(finetune_config.grid.lr_choice))
  chosen = summary["chosen"]["mean"]
  if not chosen["scores"]:
    return row
  cells = summary["tasks"]
  for task, lr in chosen["lrs"].items():
    score = cells[task][lr]["score"]
    row["tasks"][task] = {"mean": 100 * score["mean"], "std": 100 * score["std"], "n": score["n"]}
  row["lrs"] = dict(chosen["lrs"])
  row["average_kind"] = "glue_avg8" if "average" in chosen else "tasks_run"
  row["average"] = 100 * chosen.get("average", chosen.get("average_of_tasks_run"))
  per_seed = _per_seed_averages(cells, chosen["lrs"])
  row["seeds"] = len(per_seed)
  row["seed_averages"] = [100 * a for a in per_seed]  # each seed's average: the plot's dots
  # Baselines for the plot: the majority class (one task) and the runs from random weights.
  floors = grid_report.baselines(cell.finetune_dir)
  if len(chosen["scores"]) == 1:
    majority = next(iter(floors.values()), {}).get("majority_class")
    row["majority_class"] = None if majority is None else 100 * majority
  scratch = summary.get("from_scratch", {}).get("chosen", {}).get("mean", {})
  if scratch.get("scores"):
    row["random_init"] = 100 * scratch.get("average", scratch.get("average_of_tasks_run"))
  if len(per_seed) > 1:
    row["average_std"] = 100 * float(np.std(per_seed, ddof=1))
  return row


def _per_seed_averages(cells: dict[str, Any], lrs: dict[str, str]) -> list[float]:
  """The average over tasks of each seed's runs (seeds that every task has at its chosen lr)."""
  by_seed = {task: cells[task][lr]["by_seed"] for task, lr in lrs.items()}
  seeds = sorted(set.intersection(*(set(s) for s in by_seed.values())), key=int)
  out = []
  for seed in seeds:
    scores = {task: runs[seed] for task, runs in by_seed.items()}
    if all(t in scores for t in GLUE_AVERAGE_TASKS):
      out.append(glue_average(scores)["average"])
    else:
      out.append(float(np.mean(list(scores.values()))))
  return out


def _status(cell: Cell, configs: StageConfigs, done: int, planned: int) -> str:
  status = read_status(cell)
  for stage in ("pretrain", "finetune"):
    if status.get(stage, {}).get("state") == "failed":
      return f"failed ({stage})"
  if not pretraining_finished(cell, configs.get(cell, "pretrain")):
    started = os.path.isdir(cell.pretrain_dir)
    return "pretraining" if started else "not started"
  return "done" if done == planned else f"fine-tuning {done}/{planned}"


def task_order(rows: list[dict[str, Any]]) -> list[str]:
  present = {t for r in rows for t in r["tasks"]}
  return [t for t in recipes.PAPER_TASKS if t in present] + sorted(
    present - set(recipes.PAPER_TASKS)
  )


def to_csv(sweep: ml_collections.ConfigDict, rows: list[dict[str, Any]]) -> str:
  tasks = task_order(rows)
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(
    ["cell", label(sweep), "status", "finetune_runs"]
    + [c for t in tasks for c in (t, f"{t}_std", f"{t}_n")]
    + ["average", "average_std", "average_kind", "seeds", "lrs", "paper_row", "paper_average"]
  )
  for r in rows:
    task_cells = []
    for t in tasks:
      s = r["tasks"].get(t)
      task_cells += [_number(s and s["mean"]), _number(s and s["std"]), s["n"] if s else ""]
    writer.writerow(
      [r["cell"], r["value"], r["status"], r["finetune_runs"]]
      + task_cells
      + [
        _number(r["average"]),
        _number(r["average_std"]),
        r["average_kind"] or "",
        r["seeds"],
        ";".join(f"{t}:{lr}" for t, lr in r["lrs"].items()),
        r["paper_row"] or "",
        _number(r["paper"].get("average")),
      ]
    )
  return out.getvalue()


def _number(x) -> str:
  return "" if x is None else repr(float(x))


def to_markdown(sweep: ml_collections.ConfigDict, rows: list[dict[str, Any]]) -> str:
  """results.md: the sweep's table (each task and the average per cell, beside the paper's
  average when the sweep names paper rows), then the paper's per-task numbers or its note."""
  tasks = task_order(rows)
  kinds = {r["average_kind"] for r in rows if r["average_kind"]}
  # A cell still fine-tuning has only some tasks: its average is marked as not the Avg-8.
  average_name = "GLUE Avg-8" if "glue_avg8" in kinds else "average of the tasks run"
  has_paper = any(r["paper_row"] for r in rows)
  lines = _markdown_preamble(sweep, rows) + [
    f"| {label(sweep)} | status | "
    + "".join(f"{t} | " for t in tasks)
    + f"{average_name} |"
    + (" paper |" if has_paper else ""),
    "|---|---|" + "---|" * len(tasks) + "---|" + ("---|" if has_paper else ""),
  ]
  lines += [_markdown_row(r, tasks, average_name, has_paper) for r in rows]
  return "\n".join(lines + _markdown_paper(sweep, rows)) + "\n"


def _markdown_preamble(sweep: ml_collections.ConfigDict, rows: list[dict[str, Any]]) -> list[str]:
  """The title, the partial marker while cells are missing, what ran and what the cells mean."""
  done = sum(r["status"] == "done" for r in rows)
  partial = []
  if done < len(rows):
    partial = [
      f"**Partial: {done} of {len(rows)} cells done** (the sweep is running or was "
      "interrupted; this table is rewritten after every cell).",
      "",
    ]
  return [
    f"## Sweep `{sweep.name}`: {sweep.get('description', '')}".rstrip(": "),
    "",
    *partial,
    f"Axis `{sweep.axis}` ({len(rows)} cells); pretraining `{sweep.pretrain.config}`"
    + (f" with `{sweep.pretrain.args}`" if sweep.pretrain.args else "")
    + f"; fine-tuning `{sweep.finetune.config}`.",
    "Each task: mean ± std over fine-tuning seeds of each run's reported dev score (x100) at the "
    "chosen lr; the average's ± is its std over seeds.",
    "",
  ]


def _markdown_row(r: dict[str, Any], tasks: list[str], average_name: str, has_paper: bool) -> str:
  """One cell's line: its value, status, each task, the average (and the paper's)."""
  cells = []
  for t in tasks:
    s = r["tasks"].get(t)
    if s is None:
      cells.append("")
    else:  # one seed has no spread to show
      cells.append(f"{s['mean']:.1f}" + (f" ± {s['std']:.1f}" if s["n"] > 1 else ""))
  average = ""
  if r["average"] is not None:
    spread = f" ± {r['average_std']:.1f}" if r["average_std"] is not None else ""
    average = f"{r['average']:.1f}{spread} ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})"
    if average_name == "GLUE Avg-8" and r["average_kind"] != "glue_avg8":
      average += ", of the tasks run so far"
  paper_cell = ""
  if r["paper_row"]:
    paper_cell = f" {r['paper']['average']:.1f} ({r['paper_row']}) |"
  elif has_paper:
    paper_cell = " |"
  return (
    f"| {r['value']} | {r['status']} | "
    + "".join(f"{c} | " for c in cells)
    + f"{average} |"
    + paper_cell
  )


def _markdown_paper(sweep: ml_collections.ConfigDict, rows: list[dict[str, Any]]) -> list[str]:
  """The paper's per-task numbers of the cells that name a paper row, else its note (if any)."""
  if not any(r["paper_row"] for r in rows):
    return ["", f"Paper: {sweep.paper_note}"] if sweep.get("paper_note", "") else []
  lines = ["", f"Paper: {paper.SOURCE}, per task:", ""]
  paper_tasks = [t for t in recipes.PAPER_TASKS]
  lines.append(f"| {label(sweep)} | row | " + " | ".join(paper_tasks) + " | Avg. |")
  lines.append("|---|---|" + "---|" * (len(paper_tasks) + 1))
  for r in rows:
    if r["paper_row"]:
      values = " | ".join(f"{r['paper'][t]:.1f}" for t in paper_tasks)
      lines.append(f"| {r['value']} | {r['paper_row']} | {values} | {r['paper']['average']:.1f} |")
  return lines


MIN_Y_SPAN = 10.0  # points (x100): the least y range drawn, so noise does not look like an effect


def plot(sweep: ml_collections.ConfigDict, rows: list[dict[str, Any]], out_png: str) -> str | None:
  """Writes `axis_figure` to `out_png`; None (and no file) when no cell has a score yet."""
  fig = axis_figure(sweep, rows)
  if fig is None:
    return None
  fig.savefig(out_png, dpi=110)
  return out_png


def axis_figure(sweep: ml_collections.ConfigDict, rows: list[dict[str, Any]]):
  """The axis against the average: the mean over seeds with its std as error bars, each seed's
  average as a dot, the paper's points, the baselines (majority class of a single task, runs
  from random weights) as horizontal lines; with several tasks a second panel shows each task.
  Numeric axes are ticked at the cells' values (integer axes get integer ticks); the y range
  spans at least MIN_Y_SPAN points. A matplotlib Figure; None when no cell has a score yet."""
  scored = [r for r in rows if r["average"] is not None]
  if not scored:
    return None
  from matplotlib.figure import Figure

  numeric = all(_is_number(r["value"]) for r in rows)
  position = {
    r["value"]: (float(r["value"]) if numeric else i) for i, r in enumerate(rows)
  }  # categorical axes: the values in sweep order
  tasks = task_order(rows)
  panels = 2 if len(tasks) > 1 else 1
  fig = Figure(figsize=(7 * panels, 5), layout="constrained")
  axes = fig.subplots(1, panels, squeeze=False)[0]
  ax = axes[0]
  _plot_average(ax, rows, position)
  if panels == 2:
    _plot_tasks(axes[1], rows, tasks, position)
  for a in axes:
    _cells_on_x(a, sweep, rows, position, numeric)
  ax.legend(fontsize=9)
  done = sum(r["status"] == "done" for r in rows)
  partial = f" (partial: {done} of {len(rows)} cells done)" if done < len(rows) else ""
  ax.set_title(f"sweep {sweep.name}{partial}")
  return fig


def _plot_average(ax, rows: list[dict[str, Any]], position: dict[str, float]) -> None:
  """The average's panel: mean ± std per scored cell, each seed, the paper, the baselines."""
  scored = [r for r in rows if r["average"] is not None]
  x = [position[r["value"]] for r in scored]
  y = [r["average"] for r in scored]
  err = [r["average_std"] or 0.0 for r in scored]
  ax.errorbar(
    x, y, yerr=err, marker="o", capsize=4, linewidth=2, label="this sweep: mean ± std over seeds"
  )
  dots = [(position[r["value"]], a) for r in scored for a in r.get("seed_averages", [])]
  if dots:
    ax.scatter(*zip(*dots), s=14, color="tab:blue", alpha=0.45, zorder=3, label="each seed")
  with_paper = [r for r in rows if r["paper"].get("average") is not None]
  if with_paper:
    ax.scatter(
      [position[r["value"]] for r in with_paper],
      [r["paper"]["average"] for r in with_paper],
      marker="x",
      color="red",
      zorder=3,
      label="paper",
    )
  floor_values = _plot_baselines(ax, scored)
  kinds = {r["average_kind"] for r in scored}
  ax.set_ylabel("GLUE Avg-8 (dev, x100)" if kinds == {"glue_avg8"} else "average dev score (x100)")
  _span_at_least(
    ax, [v for a, b in zip(y, err) for v in (a - b, a + b)] + [d for _, d in dots] + floor_values
  )


def _plot_baselines(ax, scored: list[dict[str, Any]]) -> list[float]:
  """The majority class and the runs from random weights (mean over cells) as horizontal lines;
  returns their levels."""
  levels = []
  for key, name, style in (
    ("majority_class", "majority class", ":"),
    ("random_init", "random init (mean over cells)", "--"),
  ):
    values = [r[key] for r in scored if r.get(key) is not None]
    if values:
      level = float(np.mean(values))
      ax.axhline(level, color="grey", linestyle=style, label=f"{name} ({level:.1f})")
      levels.append(level)
  return levels


def _plot_tasks(ax, rows: list[dict[str, Any]], tasks: list[str], position: dict[str, float]):
  """The second panel: each task's mean over seeds per cell."""
  values = []
  for task in tasks:
    points = [(position[r["value"]], r["tasks"][task]["mean"]) for r in rows if task in r["tasks"]]
    ax.plot(*zip(*points), marker=".", label=task)
    values += [v for _, v in points]
  ax.set_ylabel("dev score (x100, mean over seeds)")
  ax.legend(fontsize=9)
  _span_at_least(ax, values)


def _cells_on_x(
  ax,
  sweep: ml_collections.ConfigDict,
  rows: list[dict[str, Any]],
  position: dict[str, float],
  numeric: bool,
) -> None:
  """The x axis: the sweep's label, ticked at the cells' values (numeric: at their positions,
  padded; categorical: in sweep order)."""
  ax.set_xlabel(label(sweep))
  if numeric:
    ticks = [position[r["value"]] for r in rows]
    ax.set_xticks(ticks, [r["value"] for r in rows])
    pad = 0.06 * (max(ticks) - min(ticks) or 1.0)
    ax.set_xlim(min(ticks) - pad, max(ticks) + pad)
  else:
    ax.set_xticks(range(len(rows)), [r["value"] for r in rows], rotation=20)
  ax.grid(alpha=0.3)


def _span_at_least(ax, values: list[float], span: float = MIN_Y_SPAN) -> None:
  """Widens the y range around `values` to at least `span`, centred on them."""
  if not values:
    return
  low, high = min(values), max(values)
  margin = 0.1 * (high - low)
  low, high = low - margin, high + margin
  if high - low < span:
    middle = (low + high) / 2
    low, high = middle - span / 2, middle + span / 2
  ax.set_ylim(low, high)


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def write_tables(
  sweep: ml_collections.ConfigDict, cells: list[Cell], configs: StageConfigs, workdir: str
) -> list[dict[str, Any]]:
  """results.{csv,md,json} and axis_plot.png in `workdir`; returns the rows."""
  rows = [cell_row(sweep, cell, configs) for cell in cells]
  os.makedirs(workdir, exist_ok=True)
  write_text_atomically(os.path.join(workdir, RESULTS_CSV), to_csv(sweep, rows))
  write_text_atomically(os.path.join(workdir, RESULTS_MD), to_markdown(sweep, rows))
  write_json_atomically(os.path.join(workdir, RESULTS_JSON), rows)
  plot(sweep, rows, os.path.join(workdir, AXIS_PLOT))
  return rows


def read_rows(workdir: str) -> list[dict[str, Any]] | None:
  return read_json(os.path.join(workdir, RESULTS_JSON))
