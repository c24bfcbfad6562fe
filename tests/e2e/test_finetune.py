"""Fine-tuning end to end on a tiny model and a learnable GLUE-format task written by the test.

* Every data source (GLUE TSV, TFDS, fairseq binarized) gives the same examples, so the three
  runs train identically, and each reaches a dev score that a random-label control does not.
* A run killed with SIGKILL mid-epoch and resumed reaches the same dev scores as an uninterrupted
  one; its outputs (results.json, model/) are complete.
* A grid of lrs x seeds runs under one workdir and its summary aggregates the runs' scores.
* Bad configs end in one line.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data2vec_jax.configs import finetune as finetune_config
from data2vec_jax.finetune.grid import run_finetuning
from data2vec_jax.finetune.grid_report import markdown, summarize
from data2vec_jax.finetune.loop import finetune_and_evaluate
from data2vec_jax.speed import compile_progress
from data2vec_jax.weights.pretrained import load_checkpoint
from tests.finetune_helpers import (  # noqa: E402
  glue_sst2_fairseq_bin,
  glue_sst2_tfds,
  sentiment_splits,
  session_compile_cache,
  tiny_model_dir,
  write_sst2_tsv,
)
from tests.paths import REPO

N_TRAIN, N_DEV = 512, 128
# 4 epochs of 16 updates: enough for the tiny model to learn the polarity words from scratch.
OVERRIDES = {
  "train.batch_size": 32,
  "train.eval_batch_size": 64,
  "optimizer.max_epochs": 4,
  "optimizer.lr": 2e-3,
  "optimizer.max_update": 64,
  "optimizer.warmup_updates": 4,
  "train.log_every": 1,
  "train.tensorboard": False,
  "model.dropout": 0.0,
  "model.attention_dropout": 0.0,
}


@pytest.fixture(scope="module", autouse=True)
def persistent_compilation_cache():
  """The runs here (in this process) build the same tiny model's update and evaluation again and
  again: with the session's persistent cache (tests/conftest.py) the runs after the first load
  them instead of compiling. Restored afterwards (the rest of the suite compiles as before)."""
  with session_compile_cache():
    yield


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("finetune")
  model = tiny_model_dir(str(root / "model"))
  return {
    "model": model,
    "glue": write_sst2_tsv(str(root / "glue"), n_train=N_TRAIN, n_dev=N_DEV),
    "glue_random": write_sst2_tsv(
      str(root / "glue_random"), n_train=N_TRAIN, n_dev=N_DEV, shuffle_labels=True
    ),
    "tfds": str(root / "tfds"),
    "tfds_name": glue_sst2_tfds(str(root / "tfds"), n_train=N_TRAIN, n_dev=N_DEV),
    "bin": glue_sst2_fairseq_bin(
      str(root / "bin"), os.path.join(model, "spm.model"), n_train=N_TRAIN, n_dev=N_DEV
    ),
  }


def make_config(assets, **overrides):
  c = finetune_config.get_config("task=sst2")
  c.init = assets["model"]
  c.data.path = assets["glue"]
  for key, value in {**OVERRIDES, **overrides}.items():
    *sections, field = key.split(".")
    node = c
    for section in sections:
      node = node[section]
    node[field] = value
  return c


@pytest.fixture(scope="module")
def tsv_run(assets, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tsv_run"))
  return workdir, finetune_and_evaluate(make_config(assets, **{"train.export_hf": True}), workdir)


# For the runs whose checks read only their dev scores: no model/ export, a train/ row per epoch.
SCORES_ONLY = {"train.export_model": False, "train.log_every": 16}


def dev_scores(results):
  return [(e["update"], e["score"]) for e in results["evaluations"]]


def test_every_source_learns_the_task_and_random_labels_do_not(assets, tsv_run, tmp_path):
  workdir, tsv = tsv_run
  assert tsv["stop_reason"] == "completed" and tsv["updates"] == 64
  assert [e["update"] for e in tsv["evaluations"]] == [16, 32, 48, 64]  # every epoch
  assert tsv["best"]["score"] >= 0.9, dev_scores(tsv)
  assert tsv["data"]["train"] == {
    "examples": 512,
    "too_long": 0,
    "skipped_rows": 0,
    "max_length": tsv["data"]["train"]["max_length"],
  }

  control = finetune_and_evaluate(
    make_config(assets, **SCORES_ONLY, **{"data.path": assets["glue_random"]}),
    str(tmp_path / "random"),
  )
  assert control["best"]["score"] <= 0.75, dev_scores(control)

  # TFDS and fairseq-binarized copies of the same task: the same examples and labels in the same
  # order, hence the same training, evaluation after evaluation.
  tfds = make_config(
    assets,
    **SCORES_ONLY,
    **{
      "data.source": "tfds",
      "data.tfds_data_dir": assets["tfds"],
      "data.tfds_name": assets["tfds_name"],
    },
  )
  fairseq = make_config(
    assets,
    **SCORES_ONLY,
    **{"data.source": "fairseq_bin", "data.path": assets["bin"], "tokenizer.kind": "none"},
  )
  for name, config in (("tfds", tfds), ("fairseq_bin", fairseq)):
    results = finetune_and_evaluate(config, str(tmp_path / name))
    assert dev_scores(results) == dev_scores(tsv), name


def test_outputs_model_dir_and_eval_only(assets, tsv_run, tmp_path):
  workdir, tsv = tsv_run
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["score"] == tsv["score"]
  # The majority-class baseline: the train set's most common label, for every dev example.
  splits = sentiment_splits(N_TRAIN, N_DEV)
  train_labels, dev_labels = splits["train"][1], np.asarray(splits["validation"][1])
  majority = int(np.bincount(np.asarray(train_labels)).argmax())
  assert tsv["majority_class"]["label"] == ["negative", "positive"][majority]
  assert tsv["majority_class"]["score"] == pytest.approx(np.mean(dev_labels == majority), abs=1e-12)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "dev/score" in r] == [16, 32, 48, 64]
  assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 65))
  # model/ holds the best evaluation's weights, with the classifier and its label names.
  loaded = load_checkpoint(os.path.join(workdir, "model"))
  assert loaded.metadata["label_names"] == ["negative", "positive"]
  assert loaded.metadata["update"] == tsv["best"]["update"]
  with open(os.path.join(workdir, "hf", "config.json")) as f:  # and as an HF classifier
    hf_config = json.load(f)
  assert hf_config["architectures"] == ["Data2VecTextForSequenceClassification"]
  assert hf_config["id2label"] == {"0": "negative", "1": "positive"}
  assert hf_config["finetuning_task"] == "sst2"
  # Scoring that directory (eval_only, its own classifier) reproduces the best dev score.
  config = make_config(assets, init=os.path.join(workdir, "model"), eval_only=True)
  config.tokenizer.kind = "sentencepiece"
  config.tokenizer.sentencepiece_model = os.path.join(assets["model"], "spm.model")
  again = finetune_and_evaluate(config, str(tmp_path / "eval_only"))
  assert again["evaluations"][0]["score"] == pytest.approx(tsv["best"]["score"], abs=1e-12)


def test_a_finished_run_says_so_and_keeps_its_results(assets, tsv_run, caplog):
  workdir, tsv = tsv_run
  with caplog.at_level(logging.INFO):
    again = finetune_and_evaluate(make_config(assets, **{"train.export_hf": True}), workdir)
  assert f"{workdir}: already complete at update 64/64, nothing to do" in caplog.text
  assert "compiling" not in caplog.text
  assert again == json.load(open(os.path.join(workdir, "results.json"))) == tsv


def finetune_cmd(assets, workdir, *extra):
  c = make_config(assets)
  flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  return [
    sys.executable,
    os.path.join(REPO, "finetune.py"),
    "--config",
    os.path.join(REPO, "configs", "finetune.py") + ":task=sst2",
    f"--workdir={workdir}",
    f"--config.init={c.init}",
    f"--config.data.path={c.data.path}",
    *flags,
    *extra,
  ]


def checkpoint_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def test_kill_mid_epoch_and_resume_reaches_the_same_dev_scores(assets, tsv_run, tmp_path):
  _, reference = tsv_run
  workdir = str(tmp_path / "killed")
  env = dict(os.environ, PYTHONPATH=REPO)
  cmd = finetune_cmd(assets, workdir, "--config.train.checkpoint_every=5")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and not [s for s in checkpoint_steps(workdir) if s % 16]:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = checkpoint_steps(workdir)
  assert saved and saved[-1] < 64, ("the run finished before it could be killed", saved)
  resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from {os.path.join(workdir, 'checkpoints')} at update" in resumed.stderr
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert dev_scores(results) == dev_scores(reference)
  assert results["best"]["splits"] == reference["best"]["splits"]


def test_grid_runs_and_summarises(assets, tmp_path, caplog, monkeypatch):
  monkeypatch.setattr(compile_progress, "QUIET_S", 0.0)  # every compile says so, however short
  config = make_config(
    assets, **SCORES_ONLY, **{"optimizer.max_epochs": 1, "optimizer.max_update": 16}
  )
  config.grid.seeds = (1, 2)
  workdir = str(tmp_path / "grid")
  with caplog.at_level(logging.INFO):
    summary = run_finetuning(config, workdir)
  # Each new batch shape says it compiles (the update once per length bucket, the evaluation).
  assert "compiling the fine-tuning update for 1 shape(s): 32 x " in caplog.text
  assert "compiling the dev evaluation for 1 shape(s): 64 x " in caplog.text
  caplog.clear()
  scores = []
  for seed in (1, 2):
    with open(os.path.join(workdir, "sst2", f"lr0.002_seed{seed}", "results.json")) as f:
      scores.append(json.load(f)["score"])
  cell = summary["tasks"]["sst2"]["0.002"]["score"]
  assert cell["runs"] == scores and cell["mean"] == pytest.approx(np.mean(scores), abs=1e-12)
  text = open(os.path.join(workdir, "summary.md")).read()
  # One task at one lr: its table, and no chosen-lr table repeating it (nothing to choose).
  assert text.count("| sst2 | ") == 1
  assert "Chosen lrs" not in text and "Partial" not in text
  assert "majority class (the train set's most common label" in text
  # Re-running keeps the finished runs (no retraining) and rewrites the same summary.
  with caplog.at_level(logging.INFO):
    again = run_finetuning(copy.deepcopy(config), workdir)
  assert again["tasks"] == summary["tasks"]
  assert "already complete, all 2 runs finished before; nothing to do" in caplog.text


def fake_run(workdir, task, lr, seed, score, mm=None):
  """A finished run's results.json as the loop writes it (only the fields the summary reads)."""
  splits = {"validation_matched" if task == "mnli" else "validation": {"score": score}}
  if mm is not None:
    splits["validation_mismatched"] = {"score": mm}
  path = os.path.join(workdir, task, f"lr{lr:g}_seed{seed}")
  os.makedirs(path)
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(
      {
        "task": task,
        "lr": lr,
        "seed": seed,
        "score": score,
        "stop_reason": "completed",
        "reported": {"splits": splits},
      },
      f,
    )


