"""The fine-tuning pieces below the loop: pair encoding and over-long examples, fairseq's batch
order, the recipe's update counts, the head init, and the update itself (padding rows change
nothing; a sharded mesh computes the same update; bf16 compute stays close)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data2vec_jax.configs import finetune as finetune_config
from data2vec_jax.finetune import batches as batches_lib
from data2vec_jax.finetune.encoding import EncodedSplit, encode_split, join_pair
from data2vec_jax.finetune.examples import LabeledSplit
from data2vec_jax.finetune.model import SequenceClassifier, sentence_loss
from data2vec_jax.finetune.settings import resolve_settings
from data2vec_jax.finetune.state import create_state, init_head, state_shardings
from data2vec_jax.finetune.step import make_train_step, per_example_loss
from data2vec_jax.model.config import tiny_config
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer

CONFIG = tiny_config(
  vocab_size=64,
  hidden_size=32,
  num_heads=4,
  intermediate_size=64,
  max_positions=34,
  dropout=0.0,
  attention_dropout=0.0,
)


class FakeTokenizer:
  """Each character's code point mod 50, + 5 (ids stay clear of the specials)."""

  def encode_batch(self, texts):
    return [np.asarray([5 + ord(c) % 50 for c in t], np.int32) for t in texts]


def split_of(texts_a, texts_b=None, labels=None, names=("no", "yes")):
  columns = (tuple(texts_a),) if texts_b is None else (tuple(texts_a), tuple(texts_b))
  labels = np.arange(len(texts_a)) % 2 if labels is None else np.asarray(labels)
  return LabeledSplit("t", "train", columns, labels, label_names=names)


# -- encoding -------------------------------------------------------------------------------------


def test_pairs_are_encoded_as_roberta_does():
  # fairseq: input0 = <s> A </s>, input1 = </s> B </s>, concatenated (= HF's RobertaTokenizer).
  ids = join_pair([np.int32([7, 8]), np.int32([9])], bos_id=0, eos_id=2)
  assert ids.tolist() == [0, 7, 8, 2, 2, 9, 2]
  assert join_pair([np.int32([7])], bos_id=0, eos_id=2).tolist() == [0, 7, 2]
  encoded = encode_split(
    split_of(["ab", "c"], ["d", "ef"]),
    FakeTokenizer(),
    bos_id=0,
    eos_id=2,
    max_length=10,
    too_long="error",
  )
  a, b, c, d, e, f = (5 + ord(x) % 50 for x in "abcdef")
  assert [t.tolist() for t in encoded.tokens] == [[0, a, b, 2, 2, d, 2], [0, c, 2, 2, e, f, 2]]
  assert encoded.labels.dtype == np.int32 and encoded.num_too_long == 0


def test_over_long_examples_are_dropped_truncated_or_refused_and_counted():
  split = split_of(["a" * 10, "b", "c" * 3], ["x" * 2, "y", "z"])  # lengths 16, 6, 8
  kwargs = dict(bos_id=0, eos_id=2, max_length=9)
  dropped = encode_split(split, FakeTokenizer(), too_long="drop", **kwargs)
  assert dropped.rows.tolist() == [1, 2] and dropped.num_too_long == 1
  cut = encode_split(split, FakeTokenizer(), too_long="truncate", **kwargs)
  assert cut.num_too_long == 1 and [len(t) for t in cut.tokens] == [9, 6, 8]
  # longest first: A loses tokens until the pair fits (A 3 tokens, B its 2)
  a, x = 5 + ord("a") % 50, 5 + ord("x") % 50
  assert cut.tokens[0].tolist() == [0, a, a, a, 2, 2, x, x, 2]
  with pytest.raises(
    ValueError, match=r"t/train example 0 \(0-based\): 16 tokens, over the model's 9 positions"
  ):
    encode_split(split, FakeTokenizer(), too_long="error", **kwargs)
  regression = LabeledSplit("s", "train", (("ab",),), np.float32([4.0]))
  scaled = encode_split(regression, FakeTokenizer(), too_long="error", label_scale=0.2, **kwargs)
  assert scaled.labels.dtype == np.float32 and scaled.labels.tolist() == pytest.approx([0.8])


