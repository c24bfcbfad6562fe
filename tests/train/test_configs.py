"""Every shipped config builds, validates against the library's dataclasses, and means what its
docstring says."""

from __future__ import annotations

import glob
import importlib
import os

import pytest

from data2vec_jax.objective.masking import MaskingConfig
from data2vec_jax.train.recipe import plan_from_config, recipe_from_config
from tests.paths import REPO

CONFIG_MODULES = sorted(
  os.path.relpath(p, REPO)[:-3].replace(os.sep, ".")
  for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
  # the fine-tuning configs: tests/finetune/test_step.py and tests/e2e/test_finetune.py build them;
  # the sweep definitions: tests/sweep/test_definition.py
  if not p.endswith(("__init__.py", "finetune.py", "finetune_demo.py"))
  and os.sep + "sweeps" + os.sep not in p
)


def load(module: str, arg: str | None = None):
  return importlib.import_module(module).get_config(arg)


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_config_validates(module):
  c = load(module)
  recipe = recipe_from_config(c, vocab_size=50265, mask_id=50264)
  MaskingConfig.from_dict(dict(c.masking))
  assert recipe.objective.average_top_k_layers <= recipe.model.num_layers
  assert c.data.global_batch_size > 0


def test_release_recipe_is_the_fairseq_yaml():
  c = load("configs.pretrain", "model=base,recipe=release")
  r = recipe_from_config(c, vocab_size=50265, mask_id=50264)
  assert (r.model.num_layers, r.model.hidden_size, r.model.num_heads) == (12, 768, 12)
  assert r.model.vocab_size == 50265 and r.objective.mask_id == 50264
  assert (r.objective.average_top_k_layers, r.objective.loss_beta, r.objective.head_layers) == (
    10,
    4.0,
    2,
  )
  plan = plan_from_config(c, r)
  # auto head positions: the masker's bound for 512-token rows, (floor(0.35*512/4)+1)*4 -> 184
  assert plan.head_positions_per_row == 184
  # ... an exact bound (fixed spans), so the step compiles no every-position fallback.
  assert plan.head_overflow == "error"
  assert plan.prune_student_last_block and plan.prune_teacher_last_block and plan.pack_tokens
  assert r.model.scan_unroll == 12  # execution.scan_unroll='all'
  assert r.objective.layer_norm_target_layer and not r.objective.instance_norm_target_layer
  assert (r.ema.ema_decay, r.ema.ema_end_decay, r.ema.ema_anneal_end_step) == (
    0.999,
    0.9999,
    300000,
  )
  assert (c.masking.mask_prob, c.masking.mask_multiple_length) == (0.35, 4)
  assert (r.optimizer.lr, r.optimizer.clip_norm, r.optimizer.warmup_steps) == (2e-4, 5.0, 10000)
  assert r.optimizer.schedule == "cosine" and r.objective.teacher_input == "unmasked"


def test_paper_and_roberta_recipes():
  paper = load("configs.pretrain", "recipe=paper")
  assert paper.masking.mask_prob == 0.15 and paper.masking.random_token_prob == 0.1
  assert paper.optimizer.schedule == "tri_stage" and paper.ema.ema_anneal_end_step == 100000
  assert load("configs.pretrain", "recipe=roberta").objective.kind == "mlm"


@pytest.mark.parametrize(
  "module,arg,check",
  [
    ("configs.ablations.top_k", "k=1", lambda c: c.objective.average_top_k_layers == 1),
    (
      "configs.ablations.target_norm",
      "norm=instance",
      lambda c: c.objective.instance_norm_target_layer and not c.objective.layer_norm_target_layer,
    ),
    (
      "configs.ablations.target_type",
      "target=end_of_block",
      lambda c: c.objective.target_type == "end_of_block",
    ),
    (
      "configs.ablations.teacher_input",
      "input=masked_only",
      lambda c: c.objective.teacher_input == "masked_only",
    ),
    (
      "configs.ablations.ema",
      "end_decay=0.99999,anneal=100000",
      lambda c: c.ema.ema_end_decay == 0.99999 and c.ema.ema_anneal_end_step == 100000,
    ),
    ("configs.ablations.loss_beta", "beta=0", lambda c: c.objective.loss_beta == 0.0),
    ("configs.ablations.masking", "mask=bert", lambda c: c.masking.leave_unmasked_prob == 0.1),
  ],
)
def test_ablation_args(module, arg, check):
  c = load(module, arg)
  assert check(c)
  recipe_from_config(c, vocab_size=50265, mask_id=50264)


@pytest.mark.parametrize(
  "module,arg",
  [
    ("configs.pretrain", "model=huge"),
    ("configs.pretrain", "recipe=bogus"),
    ("configs.pretrain", "modle=base"),
    ("configs.ablations.top_k", "k=13"),
    ("configs.ablations.target_norm", "norm=group"),
  ],
)
def test_bad_config_args_are_refused(module, arg):
  with pytest.raises(ValueError):
    load(module, arg)


def test_unknown_config_key_is_refused():
  c = load("configs.pretrain", "model=tiny")
  with c.unlocked():
    c.objective.averge_top_k_layers = 3
  with pytest.raises(ValueError, match="averge_top_k_layers"):
    recipe_from_config(c, vocab_size=1000, mask_id=999)


def test_head_overflow_auto_keeps_the_fallback_unless_k_is_a_guaranteed_bound():
  def resolved(**execution_and_masking):
    c = load("configs.pretrain", "model=tiny")
    with c.unlocked():
      for key, value in execution_and_masking.items():
        section, name = key.split("__")
        c[section][name] = value
    return plan_from_config(c, recipe_from_config(c, vocab_size=1000, mask_id=999))

  assert resolved().head_overflow == "error"
  # Random span lengths: the bound is an estimate, so rows beyond it must stay exact.
  assert resolved(masking__mask_stdev=1.0).head_overflow == "fallback"
  # A K below the masker's bound can overflow; a K above it cannot.
  assert resolved(execution__head_positions=8).head_overflow == "fallback"
  assert resolved(execution__head_positions=200).head_overflow == "error"
  # Asking for 'error' where overflow is possible is refused up front, with the numbers.
  for bad in ({"masking__mask_stdev": 1.0}, {"execution__head_positions": 8}):
    with pytest.raises(
      ValueError, match=r"head_overflow='error' needs .*bound \(\d+ for 512-token rows"
    ):
      resolved(execution__head_overflow="error", **bad)
  assert resolved(execution__head_overflow="fallback").head_overflow == "fallback"
