"""Run an ablation sweep: every value of one axis pretrained, fine-tuned and scored; then the table
(`d2v-sweep`, or `python sweep.py` in a checkout).

  d2v-sweep --config sweeps/top_k:data=data/bin/train,glue=glue_data \\
      --workdir runs/sweep_top_k                  # every cell, one after another, then the table
  d2v-sweep --config ... --workdir ... --list        # one command per cell (job arrays)
  d2v-sweep --config ... --workdir ... --cell 3      # cell 3 only (0-based)
  d2v-sweep --config ... --workdir ... --cell 3 --stage pretrain   # one stage of it
  d2v-sweep --config ... --workdir ... --aggregate   # the table from the finished cells

A cell is `d2v-train` (train.py) (in <workdir>/cells/<axis>=<value>/pretrain) then `d2v-finetune` (its grid in
.../finetune, starting from that pretraining's newest checkpoint). Re-running any of these
commands skips what is finished and resumes what was interrupted. The table
(<workdir>/results.{csv,md,json}, axis_plot.png) is written after every cell and by --aggregate;
--cell does not write it (several array tasks run at once: aggregate once they are done).
Definitions: configs/sweeps/, packaged (--config sweeps/top_k; --help lists a definition's
fields; any field can be overridden: --config.axis_values="('1','2')").
README.md, "Ablation sweeps", has a SLURM job-array example.

--list prints `cd <this directory> && <this interpreter> ...` with absolute paths: its lines run
from a job script.
Every failure ends the output with one line `<command>: error: ...` (exit 1; 2 bad flags).
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from data2vec_jax import cli, config_files

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined on call: one process runs one command)."""
  config_flags.DEFINE_config_file(
    "config", None, "Sweep definition: a file or packaged config (path[:arg])."
  )
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
  flags.DEFINE_boolean(
    "echo", True, "Echo the stages' output, prefixed by the cell (logs: cells/)."
  )
  flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  return cli.parse_flags(cli.prog_name(), argv, config_module="sweeps.top_k", doc=__doc__)


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

    # The table after every cell, as the README says (not with --cell: array tasks run at
    # once, each writing it would race; --aggregate writes it when they are done).
    def write_table(*_) -> None:
      table.write_tables(sweep, cells, configs, workdir)

    outcomes = runner.run_cells(
      chosen,
      configs,
      stages=stages,
      echo=FLAGS.echo,
      after_cell=write_table if FLAGS.cell is None else None,
    )
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
  """The sweep's --config (as an absolute path) and --config.* flags (what each cell's command
  repeats)."""
  out = []
  for i, arg in enumerate(argv):
    if arg in ("--config", "-config") and i + 1 < len(argv):
      out.append(f"--config={config_files.resolve(argv[i + 1])}")
    elif arg.startswith(("--config=", "-config=")):
      out.append(f"--config={config_files.resolve(arg.partition('=')[2])}")
    elif arg.startswith("--config."):
      out.append(arg)
  return out


def _main(argv: list[str]) -> None:
  del argv
  logging.getLogger().setLevel(logging.INFO)
  from data2vec_jax.sweep.definition import SweepError

  cli.run_reporting_errors(
    cli.prog_name(), run, (SweepError,), "re-run the same command to resume the sweep"
  )


def main() -> None:
  define_flags()
  app.run(_main, flags_parser=parse_flags)


if __name__ == "__main__":
  main()
