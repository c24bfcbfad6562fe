"""data2vec 2.0 through the existing train step: the clones shard with the data (a sharded
step computes the one-device update), the EMA covers the blocks only and follows fairseq's
ordering, micro-batches and the collapse monitors work, and the configs resolve."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from data2vec_jax.configs import demo, pretrain
from data2vec_jax.model import flops as flops_lib
from data2vec_jax.model.config import tiny_config
from data2vec_jax.model.decoder import Decoder1d
from data2vec_jax.objective import ema as ema_lib
from data2vec_jax.objective.data2vec2_config import Data2Vec2Config
from data2vec_jax.objective.ema import EMAConfig
from data2vec_jax.objective.execution import ExecutionPlan
from data2vec_jax.objective.loss import ObjectiveConfig
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer
from data2vec_jax.train import state as train_state_lib
from data2vec_jax.train import step as train_step_lib
from data2vec_jax.train.recipe import (
  plan_from_config,
  recipe_from_config,
  recipe_from_dict,
  recipe_to_dict,
)

ROWS, LENGTH = 8, 16


def make_recipe(dropout: float = 0.1) -> train_state_lib.Recipe:
  return train_state_lib.Recipe(
    model=tiny_config(dropout=dropout, attention_dropout=dropout, max_positions=LENGTH + 2),
    objective=ObjectiveConfig(
      kind="data2vec2",
      average_top_k_layers=2,
      layer_norm_target_layer=False,
      instance_norm_target_layer=True,
      loss_beta=0.0,
      data2vec2=Data2Vec2Config(
        clone_batch=2,
        decoder_dim=32,
        decoder_kernel=3,
        decoder_layers=2,
        decoder_input_dropout=dropout,
      ),
    ),
    ema=EMAConfig(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10),
    optimizer=OptimizerConfig(lr=1e-3, warmup_steps=1, max_steps=100, clip_norm=1.0),
  )


def make_batch(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  target = rng.integers(4, 999, size=(ROWS, LENGTH)).astype(np.int32)
  target[:, 0] = 0
  target[::3, -4:] = 1  # some padded rows
  return {"source": target, "target": target, "selected": np.zeros_like(target, bool)}


def run(recipe, mesh_shape, batches, micro_batches=1):
  plan = ExecutionPlan.for_objective(recipe.objective, LENGTH, micro_batches=micro_batches)
  mesh = sharding_lib.make_mesh(*mesh_shape, devices=jax.devices()[: int(np.prod(mesh_shape))])
  tx = make_optimizer(recipe.optimizer)
  with sharding_lib.activate(mesh):
    state, step = train_step_lib.new_state_and_step(recipe, plan, tx, mesh, jax.random.PRNGKey(0))
    states = [jax.device_get(state)]
    metrics = []
    for batch in batches:
      sharded = {k: jax.device_put(v, sharding_lib.batch_sharding(mesh)) for k, v in batch.items()}
      state, m = step(state, sharded)
      states.append(jax.device_get(state))
      metrics.append(jax.device_get(m))
  return states, states[-1], metrics


def max_abs_diff(a, b) -> float:
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


@pytest.fixture(scope="module")
def one_device():
  recipe = make_recipe()
  batches = [make_batch(s) for s in range(2)]
  return recipe, batches, run(recipe, (1, 1, 1), batches)


def test_v2_step_trains_and_reports_the_collapse_monitors(one_device):
  recipe, _, (_, state, metrics) = one_device
  for m in metrics:
    assert np.isfinite(m["loss"]) and m["loss"] > 0
    assert m["target_var"] > 0.1 and m["pred_var"] > 0
    # every clone row masks T - K positions: 8 rows x 2 clones x (16 - int(16 * 0.52))
    assert m["num_masked"] == ROWS * 2 * (LENGTH - int(LENGTH * 0.52))
  assert int(state.step) == 2


def test_ema_tracks_the_blocks_only_in_fairseqs_order(one_device):
  recipe, _, (states, _, _) = one_device
  assert set(states[0].ema_params) == {"layers"}  # no embeddings, no decoder in the teacher
  # the teacher of update 0 is the student
  assert max_abs_diff(states[0].ema_params["layers"], states[0].params["encoder"]["layers"]) == 0
  # after update k: ema_k = tau(k) * ema_{k-1} + (1 - tau(k)) * theta_k (fairseq's
  # set_num_updates(k) at the start of update k + 1, with theta_k)
  for k in (1, 2):
    tau = np.float32(ema_lib.ema_decay(k, recipe.ema))
    want = jax.tree_util.tree_map(
      lambda e, s: e * tau + s * (np.float32(1) - tau),
      states[k - 1].ema_params["layers"],
      states[k].params["encoder"]["layers"],
    )
    assert max_abs_diff(states[k].ema_params["layers"], want) <= 1e-6
  assert max_abs_diff(states[2].ema_params["layers"], states[2].params["encoder"]["layers"]) > 0


def test_sharded_v2_step_matches_one_device(one_device):
  """The clone axis (rows b*M+m) shards with the data: a data x fsdp x tensor mesh computes
  the one-device update (dropout, masks and noise included: same keys)."""
  recipe, batches, (_, ref, ref_metrics) = one_device
  _, state, metrics = run(recipe, (2, 2, 2), batches)
  for m, r in zip(metrics, ref_metrics):
    assert abs(m["loss"] - r["loss"]) <= 1e-5 * max(1.0, abs(r["loss"]))
  assert max_abs_diff(state.params, ref.params) <= 1e-5
  assert max_abs_diff(state.ema_params, ref.ema_params) <= 1e-5


def test_micro_batches_run_the_same_masked_count():
  recipe = make_recipe(dropout=0.0)
  _, _, metrics = run(recipe, (1, 1, 1), [make_batch(0)], micro_batches=2)
  assert np.isfinite(metrics[0]["loss"])
  assert metrics[0]["num_masked"] == ROWS * 2 * (LENGTH - int(LENGTH * 0.52))


def test_data2vec2_configs_are_the_fairseq_yamls():
  c = pretrain.get_config("model=base,recipe=data2vec2")
  r = recipe_from_config(c, vocab_size=50265, mask_id=50264)
  o, v2 = r.objective, r.objective.data2vec2
  assert (o.kind, v2.clone_batch, v2.mask_prob, v2.mask_noise_std) == ("data2vec2", 8, 0.48, 0.01)
  assert o.average_top_k_layers == 12 and o.instance_norm_target_layer
  assert not (o.layer_norm_target_layer or o.instance_norm_targets or o.layer_norm_targets)
  assert (o.loss_beta, o.loss_scale) == (0.0, 1.0)
  assert (v2.decoder_dim, v2.decoder_kernel, v2.decoder_layers, v2.decoder_groups) == (768, 9, 5, 1)
  assert not v2.decoder_residual and v2.projection_layers == 2
  assert (r.ema.ema_decay, r.ema.ema_end_decay, r.ema.ema_anneal_end_step) == (
    0.9999,
    0.99999,
    100_000,
  )
  opt = r.optimizer
  assert (opt.lr, opt.warmup_steps, opt.clip_norm, opt.schedule) == (2e-4, 4000, 1.0, "cosine")
  assert opt.decay_bias_and_norm and c.data.global_batch_size == 64
  plan = plan_from_config(c, r)
  assert not plan.pack_tokens and plan.head_positions_per_row == 0 and plan.drop_masked_tokens
  large = recipe_from_config(
    pretrain.get_config("model=large,recipe=data2vec2"), vocab_size=50265, mask_id=50264
  )
  assert large.objective.data2vec2.mask_prob == 0.5 and large.objective.average_top_k_layers == 24
  assert large.objective.layer_norm_target_layer and large.objective.instance_norm_targets
  assert large.optimizer.lr == 1e-4
  d = recipe_from_config(demo.get_config("recipe=data2vec2"), vocab_size=2048, mask_id=2047)
  assert d.objective.kind == "data2vec2" and d.objective.data2vec2.clone_batch == 4


def test_recipe_files_with_data2vec2_fields_flat_in_the_objective_still_load():
  # recipe.json before issue 26 kept data2vec 2.0's fields flat in 'objective', as the config
  # section still does; since then they are its nested 'data2vec2'.
  recipe = recipe_from_config(demo.get_config("recipe=data2vec2"), vocab_size=2048, mask_id=2047)
  values = json.loads(json.dumps(recipe_to_dict(recipe, LENGTH)))
  assert values["objective"]["data2vec2"]["clone_batch"] == 4
  old = dict(values)
  old["objective"] = {k: v for k, v in values["objective"].items() if k != "data2vec2"}
  old["objective"].update(values["objective"]["data2vec2"])
  assert "decoder_dim" in old["objective"] and "data2vec2" not in old["objective"]
  for each in (values, old):
    loaded, seq_len = recipe_from_dict(each)
    assert loaded == recipe and seq_len == LENGTH
  both = dict(old["objective"], data2vec2=values["objective"]["data2vec2"])
  with pytest.raises(ValueError, match="both flat"):
    ObjectiveConfig.from_dict(both)
  with pytest.raises(ValueError, match="decoder_dimm"):
    ObjectiveConfig.from_dict({"kind": "data2vec2", "data2vec2": {"decoder_dimm": 8}})


def test_v2_flops_count_the_dropped_tokens_and_the_decoder():
  cfg = tiny_config(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072)
  dec = Decoder1d(cfg.hidden_size)  # the base yaml's decoder
  assert flops_lib.decoder_forward_flops_per_position(cfg, dec) == pytest.approx(
    2 * (9 * 768 * 768 * 5 + 768 * 1536 + 1536 * 768)
  )
  dropped = flops_lib.data2vec2_train_flops_per_token(cfg, 512, decoder=dec)
  full = flops_lib.data2vec2_train_flops_per_token(cfg, 512, decoder=dec, dropped_masked=False)
  teacher = flops_lib.encoder_forward_flops_per_token(cfg, 512)
  student = 8 * 266 / 512 * flops_lib.encoder_forward_flops_per_token(cfg, 266)
  decoder = 8 * flops_lib.decoder_forward_flops_per_position(cfg, dec)
  assert dropped == pytest.approx(3 * student + teacher + 3 * decoder)
  assert dropped < full
  plan = ExecutionPlan.for_objective(dataclasses.replace(make_recipe().objective), 512)
  assert plan.flops_per_token(cfg, make_recipe().objective, masked_fraction=0.0) > 0


def test_v2_loss_runs_in_bfloat16():
  import flax.linen as nn
  import jax.numpy as jnp

  from data2vec_jax.objective import data2vec2
  from data2vec_jax.objective.loss import PretrainingModel

  recipe = make_recipe(dropout=0.1)
  model = recipe.model.replace(dtype="bfloat16")
  tokens = jnp.full((1, LENGTH), 5, jnp.int32)
  # Compiled once each (op-by-op dispatch of the tiny model costs more than the compile).
  boxed = jax.jit(PretrainingModel(model, recipe.objective).init)(jax.random.PRNGKey(0), tokens)
  params = nn.meta.unbox(boxed)["params"]
  batch = {k: jnp.asarray(v) for k, v in make_batch(0).items()}
  loss, aux = jax.jit(
    lambda params, batch, key: data2vec2.loss_fn(
      params,
      {"layers": params["encoder"]["layers"]},
      batch,
      key,
      config=model,
      objective=recipe.objective,
    )
  )(params, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss)) and float(aux["target_var"]) > 0.1
