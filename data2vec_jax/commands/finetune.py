"""Fine-tune a pretrained data2vec text model on GLUE (or your own task) and score the dev sets
(`d2v-finetune`, or `python finetune.py` in a checkout).

  d2v-finetune --config finetune:task=rte --workdir runs/rte \\
      --config.init=runs/base --config.data.path=glue_data
  d2v-finetune --config finetune:task=glue,grid=paper --workdir runs/glue \\
      --config.init=runs/base --config.data.path=glue_data
  d2v-finetune --config finetune_demo --workdir demo_out/finetune     # the demo (make demo)

--config is a file (path[:args]) or a packaged config; --help lists its fields and defaults.
One run writes results.json (every dev evaluation, the best and the last, the reported score),
metrics.jsonl, tensorboard/, checkpoints/ and model/ to --workdir. Several tasks, lrs or seeds
(config.grid) run one after another in <workdir>/<task>/lr<lr>_seed<seed>/, and
<workdir>/summary.{json,md} tabulate them (data2vec_jax/finetune/grid_report.py). Re-running the
same command resumes: finished runs are kept, an interrupted one continues from its newest
checkpoint. SIGTERM saves a checkpoint and exits. See README.md, "Fine-tuning and GLUE".

Every failure ends the output with one line `<command>: error: ...` (exit 1; 2 bad flags;
130 Ctrl-C); D2V_TRACEBACK=1 adds the traceback of expected failures.
"""

from __future__ import annotations

import logging

from absl import flags

from data2vec_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined on call: one process runs one command)."""
  cli.define_config_and_workdir("Directory for the run (or the grid's runs) and results.")


def parse_flags(argv: list[str]) -> list[str]:
  return cli.parse_flags(cli.prog_name(), argv, config_module="finetune", doc=__doc__)


def run(argv: list[str]) -> None:
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-phase checkpoint logs
  from data2vec_jax.finetune.grid import run_finetuning
  from data2vec_jax.finetune.loop import FinetuneError
  from data2vec_jax.runtime.checkpoint import TrainingCheckpointError
  from data2vec_jax.weights.torch_io import CheckpointError

  cli.run_reporting_errors(
    cli.prog_name(),
    lambda: run_finetuning(FLAGS.config, FLAGS.workdir),
    (FinetuneError, CheckpointError, TrainingCheckpointError),
    "re-run the same command to resume",
  )


def main() -> None:
  cli.start_jax_command(define_flags, run, parse_flags)


if __name__ == "__main__":
  main()
