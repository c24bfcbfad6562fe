"""Where the persistent compilation cache goes (data2vec_jax/speed/compile_cache.py); that a
restart compiles nothing is tested end to end in tests/e2e/test_train.py."""

from __future__ import annotations

import os

from data2vec_jax.speed import compile_cache


def test_auto_is_the_environment_then_the_workdir(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  assert compile_cache.cache_directory("auto", "runs/x") == os.path.abspath("runs/x/jax_cache")
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "shared"))
  assert compile_cache.cache_directory("auto", "runs/x") == str(tmp_path / "shared")


def test_off_and_explicit_directories():
  assert compile_cache.cache_directory("none", "w") is None
  assert compile_cache.cache_directory("", "w") is None
  assert compile_cache.cache_directory("/scratch/cache", "w") == "/scratch/cache"
  assert compile_cache.cache_directory("gs://bucket/cache", "w") == "gs://bucket/cache"
