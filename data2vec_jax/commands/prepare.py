"""`d2v-prepare`: binarize a corpus for pretraining (`python -m data2vec_jax.data.prepare`).

The flags and what is written: data2vec_jax/data/prepare.py (`d2v-prepare --help`).
"""

from __future__ import annotations

from data2vec_jax.data import prepare


def main(argv: list[str] | None = None) -> int:
  """Exit status 0 (prepare.main returns its statistics, which a console script would print)."""
  prepare.main(argv)
  return 0
