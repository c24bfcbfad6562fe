"""`d2v-compile`: compile the step a config would run for a TPU topology, before renting it
(`python -m data2vec_jax.compile_for`; the flags and the report: data2vec_jax/compile_for.py)."""

from __future__ import annotations

import os

from absl import app

from data2vec_jax import cli


def main() -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this host runs nothing: no accelerator needed
  from data2vec_jax import compile_for  # defines its flags

  app.run(
    compile_for.main,
    flags_parser=lambda argv: cli.parse_flags(
      cli.prog_name(), argv, config_module="pretrain", doc=compile_for.__doc__
    ),
  )


if __name__ == "__main__":
  main()
