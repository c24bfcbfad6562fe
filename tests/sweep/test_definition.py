"""Sweep definitions, cells and the results table, without running a stage: every shipped
definition makes cells whose two configs parse as the launchers would parse them; bad definitions
fail in one line; the table's per-task means, spreads over seeds and GLUE average follow from the
runs' scores; --list and --cell speak for cluster schedulers."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from data2vec_jax.configs.sweeps import demo_top_k, table4, top_k
from data2vec_jax.finetune import recipes
from data2vec_jax.sweep import definition, paper, runner, table
from data2vec_jax.sweep.definition import SweepError
from tests.paths import REPO
from tests.xla_env import xla_flags

SHIPPED = sorted(
  os.path.basename(p)[:-3]
  for p in glob.glob(os.path.join(REPO, "configs", "sweeps", "*.py"))
  if not p.endswith(("__init__.py", "glue.py"))
)


def load(name: str, arg: str = "") -> ml_collections.ConfigDict:
  import importlib

  return importlib.import_module(f"configs.sweeps.{name}").get_config(arg or None)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_sweep_makes_cells_whose_configs_parse(name, tmp_path):
  sweep = load(name)
  cells = definition.cells(sweep, str(tmp_path))
  assert [c.value for c in cells] == [str(v) for v in sweep.axis_values]
  configs = runner.StageConfigs(cells)
  for cell in cells:
    pretrain = configs.get(cell, "pretrain")
    finetune = configs.get(cell, "finetune")
    assert finetune.init == cell.pretrain_dir
    assert os.path.dirname(cell.directory) == os.path.join(str(tmp_path), "cells")
    # The axis reached the config: each cell's pretraining differs from the others'.
    assert cell.pretrain_flags[1] == f"--workdir={cell.pretrain_dir}"
    assert (
      pretrain.to_json() != configs.get(cells[(cell.index + 1) % len(cells)], "pretrain").to_json()
    )


def test_axis_as_config_argument_or_as_field(tmp_path):
  by_argument = definition.cells(top_k.get_config("values=1;3,steps=1000"), str(tmp_path))
  assert by_argument[1].name == "k=3"
  assert (
    by_argument[1]
    .pretrain_flags[0]
    .endswith("configs/ablations/top_k.py:model=base,recipe=release,k=3")
  )
  config = definition.load_stage_config(by_argument[1].pretrain_flags, "test")
  assert config.objective.average_top_k_layers == 3
  assert config.train.num_steps == config.optimizer.max_steps == 1000

  by_field = definition.cells(demo_top_k.get_config("values=1;2"), str(tmp_path))
  assert by_field[1].name == "K=2"
  assert "--config.objective.average_top_k_layers=2" in by_field[1].pretrain_flags
  config = definition.load_stage_config(by_field[1].pretrain_flags, "test")
  assert config.objective.average_top_k_layers == 2 and config.model.num_layers == 4


def test_finetuning_protocol_arguments_reach_the_grid(tmp_path):
  sweep = top_k.get_config("glue=/data/glue,tasks=rte;mrpc,grid=none")
  cell = definition.cells(sweep, str(tmp_path))[0]
  config = definition.load_stage_config(cell.finetune_flags, "test")
  assert config.data.path == "/data/glue"
  assert tuple(config.grid.tasks) == ("rte", "mrpc") and not config.grid.lrs
  assert runner.finetuning_progress(cell, config) == (0, 2)
  paper_grid = definition.load_stage_config(
    definition.cells(top_k.get_config(), str(tmp_path))[0].finetune_flags, "test"
  )
  assert runner.finetuning_progress(cell, paper_grid) == (0, 8 * 4 * 5)  # the paper's grid


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda c: setattr(c, "axis_values", ("1", "1")), "repeat a value"),
    (lambda c: setattr(c, "axis_values", ()), "has no values"),
    (lambda c: setattr(c, "axis", "k; rm"), "neither a config argument"),
    (lambda c: setattr(c.pretrain, "overrides", ("--config.x=1",)), "is not 'field=value'"),
    (lambda c: setattr(c.pretrain, "config", "configs/nope.py"), "no config file"),
    (lambda c: c.paper_rows.update({"1": "BERT"}), "the paper's rows are"),
    (lambda c: c.paper_rows.update({"13": "data2vec"}), "not in values"),
  ],
)
def test_bad_definitions_are_one_line_errors(change, message, tmp_path):
  sweep = top_k.get_config()
  change(sweep)
  with pytest.raises(SweepError, match=message):
    definition.cells(sweep, str(tmp_path))


@pytest.mark.parametrize(
  "arg, message",
  [
    ("values=0", r"cell 0 \(k=0\): the pretrain config: .*k=0 must be in \[1, 12\]"),
    ("tasks=rte;nope", r"cell 0 \(k=1\): the finetune config: grid.tasks has \['nope'\]"),
  ],
)
def test_a_cell_whose_config_cannot_parse_fails_before_anything_runs(arg, message, tmp_path):
  cells = definition.cells(top_k.get_config(arg), str(tmp_path))
  with pytest.raises(SweepError, match=message):
    runner.StageConfigs(cells)


# ------------------------------------------------------------------------------------------------
# The table, from runs written by the test


def write_run(finetune_dir: str, task: str, lr: float, seed: int, score: float) -> None:
  run = os.path.join(finetune_dir, task, f"lr{lr:g}_seed{seed}")
  os.makedirs(run, exist_ok=True)
  reported = {"update": 10, "splits": {"validation": {"score": score}}}
  with open(os.path.join(run, "results.json"), "w") as f:
    json.dump(
      {
        "task": task,
        "lr": lr,
        "seed": seed,
        "from_scratch": False,
        "stop_reason": "completed",
        "score": score,
        "reported": reported,
        "evaluations": [],
      },
      f,
    )


def finish_pretraining(cell, config) -> None:
  os.makedirs(cell.pretrain_dir, exist_ok=True)
  with open(os.path.join(cell.pretrain_dir, "summary.json"), "w") as f:
    json.dump({"stop_reason": "completed", "final_step": int(config.train.num_steps)}, f)


def test_table4_rows_averages_spreads_and_the_paper(tmp_path):
  """Three cells: 'paper' with the full grid (8 tasks x 2 lrs x 3 seeds), 'release' with one
  task's runs only (pretrained), 'roberta' not started."""
  sweep = table4.get_config("tasks=" + ";".join(recipes.PAPER_TASKS))
  sweep.finetune.overrides = sweep.finetune.overrides + (
    "grid.lrs=(1e-5, 2e-5)",
    "grid.seeds=(1, 2, 3)",
  )
  workdir = str(tmp_path / "sweep")
  cells = definition.cells(sweep, workdir)
  configs = runner.StageConfigs(cells)
  rng = np.random.default_rng(0)
  scores = {}  # (task, lr, seed) -> score of the 'paper' cell
  for task in recipes.PAPER_TASKS:
    for lr in (1e-5, 2e-5):
      for seed in (1, 2, 3):
        # lr 2e-5 is better on average, so the global lr choice picks it for every task.
        scores[task, lr, seed] = float(rng.uniform(0.5, 0.9) + (0.05 if lr == 2e-5 else 0.0))
        write_run(cells[0].finetune_dir, task, lr, seed, scores[task, lr, seed])
  finish_pretraining(cells[0], configs.get(cells[0], "pretrain"))
  finish_pretraining(cells[1], configs.get(cells[1], "pretrain"))
  write_run(cells[1].finetune_dir, "rte", 1e-5, 1, 0.6)

  rows = table.write_tables(sweep, cells, configs, workdir)
  paper_row, release, roberta = rows
  assert paper_row["status"] == "done" and paper_row["finetune_runs"] == "48/48"
  assert release["status"] == "fine-tuning 1/48" and roberta["status"] == "not started"
  for task in recipes.PAPER_TASKS:
    runs = [scores[task, 2e-5, s] for s in (1, 2, 3)]
    assert paper_row["tasks"][task]["mean"] == pytest.approx(100 * np.mean(runs), rel=1e-12)
    assert paper_row["tasks"][task]["std"] == pytest.approx(100 * np.std(runs, ddof=1), rel=1e-12)
  per_seed = [np.mean([scores[t, 2e-5, s] for t in recipes.PAPER_TASKS]) for s in (1, 2, 3)]
  assert paper_row["average_kind"] == "glue_avg8"
  assert paper_row["average"] == pytest.approx(100 * np.mean(per_seed), rel=1e-12)
  assert paper_row["average_std"] == pytest.approx(100 * np.std(per_seed, ddof=1), rel=1e-12)
  assert paper_row["paper"]["average"] == paper.TABLE4["data2vec"]["average"] == 82.7
  assert release["tasks"]["rte"]["mean"] == pytest.approx(60.0) and release["seeds"] == 1
  assert release["average_std"] is None and roberta["average"] is None

  with open(os.path.join(workdir, "results.csv")) as f:
    records = list(csv.DictReader(f))
  assert [r["recipe"] for r in records] == ["paper", "release", "roberta"]
  assert float(records[0]["average"]) == paper_row["average"]
  assert float(records[0]["paper_average"]) == 82.7 and records[2]["paper_average"] == "82.5"
  assert records[0]["lrs"].count("2e-05") == 8
  with open(os.path.join(workdir, "results.md")) as f:
    text = f.read()
  header = (
    "| recipe | status | mnli | qnli | rte | mrpc | qqp | stsb | cola | sst2 | GLUE Avg-8 | paper |"
  )
  assert header in text
  assert (
    f"{paper_row['average']:.1f} ± {paper_row['average_std']:.1f} (3 seeds) | 82.7 (data2vec) |"
    in text
  )
  assert "| release | fine-tuning 1/48 | " in text and "| roberta | not started |" in text
  assert (
    "| paper | data2vec | 83.2 | 90.9 | 67.0 | 90.2 | 89.1 | 87.2 | 62.2 | 91.8 | 82.7 |" in text
  )
  assert os.path.getsize(os.path.join(workdir, "axis_plot.png")) > 1000


