"""A fine-tuning grid's report: the summary table and the dev curves of its finished runs.

The summary (`summarize`, written to `<workdir>/summary.json` and `summary.md` by `write_summary`
after every run of a grid, and by `python -m data2vec_jax.finetune.grid --workdir W`) gives, per
task and lr, the mean, median and standard deviation of the runs' reported dev scores (each run's
best evaluation by default, `train.report`), and then the lr choice:

* `global` (default; the paper's §4.3 read literally): one lr for every task, the one with the
  best average over the tasks of the per-task means;
* `per_task` (fairseq's `glue_lr.py`): each task's best lr.

With all eight tasks the table ends in the paper's GLUE average (Table 4: MNLI counted once, as
dev matched; MRPC/QQP (acc+F1)/2; STS-B (P+S)/2; CoLA MCC) and the average without RTE that
fairseq's tools also print; with the mean over seeds (the paper) and the median (RoBERTa).
Runs from random weights (`grid.from_scratch`) get a second table, and `dev_curves.png` shows
both, the question "how much does pretraining add?" answered per task.

The grid's runs themselves: finetune/grid.py.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from data2vec_jax.atomic_files import write_json_atomically, write_text_atomically
from data2vec_jax.finetune import recipes
from data2vec_jax.finetune.loop import FinetuneError, completed_results
from data2vec_jax.finetune.metrics import GLUE_AVERAGE_TASKS, TASK_METRICS, glue_average

SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"
LR_CHOICES = ("global", "per_task")


def collect(workdir: str, *, from_scratch: bool = False) -> dict[str, dict[float, list[dict]]]:
  """task -> lr -> the finished runs' results.json, from `<workdir>/<task>/<run>/`: the runs
  from pretrained weights, or (`from_scratch`) those from random ones."""
  table: dict[str, dict[float, list[dict[str, Any]]]] = {}
  if not os.path.isdir(workdir):
    raise FinetuneError(f"{workdir}: no such directory")
  # A single run's workdir (results.json at the top) summarises as a grid of one.
  # Only <task>/<run> directories: not the files of jax_cache/, checkpoints/, ...
  run_dirs = [workdir] + [
    run.path
    for task in sorted(os.scandir(workdir), key=lambda e: e.name)
    if task.is_dir()
    for run in sorted(os.scandir(task.path), key=lambda e: e.name)
    if run.is_dir()
  ]
  for path in run_dirs:
    results = completed_results(path)
    if results is None or bool(results.get("from_scratch")) != from_scratch:
      continue
    if results.get("score") is not None:
      table.setdefault(results["task"], {}).setdefault(float(results["lr"]), []).append(results)
  return table


def _split_scores(results: dict[str, Any]) -> dict[str, float]:
  return {split: m["score"] for split, m in results["reported"]["splits"].items()}


def _aggregate(values: list[float]) -> dict[str, Any]:
  a = np.asarray(values, np.float64)
  return {
    "mean": float(a.mean()),
    "median": float(np.median(a)),
    "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
    "n": len(a),
    "runs": [float(x) for x in a],
  }


def summarize(workdir: str, lr_choice: str = "global") -> dict[str, Any]:
  """The grid's table: per task and lr the aggregated scores, the chosen lrs, the averages; the
  same for runs from random weights under 'from_scratch' when there are any."""
  if lr_choice not in LR_CHOICES:
    raise FinetuneError(f"lr_choice={lr_choice!r}; expected one of {LR_CHOICES}")
  summary = _summarize_runs(collect(workdir), lr_choice)
  scratch = collect(workdir, from_scratch=True)
  if scratch:
    summary["from_scratch"] = _summarize_runs(scratch, lr_choice)
  return summary


def _summarize_runs(table, lr_choice: str) -> dict[str, Any]:
  cells: dict[str, dict[str, Any]] = {}
  for task, by_lr in table.items():
    cells[task] = {}
    for lr, runs in sorted(by_lr.items()):
      per_split: dict[str, list[float]] = {}
      for r in runs:
        for split, score in _split_scores(r).items():
          per_split.setdefault(split, []).append(score)
      cells[task][f"{lr:g}"] = {
        "score": _aggregate([r["score"] for r in runs]),
        "splits": {s: _aggregate(v) for s, v in per_split.items()},
        "seeds": sorted(int(r["seed"]) for r in runs),
        # seed -> score: matches runs of different tasks by seed (the spread of an average).
        "by_seed": {str(r["seed"]): r["score"] for r in sorted(runs, key=lambda r: r["seed"])},
      }
  chosen: dict[str, dict[str, Any]] = {}
  for statistic in ("mean", "median"):
    chosen[statistic] = _choose(cells, lr_choice, statistic)
  return {"lr_choice": lr_choice, "tasks": cells, "chosen": chosen}


def _choose(cells, lr_choice: str, statistic: str) -> dict[str, Any]:
  """The chosen lr per task and the resulting scores and averages, by `statistic` over seeds."""
  if not cells:
    return {"lrs": {}, "scores": {}}
  if lr_choice == "per_task":
    lrs = {t: max(c, key=lambda lr: c[lr]["score"][statistic]) for t, c in cells.items()}
  else:
    common = set.intersection(*(set(c) for c in cells.values()))
    if not common:
      raise FinetuneError("lr_choice=global: no lr was run for every task; use per_task")
    best = max(
      sorted(common), key=lambda lr: np.mean([c[lr]["score"][statistic] for c in cells.values()])
    )
    lrs = {t: best for t in cells}
  scores = {t: cells[t][lrs[t]]["score"][statistic] for t in cells}
  out: dict[str, Any] = {"lrs": lrs, "scores": scores}
  if "mnli" in cells:
    splits = cells["mnli"][lrs["mnli"]]["splits"]
    if "validation_mismatched" in splits:
      out["mnli_mismatched"] = splits["validation_mismatched"][statistic]
  if all(t in scores for t in GLUE_AVERAGE_TASKS):
    out.update(glue_average(scores))
  else:
    out["average_of_tasks_run"] = float(np.mean(list(scores.values())))
  return out


def markdown(summary: dict[str, Any]) -> str:
  """The summary as Markdown tables (scores x100, as the paper prints them): a 'partial' line
  while runs are missing, pretrained vs random weights when both ran, the lr tables where they
  add something (several lrs, or no comparison table), and each task's baselines and noise."""
  text = ""
  if summary.get("partial"):
    text = (
      f"**Partial: {summary['runs_finished']} of {summary['runs_planned']} runs finished** "
      "(the grid is running or was interrupted; re-run the same command to finish it).\n\n"
    )
  comparison = "from_scratch" in summary
  if comparison:
    text += _markdown_comparison(summary) + "\n"
  text += _markdown_group(summary, "from pretrained weights", comparison)
  if comparison:
    text += _markdown_group(summary["from_scratch"], "from random weights (same recipe)", True)
  return text + _markdown_baselines(summary.get("baselines", {}))


