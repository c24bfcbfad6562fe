"""Fine-tuning grids (tasks x lrs x seeds) and their summary table: the paper's protocol.

Each run lives in `<workdir>/<task>/lr<lr>_seed<seed>/` and is an ordinary fine-tuning run (its
own results.json, checkpoints, resume). The summary (`summarize`, written to
`<workdir>/summary.json` and `summary.md` after every run, and by
`python -m data2vec_jax.finetune.grid --workdir W`) gives, per task and lr, the mean, median and
standard deviation of the runs' reported dev scores (each run's best evaluation by default,
`train.report`), and then the lr choice:

* `global` (default; the paper's §4.3 read literally): one lr for every task, the one with the
  best average over the tasks of the per-task means;
* `per_task` (fairseq's `glue_lr.py`): each task's best lr.

With all eight tasks the table ends in the paper's GLUE average (Table 4: MNLI counted once, as
dev matched; MRPC/QQP (acc+F1)/2; STS-B (P+S)/2; CoLA MCC) and the average without RTE that
fairseq's tools also print; with the mean over seeds (the paper) and the median (RoBERTa).

`grid.from_scratch=(False, True)` also runs every cell from random weights (the architecture and
tokenizer of `init`, the same recipe): the summary then has a second table, and
`dev_curves.png` shows both, the question "how much does pretraining add?" answered per task.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from data2vec_jax.finetune import recipes
from data2vec_jax.finetune.loop import RESULTS_FILE, FinetuneError, finetune_and_evaluate
from data2vec_jax.finetune.metrics import GLUE_AVERAGE_TASKS, glue_average
from data2vec_jax.finetune.settings import GENERIC_DEFAULTS
from data2vec_jax.finetune.starting_point import (
  is_pretraining_workdir,
  sync_processes,
)
from data2vec_jax.speed import compile_cache
from data2vec_jax.weights.export import export_from_checkpoint

SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"
LR_CHOICES = ("global", "per_task")


def grid_runs(config: ml_collections.ConfigDict) -> list[tuple[str, float, int, bool]]:
  """(task, lr, seed, from_scratch) of every run the config asks for (no grid.lrs: the
  configured lr, else the task's recipe lr; no grid.from_scratch: config.from_scratch)."""
  tasks = tuple(config.grid.tasks) or (config.task,)
  if config.task != "glue" and tasks != (config.task,):
    raise FinetuneError(
      f"grid.tasks={list(tasks)} with task={config.task}: the config holds {config.task}'s "
      "recipe; for several tasks start from configs/finetune.py:task=glue (each task's recipe "
      "is then its own) and set --config.grid.tasks"
    )
  if config.task == "glue" and not config.grid.tasks:
    raise FinetuneError("task=glue needs grid.tasks (configs/finetune.py:task=glue sets them)")
  unknown = [t for t in tasks if config.task == "glue" and t not in recipes.GLUE_RECIPES]
  if unknown:
    raise FinetuneError(
      f"grid.tasks has {unknown}, not GLUE tasks (known: {sorted(recipes.GLUE_RECIPES)}); a "
      "task of your own runs with configs/finetune.py:task=<name> and data.source=generic"
    )
  if config.grid.lr_choice not in LR_CHOICES:
    raise FinetuneError(f"grid.lr_choice={config.grid.lr_choice!r}; expected one of {LR_CHOICES}")
  seeds = tuple(int(s) for s in config.grid.seeds) or (int(config.train.seed),)

  def lrs(task: str) -> tuple[float, ...]:
    if config.grid.lrs:
      return tuple(float(x) for x in config.grid.lrs)
    if config.optimizer.lr is not None:
      return (float(config.optimizer.lr),)
    recipe = recipes.GLUE_RECIPES.get(task)
    return (recipe.lr if recipe else GENERIC_DEFAULTS["lr"],)

  inits = tuple(bool(x) for x in config.grid.from_scratch) or (bool(config.from_scratch),)
  return [(t, lr, s, z) for z in inits for t in tasks for lr in lrs(t) for s in seeds]


def run_directory(workdir: str, task: str, lr: float, seed: int, from_scratch: bool) -> str:
  name = f"lr{lr:g}_seed{seed}" + ("_scratch" if from_scratch else "")
  return os.path.join(workdir, task, name)


def progress(config: ml_collections.ConfigDict, workdir: str) -> tuple[int, int]:
  """(finished, planned) runs of the config's grid (or its single run) in `workdir`."""
  runs = grid_runs(config)
  if len(runs) == 1 and config.task != "glue":
    return int(_finished(workdir) is not None), 1
  done = sum(_finished(run_directory(workdir, *run)) is not None for run in runs)
  return done, len(runs)


def _finished(path: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(path, RESULTS_FILE)) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  return results if results.get("stop_reason") == "completed" else None


def run_finetuning(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """One run in `workdir`, or the grid's runs under it followed by the summary."""
  runs = grid_runs(config)
  # A restart, and every run of a grid after the first, loads the programs compiled before.
  compile_cache.enable(config.train.get("compilation_cache", "auto"), workdir)
  if len(runs) == 1 and config.task != "glue":
    results = finetune_and_evaluate(_run_config(config, *runs[0]), workdir)
    _log_result(results)
    return results
  config = _export_init_once(config, workdir)
  kept = 0
  for number, (task, lr, seed, scratch) in enumerate(runs, start=1):
    directory = run_directory(workdir, task, lr, seed, scratch)
    if _finished(directory) is not None:
      logging.info("[%d/%d] %s: finished before, kept", number, len(runs), directory)
      kept += 1
      continue
    logging.info("[%d/%d] %s", number, len(runs), directory)
    results = finetune_and_evaluate(_run_config(config, task, lr, seed, scratch), directory)
    _log_result(results)
    write_summary(workdir, str(config.grid.lr_choice))
    if results["stop_reason"] != "completed":
      # A preemption notice (SIGTERM) stops the grid, not only the run it arrived in: the
      # process is about to be killed, and the next run would be lost work.
      logging.warning(
        "grid stopped at run %d/%d (%s); re-run the same command to resume",
        number,
        len(runs),
        results["stop_reason"],
      )
      return summarize(workdir, str(config.grid.lr_choice))
  summary = write_summary(workdir, str(config.grid.lr_choice))
  if kept == len(runs):
    logging.info(
      "%s: already complete, all %d runs finished before; nothing to do (summary rewritten "
      "from them; more seeds or lrs: add them to grid.seeds / grid.lrs)",
      workdir,
      len(runs),
    )
  logging.info("summary: %s\n%s", os.path.join(workdir, SUMMARY_MD), summary["markdown"])
  return summary


def _export_init_once(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """A grid starting from a pretraining workdir exports its checkpoint once, to
  `<workdir>/init_model[_ema]`, instead of once per run (160 copies of a Base model for the
  paper's grid); the runs then start from that directory, which carries the workdir's tokenizer. A grid
  re-run keeps the export it made first, so runs added later start from the same weights even
  if pretraining has gone on since."""
  if not is_pretraining_workdir(os.path.abspath(os.path.expanduser(config.init))):
    return config
  import jax

  pretraining = os.path.abspath(os.path.expanduser(config.init))
  config = copy.deepcopy(config)
  exported = os.path.join(
    os.path.abspath(workdir), "init_model" + ("_ema" if config.init_ema else "")
  )
  if os.path.isfile(os.path.join(exported, "config.json")):
    logging.info("init: %s, exported before (kept for every run)", exported)
  else:
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      _, step = export_from_checkpoint(pretraining, exported + ".partial", use_ema=config.init_ema)
      os.replace(exported + ".partial", exported)  # never a half-written init for later runs
      logging.info(
        "init: %s step %d exported once for every run, to %s", pretraining, step, exported
      )
    sync_processes("data2vec_jax: grid init exported")
  config.init = exported
  config.init_ema = False
  return config


def _run_config(
  config, task: str, lr: float, seed: int, from_scratch: bool
) -> ml_collections.ConfigDict:
  run = copy.deepcopy(config)
  run.task = task
  run.optimizer.lr = lr
  run.train.seed = seed
  run.from_scratch = from_scratch
  return run


def _log_result(results: dict[str, Any]) -> None:
  reported = results.get("reported") or {}
  logging.info(
    "%s lr %.1e seed %d: dev score %.2f (%s evaluation, update %s of %d)",
    results["task"],
    results["lr"],
    results["seed"],
    100 * (results["score"] or float("nan")),
    results["report"],
    reported.get("update"),
    results["total_updates"],
  )


# ----------------------------------------------------------------------------------------------
# Summary


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
    results = _finished(path)
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
  """The summary as Markdown tables (scores x100, as the paper prints them)."""
  text = ""
  if "from_scratch" in summary:
    text = _markdown_comparison(summary) + "\n"
  text += _markdown_group(summary, "from pretrained weights")
  if "from_scratch" in summary:
    text += "\n" + _markdown_group(summary["from_scratch"], "from random weights (same recipe)")
  return text


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


def _markdown_group(summary: dict[str, Any], title: str) -> str:
  cells = summary["tasks"]
  lrs = sorted({lr for c in cells.values() for lr in c}, key=float)
  lines = [
    f"### Runs {title}",
    "",
    f"Reported dev score per run: see each run's results.json. Cells: mean ± std over seeds "
    f"(n runs). lr choice: {summary['lr_choice']}.",
    "",
    "| task | " + " | ".join(f"lr {lr}" for lr in lrs) + " |",
    "|---|" + "---|" * len(lrs),
  ]
  order = [t for t in recipes.PAPER_TASKS if t in cells] + sorted(
    t for t in cells if t not in recipes.PAPER_TASKS
  )
  for task in order:
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
  for statistic in ("mean", "median"):
    chosen = summary["chosen"][statistic]
    if not chosen["scores"]:
      continue
    lines += ["", f"Chosen lrs by the {statistic} over seeds:", ""]
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
  return "\n".join(lines) + "\n"


def plot_dev_curves(workdir: str, out_png: str) -> str | None:
  """One panel per task: every finished run's dev score over its evaluations (x: epoch), from
  pretrained weights (solid) and from random ones (dashed); None when there is no run."""
  runs = [
    (task, r)
    for scratch in (False, True)
    for task, by_lr in collect(workdir, from_scratch=scratch).items()
    for group in by_lr.values()
    for r in group
  ]
  if not runs:
    return None
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tasks = sorted({t for t, _ in runs})
  fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for _, r in sorted(
      ((t, r) for t, r in runs if t == task),
      key=lambda item: (bool(item[1].get("from_scratch")), item[1]["lr"], item[1]["seed"]),
    ):
      scratch = bool(r.get("from_scratch"))
      points = [(e["epoch"], 100 * e["score"]) for e in r.get("evaluations", [])]
      if points:
        ax.plot(
          *zip(*points),
          linestyle="--" if scratch else "-",
          marker=".",
          label=f"{'from scratch' if scratch else 'pretrained'} lr {r['lr']:g} seed {r['seed']}",
        )
    ax.set_title(f"{task}: dev score")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return out_png


def write_summary(workdir: str, lr_choice: str = "global") -> dict[str, Any]:
  """summary.json, summary.md and dev_curves.png in `workdir`; returns the summary."""
  summary = summarize(workdir, lr_choice)
  summary["plot"] = plot_dev_curves(workdir, os.path.join(workdir, "dev_curves.png"))
  summary["markdown"] = markdown(summary)
  with open(os.path.join(workdir, SUMMARY_JSON), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(workdir, SUMMARY_MD), "w") as f:
    f.write(summary["markdown"])
  return summary


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Summarise a fine-tuning grid's finished runs.")
  parser.add_argument("--workdir", required=True, help="the grid's --workdir")
  parser.add_argument("--lr_choice", default="global", choices=LR_CHOICES)
  args = parser.parse_args(argv)
  print(write_summary(args.workdir, args.lr_choice)["markdown"], end="")


if __name__ == "__main__":
  main()