# -- batches --------------------------------------------------------------------------------------


def encoded(n, lengths=None):
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 30, n) if lengths is None else lengths
  tokens = [np.full(int(k), 7, np.int32) for k in lengths]
  return EncodedSplit(
    "t", "train", tokens, np.arange(n, dtype=np.int32) % 2, np.arange(n), 0, 0, ("a", "b")
  )


def test_batch_order_is_fairseqs_and_a_function_of_the_update():
  split = encoded(37)
  batches = batches_lib.TrainBatches(split, 8, seed=3, pad_id=1, max_length=32)
  assert batches.steps_per_epoch == 5
  epochs = []
  for epoch in range(3):
    rows = [batches.batch(epoch * 5 + i)["rows"] for i in range(5)]
    seen = np.concatenate(rows)
    assert sorted(seen[seen >= 0].tolist()) == list(range(37))  # each example once per epoch
    assert sum(r.tolist().count(-1) for r in rows) == 3  # one padded batch: 40 - 37 rows
    epochs.append([frozenset(r[r >= 0].tolist()) for r in rows])
  # fairseq: the batches are cut once; each epoch visits them in another order.
  assert set(epochs[0]) == set(epochs[1]) == set(epochs[2])
  assert epochs[0] != epochs[1]
  # A resumed run (a new object) gets update 11's batch without replaying the others.
  again = batches_lib.TrainBatches(split, 8, seed=3, pad_id=1, max_length=32).batch(11)
  for key, value in batches.batch(11).items():
    np.testing.assert_array_equal(value, again[key])
  padded = batches.batch(0)
  assert padded["input_ids"].shape[1] in (16, 32)
  assert padded["weights"].tolist() == [float(r >= 0) for r in padded["rows"]]


def test_length_buckets():
  assert [batches_lib.length_bucket(n, 130) for n in (1, 16, 17, 33, 100, 129)] == [
    16,
    16,
    32,
    64,
    128,
    130,
  ]


# -- the recipe's update counts ---------------------------------------------------------------------


@pytest.mark.parametrize(
  "task, train_size, total, lr_end_fraction",
  [
    ("rte", 2490, 1560, None),  # 10 epochs end first: the lr stops at ~25% of its peak
    ("cola", 8551, 5336, 0.0),  # max_update ends first (5350 nominal updates)
    ("stsb", 5749, 3598, 0.0),
  ],
)
def test_recipe_update_counts(task, train_size, total, lr_end_fraction):
  c = finetune_config.get_config(f"task={task}")
  c.init, c.data.path = "/m", "/d"
  settings = resolve_settings(c).with_data(train_size)
  assert settings.total_updates == total
  recipe = finetune_config.recipes.GLUE_RECIPES[task]
  assert (settings.lr, settings.batch_size, settings.max_update) == (
    recipe.lr,
    recipe.batch_size,
    recipe.max_update,
  )
  if task == "rte":
    frac = 1 - (total - recipe.warmup_updates) / (recipe.max_update - recipe.warmup_updates)
    assert 0.2 < frac < 0.3
  assert settings.regression_scale == (0.2 if task == "stsb" else 1.0)


def test_generic_task_defaults_and_bad_values():
  c = finetune_config.get_config("task=my_task")
  c.init, c.data.path = "/m", "/d"
  settings = resolve_settings(c).with_data(1000)
  assert settings.source == "generic" and settings.lr == 2e-5 and settings.batch_size == 32
  assert settings.max_update == settings.total_updates == 10 * 32
  assert settings.warmup_updates == int(0.06 * 320)
  c.train.select_by = "loss"
  with pytest.raises(ValueError, match=r"train.select_by='loss'; expected one of"):
    resolve_settings(c)