def _markdown_comparison(summary: dict[str, Any]) -> str:
  """Pretrained vs random weights side by side: per task and lr, mean ± std over seeds."""
  scratch = summary["from_scratch"]["tasks"]
  lines = [
    "### Does pretraining help? Dev score, mean ± std over seeds (n runs)",
    "",
    "| task | lr | from pretrained weights | from random weights | difference |",
    "|---|---|---|---|---|",
  ]
  for task, cells in summary["tasks"].items():
    for lr, cell in cells.items():
      other = scratch.get(task, {}).get(lr)
      if other is None:
        continue
      a, b = cell["score"], other["score"]
      lines.append(
        f"| {task} | {lr} | {100 * a['mean']:.1f} ± {100 * a['std']:.1f} ({a['n']}) | "
        f"{100 * b['mean']:.1f} ± {100 * b['std']:.1f} ({b['n']}) | "
        f"{100 * (a['mean'] - b['mean']):+.1f} |"
      )
  return "\n".join(lines) + "\n"


def _markdown_group(summary: dict[str, Any], title: str, compared: bool) -> str:
  """One group's lr table (left out when it has one lr per task and `compared`: the comparison
  table shows the same cells) and its chosen-lr averages (only when there is a choice or an
  average to make: several lrs or several tasks; the median only where it can differ from the
  mean, 3+ seeds)."""
  cells = summary["tasks"]
  if not cells:
    return ""
  lrs = sorted({lr for c in cells.values() for lr in c}, key=float)
  several_lrs = any(len(c) > 1 for c in cells.values())
  lines = []
  if several_lrs or not compared:
    lines += [
      f"### Runs {title}",
      "",
      f"Reported dev score per run: see each run's results.json. Cells: mean ± std over seeds "
      f"(n runs). lr choice: {summary['lr_choice']}.",
      "",
      "| task | " + " | ".join(f"lr {lr}" for lr in lrs) + " |",
      "|---|" + "---|" * len(lrs),
    ]
    for task in _task_order(cells):
      row = []
      for lr in lrs:
        cell = cells[task].get(lr)
        if cell is None:
          row.append("")
          continue
        s = cell["score"]
        text = f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} ({s['n']})"
        if task == "mnli" and "validation_mismatched" in cell["splits"]:
          text += f" mm {100 * cell['splits']['validation_mismatched']['mean']:.1f}"
        row.append(text)
      lines.append(f"| {task} | " + " | ".join(row) + " |")
  if not (several_lrs or len(cells) > 1):
    return "\n".join(lines) + "\n" if lines else ""
  most_seeds = max(cell["score"]["n"] for c in cells.values() for cell in c.values())
  for statistic in ("mean", "median") if most_seeds >= 3 else ("mean",):
    chosen = summary["chosen"][statistic]
    if not chosen["scores"]:
      continue
    what = "Chosen lrs" if several_lrs else "Tasks"
    lines += ["", f"{what} ({title}) by the {statistic} over seeds:", ""]
    lines.append("| " + " | ".join(chosen["scores"]) + " | average |")
    lines.append("|---" * (len(chosen["scores"]) + 1) + "|")
    values = [f"{100 * v:.1f} (lr {chosen['lrs'][t]})" for t, v in chosen["scores"].items()]
    if "average" in chosen:
      average = (
        f"GLUE Avg-8 {100 * chosen['average']:.1f}; without RTE "
        f"{100 * chosen['average_without_rte']:.1f}"
      )
    else:
      average = f"{100 * chosen['average_of_tasks_run']:.1f} (of the tasks run; not the GLUE Avg)"
    lines.append("| " + " | ".join(values) + f" | {average} |")
  return "\n".join(lines).lstrip("\n") + "\n\n"


