"""The held-out loss during pretraining (`validation` config section,
data2vec_jax/train/validation.py): fixed batches and masks, the training loss without the update
(equal to `objective.loss_fn` on the same batch, masks and teacher), logged by train.py without
changing the training losses, the same after a resume; bad settings refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from data2vec_jax.configs import demo, pretrain
from data2vec_jax.data.blocks import BlockDataset
from data2vec_jax.data.dictionary import VocabInfo
from data2vec_jax.data.pipeline import PipelineConfig
from data2vec_jax.data.sources import TokenSource
from data2vec_jax.data.training_input import (
  ValidationConfig,
  validation_batches,
  validation_config,
)
from data2vec_jax.objective import ema as ema_lib
from data2vec_jax.objective import loss as objective_lib
from data2vec_jax.objective.masking import MaskingConfig
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import make_optimizer
from data2vec_jax.train import state as train_state_lib
from data2vec_jax.train import validation as validation_lib
from data2vec_jax.train.recipe import ConfigError, plan_from_config, recipe_from_config
from data2vec_jax.train.run import validate_config
from tests.paths import REPO
from tests.xla_env import xla_flags

VOCAB = VocabInfo(vocab_size=512, mask_id=511)
# Tiny model and data, as tests/e2e/test_train.py runs the demo (2 layers x 32, batch 8 x 64).
TINY = {
  "model.num_layers": 2,
  "model.hidden_size": 32,
  "model.num_heads": 2,
  "model.intermediate_size": 64,
  "objective.average_top_k_layers": 2,
  "data.global_batch_size": 8,
  "data.tokens_per_sample": 64,
  "data.sentencepiece_vocab_size": 512,
  "train.log_every": 1,
  "train.checkpoint_every": 2,
  "train.collapse_check_after": 1_000_000,
  "train.plot": False,
  "train.export_model": False,
  # One compiled training step per run (packing only changes the speed).
  "execution.pack_tokens": False,
}


def tiny_config(**overrides):
  c = demo.get_config("steps=4")
  for key, value in {**TINY, **overrides}.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def test_defaults():
  # Off in the pretraining config (it needs a held-out path), on in the demo with a small cap.
  assert validation_config(pretrain.get_config()) == ValidationConfig(max_batches=50)
  assert not validation_config(pretrain.get_config()).enabled
  demo_validation = validation_config(demo.get_config())
  assert demo_validation.enabled and (demo_validation.every, demo_validation.max_batches) == (50, 4)
  validate_config(demo.get_config())
  # fairseq_bin with its valid prefix: valid.
  c = pretrain.get_config("model=tiny")
  c.data.path, c.validation.path, c.validation.every = "data/bin/train", "data/bin/valid", 1000
  validate_config(c)


def _with(base, **fields):
  c = base()
  for key, value in fields.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def _fairseq():
  c = pretrain.get_config("model=tiny")
  c.data.path = "data/bin/train"
  return c


def _tfds():
  c = pretrain.get_config("model=tiny")
  c.data.update(source="tfds", tfds_name="wiki40b/en")
  return c


@pytest.mark.parametrize(
  "config, message",
  [
    (lambda: _with(demo.get_config, validation__every=-1), "validation.every must be >= 0, got -1"),
    (
      lambda: _with(demo.get_config, validation__max_batches=-2),
      "validation.max_batches must be >= 0, got -2",
    ),
    (
      lambda: _with(_fairseq, validation__every=100),
      "validation.path must be set when validation.every > 0 and data.source='fairseq_bin' "
      "(the binarized valid prefix, e.g. data/bin/valid)",
    ),
    (
      lambda: _with(_tfds, validation__every=100),
      "validation.tfds_split must be set when validation.every > 0 and data.source='tfds'",
    ),
    (
      lambda: _with(_tfds, validation__path="x"),
      "validation.path is not read for data.source='tfds'",
    ),
    (
      lambda: _with(_fairseq, validation__tfds_split="validation"),
      "validation.tfds_split is only read for data.source='tfds'",
    ),
    (
      lambda: _with(demo.get_config, validation__evry=3),
      "unknown validation config keys: ['evry']",
    ),
  ],
)
def test_a_bad_validation_config_is_a_one_line_error(config, message):
  with pytest.raises(ConfigError) as e:
    validate_config(config())
  assert str(e.value).startswith(f"invalid config: {message}"), str(e.value)
  assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# Batches and the evaluation, in process
# ----------------------------------------------------------------------------------------------


def synthetic_blocks(config) -> BlockDataset:
  """~12 sequences of random sentences (ids 4..510, each line ending in </s>), 3 documents."""
  rng = np.random.default_rng(0)
  lines = []
  for doc in range(3):
    for _ in range(12):
      n = int(rng.integers(4, 20))
      lines.append(np.concatenate([rng.integers(4, VOCAB.mask_id, n - 1), [VOCAB.eos_id]]))
    lines.append(np.array([VOCAB.eos_id]))  # document separator
  source = TokenSource(
    tokens=np.concatenate(lines).astype(np.int32), sizes=np.array([len(x) for x in lines])
  )
  return BlockDataset(
    source,
    tokens_per_sample=config.data.tokens_per_sample,
    break_mode=config.data.break_mode,
    bos_id=VOCAB.bos_id,
  )


@pytest.fixture(scope="module")
def setup():
  """Tiny demo recipe and plan (gathered heads, pruned last blocks, 2 micro-batches) on a
  2 x 2 (data x fsdp) mesh; a state whose EMA teacher differs from the student; the held-out
  batches of the synthetic sequences (the last one partial)."""
  config = tiny_config(**{"execution.micro_batches": 2})
  recipe = recipe_from_config(config, VOCAB.vocab_size, VOCAB.mask_id)
  plan = plan_from_config(config, recipe)
  assert plan.gathers_head_positions and plan.prune_student_last_block
  blocks = synthetic_blocks(config)
  pipeline = PipelineConfig(
    tokens_per_sample=config.data.tokens_per_sample,
    break_mode=config.data.break_mode,
    global_batch_size=config.data.global_batch_size,
  )
  masking = MaskingConfig.from_dict(dict(config.masking))
  validation = ValidationConfig(every=2, max_batches=0, seed=5)
  batches = validation_batches(blocks, VOCAB, pipeline, masking, validation)
  assert len(batches) == 2 and 8 < len(blocks) < 16  # a full batch, then a partial one
  mesh = sharding_lib.make_mesh(2, 2, 1, devices=jax.devices()[:4])
  tx = make_optimizer(recipe.optimizer)
  _, shardings = train_state_lib.state_shardings(recipe, tx, mesh, plan.seq_len)
  state = train_state_lib.create_train_state(
    recipe, tx, jax.random.PRNGKey(0), mesh, plan.seq_len, shardings
  )
  # A teacher that is not the student: the evaluation must use the EMA parameters.
  ema = jax.tree_util.tree_map(lambda x: x * 1.25 + 0.01, state.ema_params)
  state = state.replace(ema_params=jax.device_put(ema, shardings.ema_params))
  eval_fn = validation_lib.make_eval_step(recipe, plan, mesh, shardings)
  with sharding_lib.activate(mesh):
    device_batches = [
      {k: jax.device_put(v, sharding_lib.batch_sharding(mesh)) for k, v in b.items()}
      for b in batches
    ]
    metrics = validation_lib.evaluate(eval_fn, state, device_batches)
  return dict(
    config=config,
    recipe=recipe,
    plan=plan,
    blocks=blocks,
    pipeline=pipeline,
    masking=masking,
    validation=validation,
    batches=batches,
    mesh=mesh,
    state=state,
    eval_fn=eval_fn,
    device_batches=device_batches,
    metrics=metrics,
  )


def test_batches_are_fixed_and_split_over_processes(setup):
  s = setup
  args = (s["blocks"], VOCAB, s["pipeline"], s["masking"])
  again = validation_batches(*args, s["validation"])
  for a, b in zip(s["batches"], again):
    assert set(a) == {"source", "target", "selected"}
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Sequences in file order (the training shuffle is not applied), masked with the validation
  # seed: another seed draws other masks on the same sequences.
  np.testing.assert_array_equal(
    s["batches"][0]["target"][0, : s["blocks"].sizes[0]], s["blocks"][0]
  )
  other = validation_batches(*args, ValidationConfig(every=2, seed=6))
  assert not np.array_equal(other[0]["selected"], s["batches"][0]["selected"])
  np.testing.assert_array_equal(other[0]["target"], s["batches"][0]["target"])
  # Two processes hold the two halves of each global batch.
  halves = [
    validation_batches(*args, s["validation"], process_index=p, process_count=2) for p in (0, 1)
  ]
  for b, (first, second) in enumerate(zip(*halves)):
    for key in first:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), s["batches"][b][key])
  # The partial last batch is filled with padding rows, which have no loss positions.
  last = s["batches"][-1]
  filler = len(s["blocks"]) - s["pipeline"].global_batch_size
  assert np.all(last["target"][filler:] == VOCAB.pad_id) and not last["selected"][filler:].any()
  # `max_batches` caps the split.
  assert len(validation_batches(*args, ValidationConfig(every=2, max_batches=1))) == 1


def test_evaluation_is_deterministic(setup):
  s = setup
  with sharding_lib.activate(s["mesh"]):
    again = validation_lib.evaluate(s["eval_fn"], s["state"], s["device_batches"])
  assert again == s["metrics"]  # identical floats, not merely close
  assert set(again) == {
    "loss",
    "target_var",
    "pred_var",
    "masked_fraction",
    "num_masked",
    "num_tokens",
  }


def test_evaluation_equals_the_reference_loss(setup):
  """`objective.loss_fn` (every position, one device) on the same batches, masks and teacher,
  summed over the batches and the micro-batch slices (rows j::k), normalised once."""
  s = setup
  recipe, state = s["recipe"], jax.device_get(s["state"])
  teacher = ema_lib.teacher_params(state.ema_params, state.params["encoder"], recipe.ema)
  reference = jax.jit(
    lambda batch: objective_lib.loss_fn(
      state.params, teacher, batch, None, config=recipe.model, objective=recipe.objective
    )[1]
  )
  k = s["plan"].micro_batches
  slices = [{key: v[j::k] for key, v in b.items()} for b in s["batches"] for j in range(k)]
  aux = [jax.device_get(reference(b)) for b in slices]
  count = sum(float(a["num_masked"]) for a in aux)
  tokens = sum(float(np.sum(b["target"] != VOCAB.pad_id)) for b in slices)
  expected = {
    "loss": sum(float(a["loss_sum"]) for a in aux) / count,
    "target_var": sum(float(a["target_var"] * a["num_masked"]) for a in aux) / count,
    "pred_var": sum(float(a["pred_var"] * a["num_masked"]) for a in aux) / count,
    "masked_fraction": count / tokens,
    "num_masked": count,
    "num_tokens": tokens,
  }
  got = s["metrics"]
  assert got["num_masked"] == count and got["num_tokens"] == tokens
  # The fast path (gathered heads, pruned last blocks, sharded over 4 devices) and the reference
  # sum the same float32 terms in another order. A sum of n terms then differs by about
  # eps32 * sqrt(n) relative (eps32 = 1.2e-7): the loss sums ~120 positions x 32 dims = ~4e3
  # terms -> ~8e-6, more than the 32-wide dot products of the 2 layers add; rtol 1e-5 bounds
  # that (measured: < 1e-7). atol: values near 0 (pred_var ~6e-3 here) in float32.
  eps32 = float(np.finfo(np.float32).eps)
  rtol, atol = 1e-5, 8 * eps32
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol, err_msg=key)
  # ... and not a mean of per-batch means: the partial last batch weighs by its positions.
  per_batch = [
    sum(float(a["loss_sum"]) for a in aux[i : i + k])
    / sum(float(a["num_masked"]) for a in aux[i : i + k])
    for i in range(0, len(aux), k)
  ]
  assert abs(np.mean(per_batch) - expected["loss"]) > 1e-4


def test_summarize_normalises_over_all_positions():
  per_batch = [
    {
      "loss_sum": [6.0, 2.0],
      "num_masked": [3.0, 1.0],
      "num_tokens": [10.0, 6.0],
      "pred_var": [1.0, 3.0],
    },
    {"loss_sum": [4.0], "num_masked": [4.0], "num_tokens": [4.0], "pred_var": [2.0]},
  ]
  out = validation_lib.summarize(per_batch)
  assert out["loss"] == 12.0 / 8.0
  assert out["pred_var"] == (3.0 + 3.0 + 8.0) / 8.0
  assert out["masked_fraction"] == 8.0 / 20.0
  assert "target_var" not in out


# ----------------------------------------------------------------------------------------------
# train.py end to end
# ----------------------------------------------------------------------------------------------


def train_cmd(workdir: str, *extra: str) -> list[str]:
  return [
    sys.executable,
    os.path.join(REPO, "train.py"),
    f"--config={os.path.join(REPO, 'configs', 'demo.py')}:steps=4",
    f"--workdir={workdir}",
    *(f"--config.{k}={v}" for k, v in TINY.items()),
    *extra,
  ]


def env() -> dict[str, str]:
  e = dict(os.environ)
  e.update(XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return e


def rows(workdir: str) -> dict[int, dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row for row in map(json.loads, f)}


def finish(proc: subprocess.Popen) -> str:
  _, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 0, stderr[-3000:]
  return stderr


def test_train_logs_validation_without_changing_training_and_resumes_exactly(tmp_path):
  on, off, resumed = (str(tmp_path / name) for name in ("on", "off", "resumed"))
  popen = lambda *cmd: subprocess.Popen(  # noqa: E731
    train_cmd(*cmd), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  # Both at once: each mostly compiles, on one core.
  run_on = popen(on, "--config.validation.every=2")
  run_off = popen(off, "--config.validation.every=0")
  finish(run_off)
  # A resume from the validation-off run's step-2 checkpoint, with validation on: its first
  # evaluation (step 4) must equal the uninterrupted run's.
  shutil.copytree(off, resumed, ignore=lambda d, names: ["4"] if d.endswith("checkpoints") else [])
  run_resumed = popen(resumed, "--config.validation.every=2")
  stderr_on = finish(run_on)
  stderr_resumed = finish(run_resumed)

  with_valid, without = rows(on), rows(off)
  assert sorted(with_valid) == sorted(without) == [1, 2, 3, 4]
  # Validation reads the state and changes nothing: the same training losses, bit for bit.
  for step in range(1, 5):
    assert with_valid[step]["loss"] == without[step]["loss"], step
    assert with_valid[step]["grad_norm"] == without[step]["grad_norm"], step
  # valid/* in the rows of steps 2 and 4 (every 2 steps, and the last), nowhere else.
  valid_keys = {k for row in with_valid.values() for k in row if k.startswith("valid/")}
  assert {"valid/loss", "valid/target_var", "valid/pred_var", "valid/masked_fraction"} <= valid_keys
  assert [s for s, row in with_valid.items() if "valid/loss" in row] == [2, 4]
  assert not any(k.startswith("valid/") for row in without.values() for k in row)
  assert (
    0.0 < with_valid[4]["valid/loss"] < 100
    and with_valid[2]["valid/loss"] != with_valid[4]["valid/loss"]
  )
  assert f"valid loss {with_valid[4]['valid/loss']:.4f}" in stderr_on
  summary = json.load(open(os.path.join(on, "summary.json")))
  assert summary["last_validation"]["step"] == 4
  assert summary["last_validation"]["loss"] == with_valid[4]["valid/loss"]
  assert json.load(open(os.path.join(off, "summary.json")))["last_validation"] is None
  # The resumed run: same training losses after the resume, same held-out metrics at step 4.
  assert "at step 2" in stderr_resumed
  after = rows(resumed)
  assert sorted(after) == [1, 2, 3, 4] and "valid/loss" not in after[2]
  for step in (3, 4):
    assert after[step]["loss"] == with_valid[step]["loss"], step
  for key in valid_keys:
    assert after[4][key] == with_valid[4][key], key
  # The demo's held-out documents (1 in 20 distinct ones) are not in its training text.
  docs = {}
  for split in ("train", "valid"):
    with open(os.path.join(on, "data", f"python_docs_{split}.txt")) as f:
      docs[split] = [d for d in f.read().split("\n\n") if d.strip()]
  assert len(docs["valid"]) == (len(docs["valid"]) + len(docs["train"])) // 20 > 0
  assert not set(docs["valid"]) & set(docs["train"])