def test_the_settings_hold_everything_the_run_reads():
  """Resolved once (issue 26): the loop reads these, never the config."""
  c = finetune_config.get_config("task=rte")
  c.init, c.data.path = "/m", "/d"
  c.train.log_every, c.model.scan_unroll, c.mesh.data = 0, "2", 4
  settings = resolve_settings(c).with_data(2490)
  assert settings.init.path == "/m" and not settings.init.eval_only
  assert settings.loop.log_every == 1  # 0 or less: every update
  assert (settings.loop.eval_every, settings.loop.eval_batch_size) == (0, 64)
  assert settings.model.head_init == "torch_default" and settings.mesh["data"] == 4
  optimizer = settings.optimizer_config()
  assert (optimizer.lr, optimizer.weight_decay, optimizer.b2) == (settings.lr, 0.1, 0.98)
  assert (optimizer.warmup_steps, optimizer.max_steps) == (122, 2036)
  assert optimizer.schedule == "polynomial_decay" and optimizer.decay_bias_and_norm
  c.train.eval_every = -1
  with pytest.raises(ValueError, match=r"train.eval_every must be >= 0"):
    resolve_settings(c)


# -- head init and the update ---------------------------------------------------------------------


def test_head_inits():
  head = {
    "dense": {"kernel": jnp.zeros((32, 32)), "bias": jnp.zeros(32)},
    "out_proj": {"kernel": jnp.zeros((32, 3)), "bias": jnp.zeros(3)},
  }
  torch_like = init_head(head, jax.random.PRNGKey(0), "torch_default")
  bound = 1 / np.sqrt(32)  # nn.Linear: U(+-1/sqrt(fan_in)), weights and biases
  for layer in torch_like.values():
    for leaf in layer.values():
      assert float(jnp.max(jnp.abs(leaf))) <= bound and float(jnp.std(leaf)) > bound / 3
  bert = init_head(head, jax.random.PRNGKey(0), "bert")
  assert float(jnp.max(jnp.abs(bert["out_proj"]["bias"]))) == 0.0
  assert 0.01 < float(jnp.std(bert["dense"]["kernel"])) < 0.03


def test_per_example_losses_average_to_the_hf_loss():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  labels = jnp.asarray([0, 2, 1, 1, 0, 2])
  assert float(jnp.mean(per_example_loss(logits, labels))) == pytest.approx(
    float(sentence_loss(logits, labels)[0]), rel=1e-6
  )
  targets = jnp.asarray(rng.normal(size=6), jnp.float32)
  assert float(jnp.mean(per_example_loss(logits[:, :1], targets))) == pytest.approx(
    float(sentence_loss(logits[:, :1], targets)[0]), rel=1e-6
  )


def one_run(mesh_shape, batch, *, config=CONFIG, steps=2):
  """Params after `steps` updates on `batch`, on a (data, fsdp, tensor) mesh."""
  model = SequenceClassifier(config, 3, 0.0)
  tx_config = OptimizerConfig(
    lr=1e-3,
    weight_decay=0.1,
    clip_norm=0.0,
    schedule="polynomial_decay",
    warmup_steps=1,
    max_steps=10,
  )
  tx = make_optimizer(tx_config)
  mesh = sharding_lib.make_mesh(*mesh_shape, devices=jax.devices()[: int(np.prod(mesh_shape))])
  _, shardings = state_shardings(model, tx, mesh)
  state = create_state(
    model,
    tx,
    mesh,
    shardings,
    encoder_params=None,
    head_params=None,
    seed=0,
    head_init="torch_default",
  )
  step = make_train_step(model, tx, tx_config, mesh, shardings)
  with sharding_lib.activate(mesh):
    for _ in range(steps):
      sharding = sharding_lib.batch_sharding(mesh)
      state, metrics = step(state, {k: jax.device_put(v, sharding) for k, v in batch.items()})
  return jax.device_get(state.params), jax.device_get(metrics)


