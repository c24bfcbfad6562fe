"""Imports run one way: speed <- model <- objective, runtime <- train <- finetune <- sweep (data and
weights beside them), and nothing but the pretraining command (data2vec_jax/commands/train.py)
imports the training loop. `weights/` imports nothing from `train/` or `runtime/`: reading a
pretraining workdir is pretraining's (`train.export`, `train.workdir_tokenizer`). Fine-tuning
builds on everything below it; nothing below imports it.

Read from the source with `ast` (no import side effects), so a new upward import fails here
with the file and the line."""

from __future__ import annotations

import ast
import glob
import os

import pytest

from tests.paths import REPO

PACKAGE = os.path.join(REPO, "data2vec_jax")
# Subpackage -> the data2vec_jax subpackages it must not import.
FORBIDDEN = {
  "speed": {"model", "objective", "runtime", "train", "weights", "data", "finetune", "sweep"},
  "model": {"objective", "runtime", "train", "weights", "data", "finetune", "sweep"},
  "objective": {"runtime", "train", "weights", "data", "finetune", "sweep"},
  "data": {"model", "runtime", "train", "weights", "finetune", "sweep"},
  # What every run shares (checkpoints, optimizer, sharding, metrics, preemption, progress):
  # pretraining, fine-tuning and the sweep import it instead of copying it.
  "runtime": {"objective", "train", "weights", "data", "finetune", "sweep"},
  # Weights in and out of model directories and the references; reading a pretraining
  # workdir (export, its tokenizer) is pretraining's (train.export, train.workdir_tokenizer).
  "weights": {"runtime", "train", "finetune", "sweep"},
  "train": {"finetune", "sweep"},
  "finetune": {"sweep"},
  # The sweep runs the launchers as processes; it reads fine-tuning summaries, nothing more.
  "sweep": {"train", "model", "objective", "speed", "weights", "data"},
}
# The small experiment (issue 29) is on top of everything, and nothing imports it; it runs
# pretraining as train.py processes and compares objectives through their runs only.
for _below in FORBIDDEN.values():
  _below.add("transfer")
FORBIDDEN["transfer"] = {"commands", "objective"}


def imported_modules(path: str) -> list[tuple[int, str]]:
  """(line, 'data2vec_jax.x.y') for every import of the package in a file."""
  out = []
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      out += [(node.lineno, n) for n in names if n.startswith("data2vec_jax")]
    elif isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names if a.name.startswith("data2vec_jax")]
  return out


@pytest.mark.parametrize("subpackage", sorted(FORBIDDEN))
def test_no_upward_imports(subpackage):
  problems = []
  for path in sorted(glob.glob(os.path.join(PACKAGE, subpackage, "*.py"))):
    for line, module in imported_modules(path):
      parts = module.split(".")
      if len(parts) > 1 and parts[1] in FORBIDDEN[subpackage]:
        problems.append(f"{os.path.relpath(path, REPO)}:{line} imports {module}")
  assert not problems, "\n".join(problems)


def test_only_the_launcher_imports_the_training_loop():
  users = []
  for path in glob.glob(os.path.join(REPO, "**", "*.py"), recursive=True):
    if os.sep + ".venv" in path or path.endswith(os.path.join("train", "loop.py")):
      continue
    if any(m.startswith("data2vec_jax.train.loop") for _, m in imported_modules(path)):
      users.append(os.path.relpath(path, REPO))
  assert sorted(users) == [os.path.join("data2vec_jax", "commands", "train.py")], users
