"""`python -m data2vec_jax.train.export` on workdirs a user may give it: every failure is one
line naming the problem (a missing workdir, a step that was never kept, no intact checkpoint),
and a corrupt newest checkpoint is skipped for the newest intact one, saying so, as a resumed
run does (it used to be a 148-line traceback). The workdir is made here: a tiny recipe's
state saved at steps 2 and 4 by the training checkpointer, with the run's recipe.json."""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import pytest

from data2vec_jax.model.config import tiny_config
from data2vec_jax.objective.ema import EMAConfig
from data2vec_jax.objective.execution import ExecutionPlan
from data2vec_jax.objective.loss import ObjectiveConfig
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.checkpoint import Checkpointer
from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer
from data2vec_jax.train import export
from data2vec_jax.train import state as train_state_lib
from data2vec_jax.train.recipe import RECIPE_FILE, recipe_to_dict

SEQ_LEN = 16
STEPS = (2, 4)


@pytest.fixture(scope="module")
def saved_workdir(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("run"))
  recipe = train_state_lib.Recipe(
    model=tiny_config(vocab_size=64, hidden_size=16, num_heads=2, intermediate_size=32),
    objective=ObjectiveConfig(kind="mlm", mask_id=63),
    ema=EMAConfig(),
    optimizer=OptimizerConfig(warmup_steps=1, max_steps=10),
  )
  tx = make_optimizer(recipe.optimizer)
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  with sharding_lib.activate(mesh):
    _, shardings = train_state_lib.state_shardings(recipe, tx, mesh, SEQ_LEN)
    state = train_state_lib.create_train_state(
      recipe, tx, jax.random.PRNGKey(0), mesh, SEQ_LEN, shardings
    )
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  for step in STEPS:
    saved = state.replace(step=jnp.asarray(step, jnp.int32))
    assert checkpointer.save(step, saved, {"epoch": 0, "batch": step}, force=True)
  checkpointer.close()
  plan = ExecutionPlan.for_objective(recipe.objective, SEQ_LEN)
  with open(os.path.join(workdir, RECIPE_FILE), "w") as f:
    json.dump(recipe_to_dict(recipe, SEQ_LEN, plan), f)
  return workdir


def copy_of(workdir: str, tmp_path) -> str:
  return shutil.copytree(workdir, str(tmp_path / "copy"))


def truncate_arrays(workdir: str, step: int) -> None:
  pattern = os.path.join(workdir, "checkpoints", str(step), "state", "**", "d", "*")
  for path in glob.glob(pattern, recursive=True):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def run_export(capsys, *args: str) -> tuple[int, str, str]:
  try:
    export.main(list(args))
    code = 0
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(
  saved_workdir, tmp_path, capsys, caplog
):
  workdir = copy_of(saved_workdir, tmp_path)
  truncate_arrays(workdir, 4)
  output = str(tmp_path / "model")
  code, out, err = run_export(capsys, "--workdir", workdir, "--output", output)
  assert code == 0, err
  assert f"exported step 2 (student) to {output}" in out
  assert "checkpoint step 4 is corrupt" in caplog.text
  assert "exporting step 2, the newest intact checkpoint (corrupt: step 4)" in caplog.text
  assert os.path.isfile(os.path.join(output, "config.json"))
  # Not moved: training may be running in the workdir.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))


@pytest.mark.parametrize(
  "case, message",
  [
    ("never_kept", "no checkpoint of step 3 in {ckpt}: the kept steps are 2, 4"),
    ("missing_workdir", "--workdir {workdir}/nothing does not exist"),
    ("file_workdir", "--workdir {workdir}/recipe.json is not a directory"),
    ("all_corrupt", "no intact checkpoint in {ckpt} (corrupt: steps 4, 2)"),
  ],
)
def test_export_failures_are_one_line(saved_workdir, tmp_path, capsys, case, message):
  workdir = copy_of(saved_workdir, tmp_path)
  given = {"missing_workdir": f"{workdir}/nothing", "file_workdir": f"{workdir}/recipe.json"}
  args = ["--workdir", given.get(case, workdir), "--output", str(tmp_path / "model")]
  if case == "never_kept":
    args += ["--step", "3"]
  if case == "all_corrupt":
    for step in STEPS:
      truncate_arrays(workdir, step)
  code, out, err = run_export(capsys, *args)
  assert code == 1
  expected = message.format(workdir=workdir, ckpt=os.path.join(workdir, "checkpoints"))
  assert err.strip().splitlines()[-1].startswith(f"export: error: {expected}"), err[-2000:]
  assert "Traceback" not in err
  assert not os.path.exists(tmp_path / "model")
