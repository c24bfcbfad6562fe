"""Pretrain data2vec (text) in JAX.

  python train.py --config configs/pretrain.py:model=base,recipe=release --workdir /ckpt/run1 \
      --config.data.path=/data/bin/train --config.optimizer.lr=1e-4

Re-running the same command resumes from the newest checkpoint in --workdir. SIGTERM saves a
checkpoint and exits. See README.md for the configs and the outputs written to the workdir.

On Linux/glibc the script first re-executes itself with malloc settings that keep XLA:CPU's
per-step scratch memory mapped (`data2vec_jax/host_malloc.py`; D2V_MALLOC=default opts out).
It then adds the project's GPU XLA flags to XLA_FLAGS (`data2vec_jax/xla_flags.py`; flags you
set yourself win; D2V_XLA_FLAGS=none opts out).
"""

from data2vec_jax import host_malloc, xla_flags

if __name__ == "__main__":
  host_malloc.maybe_reexec()  # before jax starts: see data2vec_jax/host_malloc.py
  xla_flags.apply_gpu_flags()  # before jax starts a backend: XLA reads XLA_FLAGS only then

import logging  # noqa: E402
import os  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from data2vec_jax.trainer import train_and_evaluate  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  # Orbax logs every checkpoint phase through absl at INFO; keep the console to our progress.
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.info("glibc malloc settings for XLA:CPU scratch memory: %s",
               "on" if host_malloc.is_tuned() else "off (D2V_MALLOC=default or not glibc)")
  logging.info("XLA_FLAGS: %s", os.environ.get("XLA_FLAGS", "") or "(none)")
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
