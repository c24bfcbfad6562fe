"""`python -m data2vec_jax.transfer --workdir DIR [--minutes M] [--recipes ...] [--stages ...]`:
the small experiment (this package's docstring), stage by stage; a re-run resumes where it
stopped. `--recipes roberta --minutes 45` runs one recipe longer (e.g. to test a trend the
15-minute runs extrapolate)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from data2vec_jax.transfer.plan import RECIPES  # light: no JAX before the arguments are checked

STAGES = ("prepare", "calibrate", "pretrain", "evaluate", "baseline", "report")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m data2vec_jax.transfer", description=__doc__)
  p.add_argument("--workdir", required=True, help="where everything is written (resumable)")
  p.add_argument("--minutes", type=float, default=15.0, help="pretraining minutes per recipe")
  p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma list of {', '.join(RECIPES)}")
  p.add_argument(
    "--stages", default=",".join(STAGES), help=f"comma list, in order, of {', '.join(STAGES)}"
  )
  args = p.parse_args(argv)
  args.stages = list(_names(p, "--stages", args.stages, STAGES))
  args.recipes = _names(p, "--recipes", args.recipes, RECIPES)
  return args


def _names(p: argparse.ArgumentParser, flag: str, value: str, known: tuple[str, ...]):
  """A comma list's names, in order; an unknown name or an empty list is a one-line error."""
  names = tuple(n for n in value.split(",") if n)
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    p.error(f"{flag} has {unknown or 'nothing'}; known: {', '.join(known)}")
  return names


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  # Imported after the arguments are checked: --help and a typo answer without loading JAX.
  from data2vec_jax.atomic_files import read_json
  from data2vec_jax.transfer import evaluate, pretrain
  from data2vec_jax.transfer.baseline import baseline
  from data2vec_jax.transfer.plan import Plan
  from data2vec_jax.transfer.prepare import prepare_data

  plan = Plan(workdir=args.workdir, minutes=args.minutes, recipes=args.recipes)
  start = time.time()
  calibration = read_json(plan.calibration_path)
  for stage in args.stages:
    logging.info("stage %s", stage)
    if stage == "prepare":
      prepare_data(plan)
    elif stage == "calibrate":
      calibration = pretrain.calibrate(plan)
    elif calibration is None:
      sys.exit(f"{stage}: no {plan.calibration_path}; run the calibrate stage first")
    elif stage == "pretrain":
      pretrain.pretrain(plan, calibration)
    elif stage == "evaluate":
      evaluate.evaluate(plan, calibration)
    elif stage == "baseline":
      baseline(plan)
    elif stage == "report":
      from data2vec_jax.transfer import report

      print(report.write_report(plan, calibration))
  logging.info("done in %.1f min: %s", (time.time() - start) / 60, plan.path("report.md"))


if __name__ == "__main__":
  main()
