"""Pretrain data2vec (text) in JAX.

  python train.py --config configs/pretrain.py:model=base,recipe=release --workdir /ckpt/run1 \
      --config.data.path=/data/bin/train --config.optimizer.lr=1e-4

Re-running the same command resumes from the newest checkpoint in --workdir. SIGTERM saves a
checkpoint and exits. See README.md for the configs and the outputs written to the workdir.

On Linux/glibc the script first re-executes itself with malloc settings that keep XLA:CPU's
per-step scratch memory mapped (`data2vec_jax/speed/host_malloc.py`; D2V_MALLOC=default opts out).
It then adds the project's GPU XLA flags to XLA_FLAGS (`data2vec_jax/speed/xla_flags.py`; flags you
set yourself win; D2V_XLA_FLAGS=none opts out).

Every failure ends the output with one line `train.py: error: ...`. Expected failures (a bad
config, unusable data, a checkpoint of another model, a diverged run) print only that line;
D2V_TRACEBACK=1 adds their tracebacks. Exit codes: 1 error, 2 bad flags, 130 Ctrl-C.
"""

from data2vec_jax.speed import host_malloc, xla_flags

if __name__ == "__main__":
  host_malloc.maybe_reexec()  # before jax starts: see data2vec_jax/speed/host_malloc.py
  xla_flags.apply_gpu_flags()  # before jax starts a backend: XLA reads XLA_FLAGS only then

import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
flags.mark_flags_as_required(["config", "workdir"])


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


def fail(message: str, code: int = 1) -> None:
  """Ends the run with `message` as the last line of its output (no traceback after it)."""
  sys.stdout.flush()
  print(f"train.py: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad `--config...` override reported in one line, not a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(f"{e} (python train.py --helpfull lists the flags)", 2)
  except (AttributeError, KeyError) as e:  # an override of a field the config does not have
    # ml_collections' message quotes the missing key (escaped several times over): find the
    # override it belongs to.
    paths = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    words = re.findall(r"\w+", str(e))
    field = next((p for w in words for p in paths if w in p.split(".")), str(e))
    if field in MOVED_FIELDS:
      fail(f"config field {field!r} moved: use --config.{MOVED_FIELDS[field]}", 2)
    suggestion = re.search(r'Did you mean "(\w+)"', str(e))
    fail(
      f"unknown config field {field!r}"
      + (f" (did you mean {suggestion.group(1)!r}?)" if suggestion else "")
      + "; print the config's fields with: python -c \"from configs import pretrain; "
      "print(pretrain.get_config())\"",
      2,
    )
  except (TypeError, ValueError) as e:  # e.g. a string where the field holds a number
    fail(f"bad --config override: {e}", 2)


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  # Orbax logs every checkpoint phase through absl at INFO; keep the console to our progress.
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.info(
    "glibc malloc settings for XLA:CPU scratch memory: %s",
    "on" if host_malloc.is_tuned() else "off (D2V_MALLOC=default or not glibc)",
  )
  logging.info("XLA_FLAGS: %s", os.environ.get("XLA_FLAGS", "") or "(none)")
  from data2vec_jax.train.checkpoint import TrainingCheckpointError
  from data2vec_jax.train.health import TrainingError
  from data2vec_jax.train.loop import InputDataError, train_and_evaluate
  from data2vec_jax.train.recipe import ConfigError

  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ConfigError, InputDataError, TrainingCheckpointError, TrainingError) as e:
    if os.environ.get("D2V_TRACEBACK"):
      traceback.print_exc()
    fail(str(e))  # the messages say what went wrong and what to do; a traceback adds nothing
  except KeyboardInterrupt:
    fail("interrupted (Ctrl-C); re-run the same command to resume from the newest checkpoint", 130)
  except Exception as e:  # noqa: BLE001 - unexpected: the traceback, then the one-line summary
    traceback.print_exc()
    fail(f"{type(e).__name__}: {e}".splitlines()[0])


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
