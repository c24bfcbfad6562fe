"""The command lines (data2vec_jax/commands/, behind train.py, finetune.py, sweep.py and
convert_torch_weights.py): --help exits 0 and lists the config's fields with their defaults,
--config names a file or a packaged config, an unknown field or task name is one line with "did
you mean" and the config file actually used, argparse flags are --snake_case with the old
--kebab-case spelling kept as a hidden alias. Nothing here imports JAX in the subprocesses
(they stop at flag parsing), so each takes about a second."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from data2vec_jax import cli, config_files
from tests.paths import REPO
from tests.xla_env import xla_flags


def run(script: str, *args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run(
    [sys.executable, os.path.join(REPO, script), *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def last_line(text: str) -> str:
  return text.strip().splitlines()[-1]


@pytest.mark.parametrize(
  "script, args, expected",
  [
    # Without --config: the default config's fields.
    ("train.py", (), ["--workdir", "fields of the config", "train.num_steps = 1000000"]),
    # With --config (a packaged one, by name): that config's fields and defaults.
    ("train.py", ("--config", "demo"), ["demo.py", "train.num_steps = 200"]),
    ("finetune.py", ("--config=configs/finetune_demo.py",), ["init = 'demo_out'"]),
    ("finetune.py", (), ["task = 'rte'", "optimizer.lr = 2e-05"]),
    ("sweep.py", (), ["--list", "--cell", "axis = 'k'", "sweeps/top_k.py"]),
    ("sweep.py", ("--config", "sweeps/demo_top_k"), ["axis = 'objective.average_top_k_layers'"]),
  ],
)
def test_help_exits_0_and_lists_the_configs_fields(tmp_path, script, args, expected):
  out = run(script, *args, "--help", cwd=str(tmp_path))  # packaged configs: any directory
  assert out.returncode == 0, out.stderr[-2000:]
  for text in expected:
    assert text in out.stdout, (text, out.stdout[-3000:])


def test_an_unknown_field_names_the_closest_field_and_the_config_file_used(tmp_path):
  out = run("train.py", "--config=configs/demo.py", f"--workdir={tmp_path}", "--config.trian.x=1")
  line = last_line(out.stderr)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert line.startswith("train.py: error: unknown config field 'trian.x'"), line
  assert os.path.join(REPO, "configs", "demo.py") in line and "pretrain" not in line, line
  out = run("train.py", "--config=demo", f"--workdir={tmp_path}", "--config.train.nmu_steps=1")
  assert "(did you mean 'train.num_steps'?)" in last_line(out.stderr), out.stderr[-2000:]


def test_an_unknown_config_name_gets_did_you_mean(tmp_path):
  out = run("train.py", "--config=demoo", f"--workdir={tmp_path}", cwd=str(tmp_path))
  line = last_line(out.stderr)
  assert out.returncode == 2, out.stderr
  assert line.startswith("train.py: error: --config demoo: no config file 'demoo'"), line
  assert "(did you mean 'demo'?)" in line and "sweeps/top_k" in line, line


def test_a_misspelt_glue_task_is_not_a_task_of_your_own(tmp_path):
  out = run("finetune.py", "--config=finetune:task=rtee", f"--workdir={tmp_path}")
  line = last_line(out.stderr)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert line.startswith("finetune.py: error: ") and "(did you mean 'rte'?)" in line, line
  assert not os.listdir(tmp_path)  # nothing ran


def test_a_task_of_your_own_close_to_a_glue_name_is_named_with_own_true():
  from data2vec_jax.configs import finetune as finetune_config

  with pytest.raises(ValueError, match=r"did you mean 'wnli'\?.*own=true"):
    finetune_config.get_config("task=snli")
  assert finetune_config.get_config("task=snli,own=true").data.source == "generic"
  assert finetune_config.get_config("task=topic").data.source == "generic"  # not close: no flag
  with pytest.raises(ValueError, match="GLUE's"):
    finetune_config.get_config("task=rte,own=true")


def test_packaged_configs_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  packaged = os.path.join(config_files.PACKAGED, "ablations", "top_k.py")
  for spec in ("ablations/top_k:k=3", "configs/ablations/top_k.py:k=3", "ablations/top_k.py:k=3"):
    assert config_files.resolve(spec) == packaged + ":k=3"
  assert "sweeps/glue" in config_files.packaged_names()
  # A file of that name in the working directory wins over the packaged one.
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "demo.py").write_text("def get_config():\n  return None\n")
  assert config_files.resolve("configs/demo.py") == str(tmp_path / "configs" / "demo.py")
  with pytest.raises(config_files.ConfigFileError, match="did you mean 'finetune'"):
    config_files.resolve("finetun")


def test_argparse_flags_are_snake_case_with_the_kebab_spelling_hidden():
  parser = argparse.ArgumentParser()
  cli.add_argument(parser, "batch_size", type=int, default=32, help="texts per batch")
  cli.add_argument(parser, "no_tokenizer", action="store_true", help="weights only")
  assert parser.parse_args([]).batch_size == 32
  assert parser.parse_args(["--batch_size", "4"]).batch_size == 4
  assert parser.parse_args(["--batch-size", "5", "--no-tokenizer"]).no_tokenizer
  assert parser.parse_args(["--batch-size", "5"]).batch_size == 5
  shown = parser.format_help()
  assert "--batch_size" in shown and "--no_tokenizer" in shown
  assert "--batch-size" not in shown and "--no-tokenizer" not in shown


def test_convert_help_shows_snake_case_flags_only():
  out = run("convert_torch_weights.py", "--help")
  assert out.returncode == 0, out.stderr
  assert "--hf_architecture" in out.stdout and "--drop_token_type_rows" in out.stdout
  assert "--hf-architecture" not in out.stdout and "--no-tokenizer" not in out.stdout


def test_the_tpu_compile_command_has_the_same_help():
  env = dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run(
    [sys.executable, "-m", "data2vec_jax.commands.compile_for", "--config", "demo", "--help"],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert "--topology" in out.stdout and "train.num_steps = 200" in out.stdout