def test_a_failed_stage_shows_in_the_table(tmp_path):
  sweep = demo_top_k.get_config("values=1")
  cells = definition.cells(sweep, str(tmp_path))
  configs = runner.StageConfigs(cells)
  os.makedirs(cells[0].directory)
  runner._write_status(cells[0], "pretrain", "failed", 1)
  (row,) = table.write_tables(sweep, cells, configs, str(tmp_path))
  assert row["status"] == "failed (pretrain)"


# ------------------------------------------------------------------------------------------------
# The command line


def sweep_cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run(
    [sys.executable, os.path.join(REPO, "sweep.py"), *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_list_prints_one_runnable_command_per_cell(tmp_path):
  out = sweep_cli(
    "--config=configs/sweeps/top_k.py:values=1;2;3",
    f"--workdir={tmp_path}",
    "--list",
    "--config.pretrain.overrides=('data.path=x',)",
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert line.endswith(f"--cell={i}") and f"--workdir={tmp_path}" in line
    # This interpreter and absolute paths, run from the directory the paths were given in: the
    # line runs from a job script's directory.
    assert line.startswith(f"cd {REPO} && {sys.executable} {os.path.join(REPO, 'sweep.py')} "), line
    assert f"--config={os.path.join(REPO, 'configs', 'sweeps', 'top_k.py')}:" in line, line
    assert (
      "'--config.pretrain.overrides=('\"'\"'data.path=x'\"'\"',)'" in line
    )  # quoted for a shell
  assert not os.path.exists(os.path.join(str(tmp_path), "cells"))  # listing runs nothing


@pytest.mark.parametrize(
  "args, message",
  [
    (["--cell=3"], "--cell=3: the sweep has cells 0..2"),
    (["--config.pretrain.overrides=('foo.bar=1',)"], "unknown config field 'foo.bar'"),
    (["--cell=0", "--stage=finetune"], "k=1: its pretraining has not finished"),
  ],
)
def test_cli_errors_are_one_line(args, message, tmp_path):
  out = sweep_cli("--config=configs/sweeps/top_k.py:values=1;2;3", f"--workdir={tmp_path}", *args)
  assert out.returncode == 1, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("sweep.py: error: ") and message in last, out.stderr[-2000:]
  assert "Traceback" not in out.stderr


def test_aggregate_reads_whatever_cells_exist(tmp_path):
  out = sweep_cli("--config=configs/sweeps/demo_top_k.py", f"--workdir={tmp_path}", "--aggregate")
  assert out.returncode == 0, out.stderr
  assert "| 1 | not started |" in out.stdout and "| 4 | not started |" in out.stdout
  rows = list(csv.reader(io.StringIO(open(os.path.join(str(tmp_path), "results.csv")).read())))
  assert rows[0][:3] == ["cell", "K", "status"] and len(rows) == 4
