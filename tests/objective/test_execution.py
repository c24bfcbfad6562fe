"""The execution plan (data2vec_jax/objective/execution.py): how its speed decisions are made, and that the
fast path it drives (training_loss) equals the reference path (objective.loss_fn) on the trainer's
default settings. Each technique is also checked against PyTorch in tests/objective/test_loss.py."""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data2vec_jax.configs import pretrain
from data2vec_jax.model import flops
from data2vec_jax.objective import loss as objective_lib
from data2vec_jax.objective.execution import ExecutionConfig, ExecutionPlan, make_plan, real_tokens
from data2vec_jax.objective.loss import ObjectiveConfig, PretrainingModel
from data2vec_jax.objective.masking import MaskingConfig, mask_tokens, max_selected_per_row
from data2vec_jax.objective.training_loss import training_loss
from data2vec_jax.train.recipe import (
  plan_from_config,
  recipe_from_config,
  recipe_from_dict,
  recipe_to_dict,
)

VOCAB, MASK = 1000, 999


def default_run(seq_len: int = 64):
  """The trainer's recipe and plan for the tiny model with every default of configs/pretrain.py
  (release recipe: span masking 0.35 x 4; execution: auto K, no fallback, pruned student and
  teacher last blocks, token packing)."""
  c = pretrain.get_config("model=tiny")
  c.data.tokens_per_sample = seq_len
  c.model.dropout = c.model.attention_dropout = 0.0  # dropout streams differ by path, by design
  recipe = recipe_from_config(c, vocab_size=VOCAB, mask_id=MASK)
  return c, recipe, plan_from_config(c, recipe)


def masked_batch(masking: MaskingConfig, rows: int, seq_len: int, seed: int = 0) -> dict:
  """Rows of U[T/2, T] real tokens masked by the real masker, right-padded."""
  rng = np.random.default_rng(seed)
  batch = {
    "source": np.ones((rows, seq_len), np.int32),
    "target": np.ones((rows, seq_len), np.int32),
    "selected": np.zeros((rows, seq_len), bool),
  }
  for row in range(rows):
    n = int(rng.integers(seq_len // 2, seq_len + 1))
    tokens = np.concatenate([[0], rng.integers(4, MASK, n - 2), [2]]).astype(np.int32)
    source, selected = mask_tokens(
      tokens, config=masking, seed=seed, epoch=0, index=row, mask_id=MASK, vocab_size=VOCAB
    )
    batch["source"][row, :n], batch["target"][row, :n] = source, tokens
    batch["selected"][row, :n] = selected
  return batch


def test_fast_path_equals_the_reference_on_the_trainers_defaults():
  c, recipe, plan = default_run()
  # Every speed technique is on by default.
  assert plan.gathers_head_positions and plan.head_overflow == "error"
  assert plan.prune_student_last_block and plan.prune_teacher_last_block
  assert plan.pack_tokens and plan.pack_teacher
  host = masked_batch(MaskingConfig.from_dict(dict(c.masking)), 8, plan.seq_len)
  plan.check_host_batch(host, config=recipe.model, objective=recipe.objective)
  packing = plan.packing_for_batch(host, real_tokens(host, 1).sum(axis=1), pad_id=1, groups=1)
  assert packing is not None and packing.capacity < 8 * plan.seq_len

  model = PretrainingModel(recipe.model, recipe.objective)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.asarray(host["source"]))["params"])
  # A teacher that differs from the student, as after some EMA updates.
  teacher = jax.tree_util.tree_map(lambda x: x * 0.9 + 0.01, params["encoder"])
  batch = {k: jnp.asarray(v) for k, v in host.items()}

  def reference(p):
    return objective_lib.loss_fn(
      p, teacher, batch, None, config=recipe.model, objective=recipe.objective
    )

  def fast(p):
    return training_loss(
      p,
      teacher,
      batch,
      None,
      config=recipe.model,
      objective=recipe.objective,
      plan=plan,
      packing=packing,
    )

  (ref_loss, ref_aux), ref_grads = jax.jit(jax.value_and_grad(reference, has_aux=True))(params)
  (loss, aux), grads = jax.jit(jax.value_and_grad(fast, has_aux=True))(params)
  assert float(aux["head_gathered"]) == 1 and aux["num_masked"] == ref_aux["num_masked"]
  # float32, summed in another order and through other matmul shapes (gathered and packed):
  # the per-element rounding (eps 1.2e-7) grows with the ~sqrt(terms) of each sum and the depth;
  # 1e-5 relative leaves room for that and is far below any real difference (one position more
  # or less changes the loss by ~1/num_masked, here > 1%).
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for key in ("target_var", "pred_var"):
    np.testing.assert_allclose(float(aux[key]), float(ref_aux[key]), rtol=1e-5)
  # Gradients: each leaf within 1e-5 of the largest gradient entry of that leaf (an absolute
  # bound at the leaf's own scale, so entries near zero do not need relative agreement).
  for path, g, r in zip(
    jax.tree_util.tree_leaves_with_path(grads),
    jax.tree_util.tree_leaves(grads),
    jax.tree_util.tree_leaves(ref_grads),
  ):
    g, r = np.asarray(g), np.asarray(r)
    scale = float(np.max(np.abs(r)))
    assert np.max(np.abs(g - r)) <= 1e-5 * scale + 1e-12, jax.tree_util.keystr(path[0])