def _task_order(cells) -> list[str]:
  return [t for t in recipes.PAPER_TASKS if t in cells] + sorted(
    t for t in cells if t not in recipes.PAPER_TASKS
  )


def _markdown_baselines(baselines: dict[str, dict[str, Any]]) -> str:
  """Per task: the majority-class score and the dev set's sampling noise."""
  if not baselines:
    return ""
  lines = ["### Baselines and noise", ""]
  for task, b in baselines.items():
    parts = []
    if b.get("majority_class") is not None:
      parts.append(
        f"majority class (the train set's most common label, {b['majority_label']!r}, for every "
        f"dev example): {100 * b['majority_class']:.1f}"
      )
    if b.get("sampling_se") is not None:
      parts.append(
        f"sampling noise: on {b['dev_examples']} dev examples an accuracy near "
        f"{100 * b['score']:.1f} has a binomial standard error of ±{100 * b['sampling_se']:.1f} "
        "(how far one model's score could move on another dev set of that size; score "
        "differences within about twice that are not evidence)"
      )
    if parts:
      lines.append(f"- **{task}**: " + "; ".join(parts) + ".")
  return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def baselines(workdir: str) -> dict[str, dict[str, Any]]:
  """Per task, from its finished runs: the majority-class dev score (results.json's
  `majority_class`, None for regression or runs written before it), the dev examples of the
  reported split, the mean score of the runs from pretrained weights (else all runs) and, for
  accuracy scores, its binomial standard error sqrt(p (1 - p) / n)."""
  out: dict[str, dict[str, Any]] = {}
  runs_by_task: dict[str, list[dict[str, Any]]] = {}
  for scratch in (False, True):
    for task, by_lr in collect(workdir, from_scratch=scratch).items():
      runs_by_task.setdefault(task, []).extend(r for group in by_lr.values() for r in group)
  for task, runs in runs_by_task.items():
    pretrained = [r for r in runs if not r.get("from_scratch")] or runs
    p = float(np.mean([r["score"] for r in pretrained]))
    majority = next((r["majority_class"] for r in runs if r.get("majority_class")), None)
    split = next(iter(runs[0]["reported"]["splits"].values()), {})
    n = split.get("examples")
    is_accuracy = score_metric(task, split) == "accuracy"
    out[task] = {
      "majority_class": None if majority is None else majority["score"],
      "majority_label": None if majority is None else majority["label"],
      "dev_examples": n,
      "score": p,
      "sampling_se": float(np.sqrt(p * (1 - p) / n)) if is_accuracy and n else None,
    }
  return out


def score_metric(task: str, split_metrics: dict[str, Any]) -> str:
  """What a task's dev score is: its GLUE metrics ('accuracy', 'accuracy / f1', 'mcc', ...),
  else 'accuracy' when the score is the accuracy (a generic classification task)."""
  if task in TASK_METRICS:
    return " / ".join(TASK_METRICS[task])
  if "accuracy" in split_metrics and split_metrics.get("score") == split_metrics["accuracy"]:
    return "accuracy"
  return "score"


def plot_dev_curves(workdir: str, out_png: str, *, note: str = "") -> str | None:
  """Writes `dev_curves_figure` to `out_png`; None (and no file) when no run has finished."""
  fig = dev_curves_figure(workdir, note=note)
  if fig is None:
    return None
  fig.savefig(out_png, dpi=110)
  return out_png


