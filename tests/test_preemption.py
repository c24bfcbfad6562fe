"""SIGTERM (a preemption notice) is acted on at the step boundary after it arrives: a notice that
comes while the loop waits for step k's results saves step k and stops, without training step
k+1 first (it used to be read only right after a step was dispatched, so it stopped a step or
two late when steps are fast). In process, on the demo config shrunk to a tiny model, with the
signal sent from inside the wait."""

from __future__ import annotations

import json
import os
import signal

import jax
import pytest

from data2vec_jax import cli
from data2vec_jax.train import loop as loop_lib
from data2vec_jax.train import preemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = (
  "--config.model.num_layers=2",
  "--config.model.hidden_size=32",
  "--config.model.num_heads=2",
  "--config.model.intermediate_size=64",
  "--config.objective.average_top_k_layers=2",
  "--config.data.global_batch_size=8",
  "--config.data.tokens_per_sample=64",
  "--config.data.sentencepiece_vocab_size=512",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=100",
  "--config.train.plot=False",
  "--config.train.tensorboard=False",
  "--config.train.compilation_cache=none",
  "--config.train.precompile_steps=0",
  "--config.execution.pack_tokens=False",
)
SIGNAL_AT = 3


@pytest.mark.slow
def test_a_notice_during_a_steps_wait_saves_that_step(tmp_path, monkeypatch):
  config = cli.load_config(os.path.join(REPO, "configs", "demo.py") + ":steps=20", TINY)
  real_device_get = jax.device_get
  waits = []

  def device_get(tree):
    out = real_device_get(tree)
    if isinstance(tree, list) and tree:  # the loop fetching the steps' metrics
      waits.append(len(tree))
      if len(waits) == SIGNAL_AT:  # log_every=1: the wait for step SIGNAL_AT
        os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(jax, "device_get", device_get)
  workdir = str(tmp_path / "run")
  summary = loop_lib.train_and_evaluate(config, workdir)
  assert summary["stop_reason"] == "preempted"
  assert summary["final_step"] == SIGNAL_AT
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved[-1] == SIGNAL_AT
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert max(json.loads(line)["step"] for line in f) <= SIGNAL_AT


def test_any_process_is_the_flag_itself_on_one_process():
  assert preemption.any_process(True) is True
  assert preemption.any_process(False) is False
