"""Fine-tuning grids (tasks x lrs x seeds): the paper's protocol, run one run at a time.

Each run lives in `<workdir>/<task>/lr<lr>_seed<seed>/` and is an ordinary fine-tuning run (its
own results.json, checkpoints, resume). After every run the grid's summary (summary.json,
summary.md, dev_curves.png: finetune/grid_report.py) is rewritten; `python -m
data2vec_jax.finetune.grid --workdir W` writes it at any time. A re-run keeps the runs that
finished and runs the rest.

`grid.from_scratch=(False, True)` also runs every cell from random weights (the architecture and
tokenizer of `init`, the same recipe): the summary then has a second table, and
`dev_curves.png` shows both, the question "how much does pretraining add?" answered per task.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
from typing import Any

import ml_collections

from data2vec_jax.finetune import recipes
from data2vec_jax.finetune.grid_report import LR_CHOICES, SUMMARY_MD, summarize, write_summary
from data2vec_jax.finetune.loop import FinetuneError, completed_results, finetune_and_evaluate
from data2vec_jax.finetune.settings import GENERIC_DEFAULTS
from data2vec_jax.finetune.starting_point import (
  export_pretraining_checkpoint,
  is_pretraining_workdir,
  sync_processes,
)
from data2vec_jax.speed import compile_cache


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
    return int(completed_results(workdir) is not None), 1
  done = sum(completed_results(run_directory(workdir, *run)) is not None for run in runs)
  return done, len(runs)


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
    if completed_results(directory) is not None:
      logging.info("[%d/%d] %s: finished before, kept", number, len(runs), directory)
      kept += 1
      continue
    logging.info("[%d/%d] %s", number, len(runs), directory)
    results = finetune_and_evaluate(_run_config(config, task, lr, seed, scratch), directory)
    _log_result(results)
    write_summary(workdir, str(config.grid.lr_choice), planned=len(runs))
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
  summary = write_summary(workdir, str(config.grid.lr_choice), planned=len(runs))
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
      # Via exported.partial: never a half-written init for later runs.
      step = export_pretraining_checkpoint(pretraining, exported, use_ema=config.init_ema)
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
  if not reported:
    logging.info(
      "%s lr %.1e seed %d: no dev score: %s at update %d of %d, before its first evaluation",
      results["task"],
      results["lr"],
      results["seed"],
      results["stop_reason"],
      results["updates"],
      results["total_updates"],
    )
    return
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


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Summarise a fine-tuning grid's finished runs.")
  parser.add_argument("--workdir", required=True, help="the grid's --workdir")
  parser.add_argument("--lr_choice", default="global", choices=LR_CHOICES)
  args = parser.parse_args(argv)
  print(write_summary(args.workdir, args.lr_choice)["markdown"], end="")


if __name__ == "__main__":
  main()