def dev_curves_figure(workdir: str, *, note: str = ""):
  """One panel per task: the dev score over epochs, per starting point (pretrained: blue, random
  init: orange) and lr: each seed thin, the mean over seeds thick, the seeds' min-max as a band;
  the majority class dashed grey. `note` goes under the title (e.g. the partial marker). A
  matplotlib Figure; None when no run has finished."""
  runs = [
    (task, r)
    for scratch in (False, True)
    for task, by_lr in collect(workdir, from_scratch=scratch).items()
    for group in by_lr.values()
    for r in group
  ]
  if not runs:
    return None
  from matplotlib.figure import Figure

  floors = baselines(workdir)
  tasks = sorted({t for t, _ in runs})
  fig = Figure(figsize=(7.5 * len(tasks), 5.5), layout="constrained")
  axes = fig.subplots(1, len(tasks), squeeze=False)[0]
  for ax, task in zip(axes, tasks):
    task_runs = [r for t, r in runs if t == task]
    _plot_task(ax, task, task_runs, floors.get(task, {}).get("majority_class"), note)
  return fig


def _plot_task(ax, task: str, runs: list[dict[str, Any]], majority: float | None, note: str):
  """One task's panel: a group of curves per (starting point, lr), the majority-class line."""
  groups: dict[tuple[bool, float], list[dict[str, Any]]] = {}
  for r in runs:
    groups.setdefault((bool(r.get("from_scratch")), float(r["lr"])), []).append(r)
  lrs = sorted({lr for _, lr in groups})
  for (scratch, lr), group in sorted(groups.items()):
    style = ("-", "--", ":", "-.")[lrs.index(lr) % 4]
    _plot_seeds(ax, group, scratch, f", lr {lr:g}" if len(lrs) > 1 else "", style)
  if majority is not None:
    ax.axhline(
      100 * majority,
      color="grey",
      linestyle="--",
      linewidth=1.2,
      label=f"majority class ({100 * majority:.1f})",
    )
  metric = score_metric(task, next(iter(runs[0]["reported"]["splits"].values()), {}))
  ax.set_title(f"{task}: dev {metric} per epoch" + (f"\n{note}" if note else ""))
  ax.set_xlabel("epoch")
  ax.set_ylabel(f"dev {metric} (x100)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=10, loc="best")


def _plot_seeds(ax, group: list[dict[str, Any]], scratch: bool, lr_text: str, style: str) -> None:
  """One (starting point, lr) group: each seed's curve thin, their mean thick, the min-max band
  when there are several seeds."""
  color = "tab:orange" if scratch else "tab:blue"
  by_epoch: dict[float, list[float]] = {}
  for r in sorted(group, key=lambda r: r["seed"]):
    points = [(e["epoch"], 100 * e["score"]) for e in r.get("evaluations", [])]
    for epoch, score in points:
      by_epoch.setdefault(round(epoch, 6), []).append(score)
    if points:
      ax.plot(*zip(*points), color=color, linestyle=style, linewidth=0.8, alpha=0.35)
  epochs = sorted(by_epoch)
  mean = [float(np.mean(by_epoch[e])) for e in epochs]
  name = "random init" if scratch else "pretrained"
  ax.plot(
    epochs,
    mean,
    color=color,
    linestyle=style,
    linewidth=2.2,
    marker="o",
    markersize=4,
    label=f"{name}{lr_text}: mean of {len(group)} seed{'s' if len(group) > 1 else ''}",
  )
  if len(group) > 1:
    ax.fill_between(
      epochs,
      [min(by_epoch[e]) for e in epochs],
      [max(by_epoch[e]) for e in epochs],
      color=color,
      alpha=0.12,
      label=f"{name}{lr_text}: min-max over seeds",
    )


def write_summary(
  workdir: str, lr_choice: str = "global", planned: int | None = None
) -> dict[str, Any]:
  """summary.json, summary.md and dev_curves.png in `workdir`; returns the summary. `planned`:
  the grid's number of runs; while fewer have finished, both say 'partial'."""
  summary = summarize(workdir, lr_choice)
  finished = sum(
    cell["score"]["n"]
    for group in (summary, summary.get("from_scratch", {"tasks": {}}))
    for cells in group["tasks"].values()
    for cell in cells.values()
  )
  summary["runs_finished"], summary["runs_planned"] = finished, planned
  summary["partial"] = planned is not None and finished < planned
  summary["baselines"] = baselines(workdir)
  note = f"partial: {finished} of {planned} runs finished" if summary["partial"] else ""
  summary["plot"] = plot_dev_curves(workdir, os.path.join(workdir, "dev_curves.png"), note=note)
  summary["markdown"] = markdown(summary)
  write_json_atomically(os.path.join(workdir, SUMMARY_JSON), summary)
  write_text_atomically(os.path.join(workdir, SUMMARY_MD), summary["markdown"])
  return summary