def random_batch(rows, real, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(4, 60, size=(rows, 12)).astype(np.int32)
  ids[:, 0] = 0
  ids[:, 9:] = 1  # padding positions
  weights = (np.arange(rows) < real).astype(np.float32)
  return {"input_ids": ids, "labels": rng.integers(0, 3, rows).astype(np.int32), "weights": weights}


def assert_trees_close(a, b, rtol, what):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    # float32: relative to the leaf's scale (sums in another order), absolute floor for zeros
    bound = rtol * max(1.0, float(np.max(np.abs(y))))
    assert float(np.max(np.abs(x - y))) <= bound, (what, jax.tree_util.keystr(path))


def test_padding_rows_change_nothing():
  full = random_batch(8, 5)
  trimmed = {k: v[:5] for k, v in full.items()}
  padded_params, padded_metrics = one_run((1, 1, 1), full)
  params, metrics = one_run((1, 1, 1), trimmed)
  assert padded_metrics["sentences"] == 5.0
  assert padded_metrics["loss"] == pytest.approx(float(metrics["loss"]), rel=1e-5)
  assert_trees_close(padded_params, params, 1e-5, "padded vs trimmed")


def test_a_sharded_mesh_computes_the_same_update():
  batch = random_batch(8, 8, seed=1)
  single, _ = one_run((1, 1, 1), batch)
  sharded, _ = one_run((2, 2, 2), batch)
  assert_trees_close(sharded, single, 1e-5, "data x fsdp x tensor vs one device")


def test_bf16_compute_stays_close_to_float32():
  batch = random_batch(8, 8, seed=2)
  f32, m32 = one_run((1, 1, 1), batch, steps=1)
  bf16, m16 = one_run(
    (1, 1, 1), batch, config=dataclasses.replace(CONFIG, dtype="bfloat16"), steps=1
  )
  assert jax.tree_util.tree_leaves(bf16)[0].dtype == jnp.float32  # parameters stay float32
  # bf16 has an 8-bit mantissa: the loss agrees to ~1e-2 relative, not to float32 rounding.
  assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=2e-2)


@pytest.mark.parametrize("task", sorted(finetune_config.recipes.GLUE_RECIPES) + ["glue"])
@pytest.mark.parametrize("grid", ["none", "paper"])
def test_every_finetune_config_resolves(task, grid):
  from data2vec_jax.finetune.grid import grid_runs

  c = finetune_config.get_config(f"task={task},grid={grid}")
  c.init, c.data.path = "/m", "/d"
  runs = grid_runs(c)
  tasks = finetune_config.recipes.PAPER_TASKS if task == "glue" else (task,)
  assert len(runs) == len(tasks) * (20 if grid == "paper" else 1)
  for t, lr, seed, scratch in runs:
    settings = resolve_settings(c, task=t)
    assert settings.task == t and settings.num_labels == (
      1 if t == "stsb" else len(finetune_config.recipes.label_names(t))
    )
    if grid == "none":
      assert lr == finetune_config.recipes.GLUE_RECIPES[t].lr and seed == 1


def test_the_demo_config_resolves():
  from data2vec_jax.configs import finetune_demo
  from data2vec_jax.finetune.grid import grid_runs

  c = finetune_demo.get_config()
  assert c.init == "demo_out" and c.data.source == "python_topics"
  # pretrained, then from random weights, 3 seeds each
  assert [(r[2], r[3]) for r in grid_runs(c)] == [(s, z) for z in (False, True) for s in (1, 2, 3)]
  settings = resolve_settings(c)
  assert settings.num_labels == 0  # the classes come from the train split


def test_scan_unroll_setting():
  c = finetune_config.get_config("task=rte")
  c.init, c.data.path = "/m", "/d"
  for ok in ("all", "2"):  # a str field: --config.model.scan_unroll=2 arrives as "2"
    c.model.scan_unroll = ok
    resolve_settings(c)
  c.model.scan_unroll = "0"
  with pytest.raises(ValueError, match="model.scan_unroll must be 'all' or an int >= 1"):
    resolve_settings(c)
