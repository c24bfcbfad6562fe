"""Pretrain data2vec (text) in JAX (`d2v-train`, or `python train.py` in a checkout).

  d2v-train --config pretrain:model=base,recipe=release --workdir /ckpt/run1 \\
      --config.data.path=/data/bin/train --config.optimizer.lr=1e-4
  d2v-train --config demo --workdir demo_out          # the offline demo (make demo)

--config is a file (path[:args]) or a packaged config (pretrain, demo, ablations/top_k, ... with
or without configs/ and .py); --help lists its fields and their defaults. Re-running the same
command resumes from the newest checkpoint in --workdir. SIGTERM saves a checkpoint and exits.
See README.md for the configs and the outputs written to the workdir.

On Linux/glibc the command first re-executes itself with malloc settings that keep XLA:CPU's
per-step scratch memory mapped (`data2vec_jax/speed/host_malloc.py`; D2V_MALLOC=default opts out).
It then adds the project's GPU XLA flags to XLA_FLAGS (`data2vec_jax/speed/xla_flags.py`; flags you
set yourself win; D2V_XLA_FLAGS=none opts out).

Every failure ends the output with one line `<command>: error: ...`. Expected failures (a bad
config, unusable data, a checkpoint of another model, a diverged run) print only that line;
D2V_TRACEBACK=1 adds their tracebacks. Exit codes: 1 error, 2 bad flags, 130 Ctrl-C.
"""

from __future__ import annotations

import logging
import os

from absl import flags

from data2vec_jax import cli
from data2vec_jax.speed import host_malloc

FLAGS = flags.FLAGS

# Speed knobs that moved into the `execution` section (data2vec_jax/objective/execution.py).
MOVED_FIELDS = {
  "objective.head_positions_per_row": "execution.head_positions ('auto' | 'all' | an int K; "
  "was -1 / 0 / K)",
  "objective.prune_last_block": "execution.prune_last_block",
  "objective.head_overflow": "execution.head_overflow",
  "train.pack_tokens": "execution.pack_tokens",
  "train.pack_buckets": "execution.pack_buckets",
  "train.micro_batches": "execution.micro_batches",
  "model.scan_unroll": "execution.scan_unroll ('all' | an int)",
  "model.remat_policy": "execution.remat_policy",
  "model.attention_impl": "execution.attention_impl",
}


def define_flags() -> None:
  """The command's flags (defined on call: one process runs one command)."""
  cli.define_config_and_workdir("Directory for checkpoints, logs and exports.")


def parse_flags(argv: list[str]) -> list[str]:
  return cli.parse_flags(
    cli.prog_name(), argv, config_module="pretrain", moved=MOVED_FIELDS, doc=__doc__
  )


def _orbax_without_tracebacks(record: logging.LogRecord) -> bool:
  if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
    record.exc_info, record.exc_text = None, None
  return True


def run(argv: list[str]) -> None:
  del argv
  logging.getLogger().setLevel(logging.INFO)
  # Orbax logs every checkpoint phase through absl at INFO; keep the console to our progress.
  logging.getLogger("absl").setLevel(logging.WARNING)
  if not os.environ.get("D2V_TRACEBACK"):
    # A failed background save (a full disk) makes orbax log the same error with a traceback
    # from each of its threads, hundreds of lines; the error is raised and ends the output in
    # one line, so its log lines keep their message only.
    logging.getLogger("absl").addFilter(_orbax_without_tracebacks)
    from data2vec_jax.runtime.workdir_errors import quiet_orphaned_write_reports

    quiet_orphaned_write_reports()  # and the failed save's other writes, even at exit
  logging.info(
    "glibc malloc settings for XLA:CPU scratch memory: %s",
    "on" if host_malloc.is_tuned() else "off (D2V_MALLOC=default or not glibc)",
  )
  logging.info("XLA_FLAGS: %s", os.environ.get("XLA_FLAGS", "") or "(none)")
  from data2vec_jax.runtime.checkpoint import TrainingCheckpointError
  from data2vec_jax.runtime.workdir_errors import WorkdirError
  from data2vec_jax.train.health import TrainingError
  from data2vec_jax.train.loop import InputDataError, train_and_evaluate
  from data2vec_jax.train.recipe import ConfigError

  cli.run_reporting_errors(
    cli.prog_name(),
    lambda: train_and_evaluate(FLAGS.config, FLAGS.workdir),
    (ConfigError, InputDataError, TrainingCheckpointError, TrainingError, WorkdirError),
    "re-run the same command to resume from the newest checkpoint",
  )


def main() -> None:
  cli.start_jax_command(define_flags, run, parse_flags)


if __name__ == "__main__":
  main()
