"""Row pad_id of the token and position embedding tables never moves (fairseq's and HF's
`padding_idx`, model/pad_rows.py): an update on padded batches leaves both rows bit-identical for
every pretraining objective and for fine-tuning, even when the rows start non-zero (an imported
model's may) and weight decay is on."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data2vec_jax.finetune.model import SequenceClassifier
from data2vec_jax.finetune.state import create_state, state_shardings
from data2vec_jax.finetune.step import make_train_step as make_finetune_step
from data2vec_jax.model import pad_rows
from data2vec_jax.model.config import tiny_config
from data2vec_jax.model.encoder import Embeddings
from data2vec_jax.objective.data2vec2_config import Data2Vec2Config
from data2vec_jax.objective.ema import EMAConfig
from data2vec_jax.objective.execution import ExecutionPlan
from data2vec_jax.objective.loss import ObjectiveConfig
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer
from data2vec_jax.train import state as train_state_lib
from data2vec_jax.train import step as train_step_lib

ROWS, LENGTH, VOCAB, PAD, MASK_ID = 8, 16, 100, 1, 99
CONFIG = tiny_config(
  vocab_size=VOCAB,
  hidden_size=32,
  num_heads=4,
  intermediate_size=64,
  max_positions=LENGTH + 2,
  dropout=0.0,
  attention_dropout=0.0,
)
# Weight decay on: a non-zero pad row would shrink through it alone.
OPTIMIZER = OptimizerConfig(lr=1e-2, weight_decay=0.1, warmup_steps=1, max_steps=100)
OBJECTIVES = {
  "data2vec": ObjectiveConfig(kind="data2vec", average_top_k_layers=2, mask_id=MASK_ID),
  "mlm": ObjectiveConfig(kind="mlm", mask_id=MASK_ID),
  "data2vec2": ObjectiveConfig(
    kind="data2vec2",
    average_top_k_layers=2,
    layer_norm_target_layer=False,
    instance_norm_target_layer=True,
    loss_beta=0.0,
    data2vec2=Data2Vec2Config(clone_batch=2, decoder_dim=16, decoder_kernel=3, decoder_layers=1),
  ),
}


def padded_batch(seed: int) -> dict[str, np.ndarray]:
  """Rows of 6..16 real tokens (BOS ... EOS), pads = 1, ~30% of the real tokens masked."""
  rng = np.random.default_rng(seed)
  target = np.full((ROWS, LENGTH), PAD, np.int32)
  selected = np.zeros((ROWS, LENGTH), bool)
  for r in range(ROWS):
    n = int(rng.integers(6, LENGTH + 1)) if r else 8  # row 0 always has pads
    target[r, :n] = rng.integers(4, MASK_ID, n)
    target[r, 0], target[r, n - 1] = 0, 2
    selected[r, 1 : n - 1] = rng.random(n - 2) < 0.3
    selected[r, 1] = True
  source = np.where(selected, MASK_ID, target).astype(np.int32)
  return {"source": source, "target": target, "selected": selected}


def with_nonzero_pad_rows(encoder_params, seed: int = 7):
  """The encoder tree with row PAD of both tables set to N(0, 1) (an imported model's rows)."""

  def fill(path, leaf):
    if not pad_rows._is_pad_row_table(path):
      return leaf
    row = jax.random.normal(jax.random.PRNGKey(seed), leaf.shape[1:], leaf.dtype)
    return jnp.asarray(leaf).at[PAD].set(row)

  return jax.tree_util.tree_map_with_path(fill, encoder_params)


def table_rows(encoder_params) -> dict[str, np.ndarray]:
  tables = encoder_params["embeddings"]
  return {name: np.asarray(tables[name]["embedding"]) for name in pad_rows.PAD_ROW_TABLES}


def assert_pad_rows_frozen(before, after, what):
  for name in pad_rows.PAD_ROW_TABLES:
    np.testing.assert_array_equal(after[name][PAD], before[name][PAD], f"{what}: {name} row pad")
    # the other rows did train (the test would be vacuous otherwise)
    assert not np.array_equal(after[name][PAD + 1], before[name][PAD + 1]), (what, name)


@pytest.mark.parametrize("kind", sorted(OBJECTIVES))
def test_pretraining_update_leaves_both_pad_rows_bit_identical(kind):
  recipe = train_state_lib.Recipe(
    model=CONFIG,
    objective=OBJECTIVES[kind],
    ema=EMAConfig(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10),
    optimizer=OPTIMIZER,
  )
  plan = ExecutionPlan.for_objective(recipe.objective, LENGTH)
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  tx = make_optimizer(recipe.optimizer)
  with sharding_lib.activate(mesh):
    state, step = train_step_lib.new_state_and_step(recipe, plan, tx, mesh, jax.random.PRNGKey(0))
    params = dict(state.params, encoder=with_nonzero_pad_rows(state.params["encoder"]))
    state = state.replace(params=params)
    before = table_rows(jax.device_get(state.params["encoder"]))
    for seed in range(2):
      batch = padded_batch(seed)
      state, metrics = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
    assert np.isfinite(float(metrics["loss"]))
    assert_pad_rows_frozen(before, table_rows(jax.device_get(state.params["encoder"])), kind)


def test_finetuning_update_leaves_both_pad_rows_bit_identical():
  model = SequenceClassifier(CONFIG, 3, 0.0)
  tx = make_optimizer(OPTIMIZER)
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  _, shardings = state_shardings(model, tx, mesh)
  fresh = create_state(
    model, tx, mesh, shardings, encoder_params=None, head_params=None, seed=0, head_init="bert"
  )
  encoder = with_nonzero_pad_rows(jax.device_get(fresh.params["encoder"]))
  state = create_state(
    model, tx, mesh, shardings, encoder_params=encoder, head_params=None, seed=0, head_init="bert"
  )
  step = make_finetune_step(model, tx, OPTIMIZER, mesh, shardings)
  before = table_rows(encoder)
  ids = padded_batch(0)["target"]
  batch = {
    "input_ids": jnp.asarray(ids),
    "labels": jnp.asarray(np.arange(ROWS) % 3, jnp.int32),
    "weights": jnp.ones((ROWS,), jnp.float32),
  }
  with sharding_lib.activate(mesh):
    for _ in range(2):
      state, _ = step(state, batch)
  assert_pad_rows_frozen(before, table_rows(jax.device_get(state.params["encoder"])), "finetune")


def test_the_lookups_give_the_pad_rows_no_gradient():
  """The model alone (no optimizer) already gives row pad zero gradient from the lookups, with
  the pad outputs not zeroed (data2vec 2.0's encoder reads them)."""
  module = Embeddings(CONFIG, zero_pads=False)
  ids = jnp.asarray(padded_batch(1)["target"])
  params = with_nonzero_pad_rows(nn.meta.unbox(module.init(jax.random.PRNGKey(0), ids, True)))
  params = params["params"]
  probe = jax.random.normal(jax.random.PRNGKey(1), (ROWS, LENGTH, CONFIG.hidden_size))
  grads = jax.grad(lambda p: jnp.sum(probe * module.apply({"params": p}, ids, True)))(params)
  for name in pad_rows.PAD_ROW_TABLES:
    table = np.asarray(grads[name]["embedding"])
    assert np.all(table[PAD] == 0), name
    assert np.any(table[PAD + 1] != 0), name


def test_zero_pad_rows_touches_only_the_two_tables():
  tree = {
    "embeddings": {
      "token_embedding": {"embedding": jnp.ones((4, 2))},
      "position_embedding": {"embedding": jnp.ones((5, 2))},
      "layer_norm": {"scale": jnp.ones((2,))},
    },
    "decoder": {"embedding": jnp.ones((4, 2))},
  }
  out = pad_rows.zero_pad_rows(tree, 1)
  for name in pad_rows.PAD_ROW_TABLES:
    table = np.asarray(out["embeddings"][name]["embedding"])
    assert np.all(table[1] == 0) and np.all(np.delete(table, 1, axis=0) == 1)
  assert np.all(np.asarray(out["decoder"]["embedding"]) == 1)
  assert pad_rows.zero_pad_rows(tree, None) is tree