def test_the_plain_plan_is_the_reference_path():
  _, recipe, _ = default_run(seq_len=32)
  plain = ExecutionPlan(seq_len=32)
  host = masked_batch(MaskingConfig(), 4, 32, seed=1)
  model = PretrainingModel(recipe.model, recipe.objective)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.asarray(host["source"]))["params"])
  batch = {k: jnp.asarray(v) for k, v in host.items()}
  args = (params, params["encoder"], batch, jax.random.key(3))
  fast, aux = training_loss(*args, config=recipe.model, objective=recipe.objective, plan=plain)
  ref, _ = objective_lib.loss_fn(*args, config=recipe.model, objective=recipe.objective)
  assert float(fast) == float(ref) and float(aux["head_gathered"]) == 0  # the same program


def test_make_plan_resolves_the_named_values():
  objective, masking = ObjectiveConfig(), MaskingConfig()  # span masking 0.35 x 4, fixed spans
  auto = make_plan(ExecutionConfig(), objective, masking, 512)
  # The masker's bound: (floor(0.35 * 512 / 4) + 1) spans of 4, rounded up to a multiple of 8.
  assert auto.head_positions_per_row == max_selected_per_row(masking, 512) == 184
  assert auto.head_overflow == "error" and auto.prune_teacher_last_block
  every = make_plan(ExecutionConfig(head_positions="all"), objective, masking, 512)
  assert every.head_positions_per_row == 0 and not every.gathers_head_positions
  assert not every.prune_student_last_block and not every.prune_teacher_last_block
  # An explicit K below the bound may overflow: the exact fallback is kept.
  short = make_plan(ExecutionConfig(head_positions=64), objective, masking, 512)
  assert short.head_positions_per_row == 64 and short.head_overflow == "fallback"
  with pytest.raises(ValueError, match="head_overflow='error' needs"):
    make_plan(ExecutionConfig(head_positions=64, head_overflow="error"), objective, masking, 512)
  # Instance norm reads every position: the teacher is neither pruned nor packed.
  norm = make_plan(
    ExecutionConfig(),
    ObjectiveConfig(instance_norm_target_layer=True, layer_norm_target_layer=False),
    masking,
    512,
  )
  assert norm.prune_student_last_block and not norm.prune_teacher_last_block
  assert not norm.pack_teacher
  mlm = make_plan(
    ExecutionConfig(prune_last_block=False), ObjectiveConfig(kind="mlm"), masking, 512
  )
  assert not mlm.prune_student_last_block and not mlm.pack_teacher


def test_execution_config_validates_and_reads_command_line_ints():
  # A command-line override of a str field arrives as a str.
  parsed = ExecutionConfig.from_dict({"head_positions": "96", "scan_unroll": "2"})
  assert parsed.head_positions == 96 and parsed.scan_unroll == 2
  for bad in (
    {"head_positions": "some"},
    {"head_positions": 0},
    {"head_positions": -1},
    {"scan_unroll": 0},
    {"head_overflow": "truncate"},
    {"micro_batches": 0},
  ):
    with pytest.raises(ValueError, match="execution"):
      ExecutionConfig.from_dict(bad)
  with pytest.raises(ValueError, match="unknown ExecutionConfig keys"):
    ExecutionConfig.from_dict({"head_positions_per_row": 8})
  _, recipe, _ = default_run()
  assert ExecutionConfig().encoder_config(recipe.model).scan_unroll == recipe.model.num_layers
  assert (
    ExecutionConfig(scan_unroll=1, remat_policy="full").encoder_config(recipe.model).remat_policy
    == "full"
  )


def test_flops_per_token_counts_what_the_plan_runs():
  _, recipe, plan = default_run()
  for pruned in (
    plan,
    dataclasses.replace(plan, prune_student_last_block=False, prune_teacher_last_block=False),
  ):
    assert pruned.flops_per_token(recipe.model, recipe.objective, masked_fraction=0.3) == (
      flops.train_flops_per_token(
        recipe.model,
        plan.seq_len,
        kind="data2vec",
        head_layers=recipe.objective.head_layers,
        masked_fraction=0.3,
        pruned_last_block=pruned.prune_student_last_block,
        pruned_teacher_last_block=pruned.prune_teacher_last_block,
      )
    )
  assert plan.flops_per_token(recipe.model, recipe.objective, masked_fraction=0.3) < (
    ExecutionPlan(seq_len=plan.seq_len).flops_per_token(
      recipe.model, recipe.objective, masked_fraction=0.3
    )
  )


def test_recipe_files_from_before_the_execution_section_still_load():
  # recipe.json of a run from before the execution section: speed keys inside 'objective'.
  _, recipe, plan = default_run()
  values = json.loads(json.dumps(recipe_to_dict(recipe, plan.seq_len, plan)))
  assert values["execution"]["head_positions_per_row"] == plan.head_positions_per_row
  old = dict(values, micro_batches=1)
  del old["execution"]
  old["objective"] = dict(
    old["objective"], head_positions_per_row=-1, prune_last_block=True, head_overflow="auto"
  )
  for each in (values, old):
    loaded, seq_len = recipe_from_dict(each)
    assert loaded == recipe and seq_len == plan.seq_len
