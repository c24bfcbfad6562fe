"""Run an ablation sweep: every value of one axis pretrained, fine-tuned and scored; then the table.

  python sweep.py --config configs/sweeps/top_k.py:data=data/bin/train,glue=glue_data \
      --workdir runs/sweep_top_k                  # every cell, one after another, then the table
  python sweep.py --config ... --workdir ... --list        # one command per cell (job arrays)
  python sweep.py --config ... --workdir ... --cell 3      # cell 3 only (0-based)
  python sweep.py --config ... --workdir ... --cell 3 --stage pretrain   # one stage of it
  python sweep.py --config ... --workdir ... --aggregate   # the table from the finished cells

A cell is `train.py` (in <workdir>/cells/<axis>=<value>/pretrain) then `finetune.py` (its grid in
.../finetune, starting from that pretraining's newest checkpoint). Re-running any of these
commands skips what is finished and resumes what was interrupted. The table
(<workdir>/results.{csv,md,json}, axis_plot.png) is written after every cell and by --aggregate;
--cell does not write it (several array tasks run at once: aggregate once they are done).
Definitions: configs/sweeps/ (any field can be overridden: --config.axis_values="('1','2')").
README.md, "Ablation sweeps", has a SLURM job-array example.

Every failure ends the output with one line `sweep.py: error: ...` (exit 1; 2 bad flags).
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from data2vec_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Sweep definition file (path[:arg]).")
flags.DEFINE_string("workdir", None, "Directory of the sweep: cells/ and the results.")
flags.DEFINE_boolean("list", False, "Print one command per cell and exit.")
flags.DEFINE_integer("cell", None, "Run this cell only (0-based index; see --list).")
flags.DEFINE_enum(
  "stage",
  "all",
  ["all", "pretrain", "finetune"],
  "Run only this stage of the cells (multi-host: pretrain on every host, fine-tune on one).",
)
flags.DEFINE_boolean("aggregate", False, "Only write the table from the cells finished so far.")
flags.DEFINE_boolean("echo", True, "Echo the stages' output, prefixed by the cell (logs: cells/).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  return cli.parse_flags("sweep.py", argv, config_module="sweeps.top_k")


def run() -> None:
  from data2vec_jax.sweep import definition, runner, table

  sweep, workdir = FLAGS.config, os.path.abspath(FLAGS.workdir)
  cells = definition.cells(sweep, workdir)
  configs = runner.StageConfigs(cells)  # every cell's configs parse before anything runs
  if FLAGS.list:
    for cell in cells:
      print(runner.cell_command(_config_flags(sys.argv), workdir, cell))
    return
  if FLAGS.cell is not None and not 0 <= FLAGS.cell < len(cells):
    raise definition.SweepError(f"--cell={FLAGS.cell}: the sweep has cells 0..{len(cells) - 1}")
  chosen = cells if FLAGS.cell is None else [cells[FLAGS.cell]]
  # The cells compile the same fine-tuning programs (and pretraining ones where the axis leaves
  # the step alone): one persistent compilation cache for the whole sweep.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(workdir, "jax_cache"))
  outcomes = {}
  if not FLAGS.aggregate:
    stages = runner.STAGES if FLAGS.stage == "all" else (FLAGS.stage,)
    outcomes = runner.run_cells(chosen, configs, stages=stages, echo=FLAGS.echo)
  if FLAGS.cell is None:
    rows = table.write_tables(sweep, cells, configs, workdir)
    with open(os.path.join(workdir, table.RESULTS_MD)) as f:
      print(f.read(), end="")
    logging.info(
      "%d/%d cells done; table: %s",
      sum(r["status"] == "done" for r in rows),
      len(rows),
      os.path.join(workdir, table.RESULTS_MD),
    )
  failed = [name for name, outcome in outcomes.items() if outcome == "failed"]
  if failed:
    raise definition.SweepError(
      f"cells {failed} failed (their logs: {workdir}/cells/<cell>/*.log); fix and re-run"
    )


def _config_flags(argv: list[str]) -> list[str]:
  """The sweep's --config and --config.* flags as given (what each cell's command repeats)."""
  out = []
  for i, arg in enumerate(argv):
    if arg in ("--config", "-config") and i + 1 < len(argv):
      out.append(f"--config={argv[i + 1]}")
    elif arg.startswith(("--config=", "--config.")):
      out.append(arg)
  return out


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  from data2vec_jax.sweep.definition import SweepError

  cli.run_reporting_errors(
    "sweep.py", run, (SweepError,), "re-run the same command to resume the sweep"
  )


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