def test_summary_mean_median_lr_choice_and_glue_average(tmp_path):
  rng = np.random.default_rng(0)
  workdir = str(tmp_path)
  scores = {}
  for task in ("mnli", "qnli", "rte", "mrpc", "qqp", "stsb", "cola", "sst2"):
    for lr in (1e-5, 2e-5):
      for seed in (1, 2, 3):
        s = float(rng.uniform(0.5, 0.95))
        scores[task, lr, seed] = s
        fake_run(workdir, task, lr, seed, s, mm=s - 0.01 if task == "mnli" else None)
  tasks = sorted({t for t, _, _ in scores})
  mean = {
    (t, lr): np.mean([scores[t, lr, s] for s in (1, 2, 3)]) for t in tasks for lr in (1e-5, 2e-5)
  }
  median = {
    (t, lr): np.median([scores[t, lr, s] for s in (1, 2, 3)]) for t in tasks for lr in (1e-5, 2e-5)
  }
  for lr_choice in ("global", "per_task"):
    summary = summarize(workdir, lr_choice)
    for statistic, table in (("mean", mean), ("median", median)):
      chosen = summary["chosen"][statistic]
      if lr_choice == "global":
        lr = max((1e-5, 2e-5), key=lambda x: np.mean([table[t, x] for t in tasks]))
        expected_lrs = {t: lr for t in tasks}
      else:
        expected_lrs = {t: max((1e-5, 2e-5), key=lambda x: table[t, x]) for t in tasks}
      assert chosen["lrs"] == {t: f"{lr:g}" for t, lr in expected_lrs.items()}
      expected = {t: table[t, expected_lrs[t]] for t in tasks}
      assert chosen["average"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
      assert chosen["average_without_rte"] == pytest.approx(
        np.mean([v for t, v in expected.items() if t != "rte"]), abs=1e-12
      )
      assert chosen["mnli_mismatched"] == pytest.approx(expected["mnli"] - 0.01, abs=1e-9)
  assert "GLUE Avg-8" in markdown(summarize(workdir))


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.data.source=csv", "data.source='csv'; expected one of"),
    ("--config.train.report=median", "train.report='median'; expected one of ['best', 'last']"),
    ("--config.init=/no/such/model", "init: config.init=/no/such/model: no such file"),
    ("--config.train.batch_sise=3", "unknown config field 'train.batch_sise'"),
  ],
)
def test_a_bad_config_is_one_line(assets, tmp_path, override, message):
  out = subprocess.run(
    finetune_cmd(assets, str(tmp_path / "w"), override),
    env=dict(os.environ, PYTHONPATH=REPO),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode in (1, 2)
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("finetune.py: error: ") and message in last, out.stderr[-2000:]
  assert "Traceback" not in out.stderr


def test_the_demo_compares_pretrained_with_random_weights(assets, tmp_path):
  """configs/finetune_demo.py: the offline task (python_topics) from the init's weights and from
  random ones, side by side in summary.md and dev_curves.png."""
  from data2vec_jax.configs import finetune_demo

  config = finetune_demo.get_config(f"init={assets['model']}")
  config.optimizer.max_epochs = 1
  # A few updates (one evaluation at the last) suffice for what is checked here, and meet fewer
  # length buckets, hence fewer compiles, than the whole epoch.
  config.optimizer.max_update = 4
  config.optimizer.warmup_updates = 1
  config.grid.seeds = (1,)
  config.train.tensorboard = False
  config.data.eval_too_long = "truncate"  # the tiny model has 64 positions
  workdir = str(tmp_path / "demo")
  summary = run_finetuning(config, workdir)
  assert set(summary["tasks"]) == set(summary["from_scratch"]["tasks"]) == {"python_topics"}
  runs = {}
  for name in ("lr0.001_seed1", "lr0.001_seed1_scratch"):
    with open(os.path.join(workdir, "python_topics", name, "results.json")) as f:
      runs[name] = json.load(f)
  assert runs["lr0.001_seed1"]["from_scratch"] is False
  assert runs["lr0.001_seed1_scratch"]["from_scratch"] is True
  assert summary["tasks"]["python_topics"]["0.001"]["score"]["runs"] == [
    runs["lr0.001_seed1"]["score"]
  ]
  text = open(os.path.join(workdir, "summary.md")).read()
  assert "from pretrained weights" in text and "from random weights" in text
  assert "| python_topics | 0.001 | " in text.split("### Runs")[0]  # side by side first
  assert os.path.getsize(os.path.join(workdir, "dev_curves.png")) > 1000
