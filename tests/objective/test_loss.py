"""The data2vec objective (targets, head, loss, gradients) against an independent PyTorch computation.

The PyTorch side is a `transformers.Data2VecTextModel` (random, non-trivial weights) run through a
literal transcription of fairseq's `Data2VecTextEncoder.forward` target/loss code: FFN outputs
captured with forward hooks on `encoder.layer[i].output.dense`, `F.layer_norm` /
`F.instance_norm` / `F.batch_norm`, a `nn.Sequential(Linear, GELU, Linear)` head,
`F.smooth_l1_loss(reduction='none', beta=...)`, boolean indexing of the masked positions and
autograd. HF does not zero pad embeddings as fairseq does; a forward hook adds that, so the
teacher's pad positions (which enter instance/batch-norm statistics) match fairseq.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Data2VecTextConfig, Data2VecTextModel

from data2vec_jax.model.config import tiny_config
from data2vec_jax.objective.execution import ExecutionPlan
from data2vec_jax.objective.loss import ObjectiveConfig, PretrainingModel
from data2vec_jax.objective.masking import MaskingConfig, mask_tokens
from data2vec_jax.objective.targets import teacher_targets, teacher_targets_fn
from data2vec_jax.objective.training_loss import training_loss
from data2vec_jax.speed.packing import PackingSpec

V, D, L, H, FF, PAD, MASK = 100, 32, 3, 4, 64, 1, 99
CFG = tiny_config(
  vocab_size=V, hidden_size=D, num_layers=L, num_heads=H, intermediate_size=FF, max_positions=40
)
RTOL = 1e-5


# ----------------------------------------------------------------------------------------------
# PyTorch side
# ----------------------------------------------------------------------------------------------


def _hf_model(seed: int) -> Data2VecTextModel:
  hc = Data2VecTextConfig(
    vocab_size=V,
    hidden_size=D,
    num_hidden_layers=L,
    num_attention_heads=H,
    intermediate_size=FF,
    max_position_embeddings=40,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=PAD,
    hidden_act="gelu",
    attn_implementation="eager",
  )
  torch.manual_seed(seed)
  m = Data2VecTextModel(hc, add_pooling_layer=False).eval()
  with torch.no_grad():
    for name, p in m.named_parameters():
      if "LayerNorm.weight" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif "token_type" in name:
        p.zero_()
      else:
        torch.nn.init.normal_(p, std=0.15)
  ids = {}

  def zero_pads(module, args, output):  # fairseq zeroes pad positions after the embedding LN
    return output * (ids["x"] != PAD).unsqueeze(-1).to(output.dtype)

  m.embeddings.register_forward_hook(zero_pads)
  m._ids = ids
  return m


def _run(m: Data2VecTextModel, tokens: torch.Tensor, want: str | None = None):
  """Forward; returns (last hidden [B,T,D], per-layer features [B,T,D] list or None)."""
  m._ids["x"] = tokens
  feats, handles = [], []
  for layer in m.encoder.layer:
    if want == "ffn":
      handles.append(
        layer.output.dense.register_forward_hook(lambda mod, a, out: feats.append(out))
      )
    elif want == "ffn_residual":  # LayerNorm input = dense output + residual (eval: no dropout)
      handles.append(
        layer.output.LayerNorm.register_forward_pre_hook(lambda mod, a: feats.append(a[0]))
      )
  out = m(tokens, attention_mask=(tokens != PAD).long(), output_hidden_states=True)
  for h in handles:
    h.remove()
  if want == "end_of_block":
    feats = list(out.hidden_states[1:])
  return out.last_hidden_state, (feats if want else None)


def _torch_head(head_layers: int, seed: int) -> torch.nn.Sequential:
  torch.manual_seed(seed)
  mods, cur = [], D
  for i in range(head_layers - 1):
    nxt = 2 * D if i == 0 else cur
    mods += [torch.nn.Linear(cur, nxt), torch.nn.GELU()]
    cur = nxt
  mods.append(torch.nn.Linear(cur, D))
  head = torch.nn.Sequential(*mods)
  with torch.no_grad():
    for p in head.parameters():
      torch.nn.init.normal_(p, std=0.6)  # large, so |pred - target| crosses beta = 4 somewhere
  return head


def torch_data2vec(
  student, teacher, head, src, target_tokens_in, obj: ObjectiveConfig, loss_mask: torch.Tensor
):
  """fairseq Data2VecTextEncoder.forward (targets + loss), transcribed."""
  x, _ = _run(student, src)
  with torch.no_grad():
    _, y = _run(teacher, target_tokens_in, want=obj.target_type)
    y = [tl.transpose(0, 1) for tl in y]  # fairseq's fc_results are T x B x C
    y = y[-obj.average_top_k_layers :]
    permuted = False
    if obj.instance_norm_target_layer or obj.batch_norm_target_layer:
      y = [tl.permute(1, 2, 0) for tl in y]  # TBC -> BCT
      permuted = True
    if obj.batch_norm_target_layer:
      y = [F.batch_norm(tl.float(), running_mean=None, running_var=None, training=True) for tl in y]
    if obj.instance_norm_target_layer:
      y = [F.instance_norm(tl.float()) for tl in y]
    if permuted:
      y = [tl.transpose(1, 2) for tl in y]  # BCT -> BTC
    if obj.layer_norm_target_layer:
      y = [F.layer_norm(tl.float(), tl.shape[-1:]) for tl in y]
    y = sum(y) / len(y)
    if not permuted:
      y = y.transpose(0, 1)
    if obj.layer_norm_targets:
      y = F.layer_norm(y.float(), y.shape[-1:])
    if obj.instance_norm_targets:
      y = F.instance_norm(y.transpose(1, 2)).transpose(1, 2)
  y_full = y
  xm = head(x[loss_mask])
  ym = y[loss_mask]
  sz = xm.size(-1)
  if obj.loss_beta == 0:
    loss = F.mse_loss(xm.float(), ym.float(), reduction="none").sum(dim=-1)
  else:
    loss = F.smooth_l1_loss(xm.float(), ym.float(), reduction="none", beta=obj.loss_beta).sum(
      dim=-1
    )
  total = loss.sum() / np.sqrt(sz) if obj.loss_scale <= 0 else loss.sum() * obj.loss_scale
  return total, y_full, xm, ym


# ----------------------------------------------------------------------------------------------
# weight mapping HF -> ours (inline; the converter module is tested on its own)
# ----------------------------------------------------------------------------------------------


def hf_to_encoder_tree(sd: dict[str, np.ndarray]) -> dict:
  """HF Data2VecTextModel state (or gradient) dict -> our encoder tree. Linear in `sd`."""
  dh = D // H
  lay = lambda name: [sd[f"encoder.layer.{i}.{name}"] for i in range(L)]
  names = ("query", "key", "value")
  qkv_k = np.stack(
    [
      np.stack(
        [sd[f"encoder.layer.{i}.attention.self.{n}.weight"].T.reshape(D, H, dh) for n in names], 1
      )
      for i in range(L)
    ]
  )
  qkv_b = np.stack(
    [
      np.stack([sd[f"encoder.layer.{i}.attention.self.{n}.bias"].reshape(H, dh) for n in names], 0)
      for i in range(L)
    ]
  )
  return {
    "embeddings": {
      "token_embedding": {"embedding": sd["embeddings.word_embeddings.weight"]},
      "position_embedding": {"embedding": sd["embeddings.position_embeddings.weight"]},
      "layer_norm": {
        "scale": sd["embeddings.LayerNorm.weight"],
        "bias": sd["embeddings.LayerNorm.bias"],
      },
    },
    "layers": {
      "attention": {
        "qkv": {"kernel": qkv_k, "bias": qkv_b},
        "out": {
          "kernel": np.stack([w.T.reshape(H, dh, D) for w in lay("attention.output.dense.weight")]),
          "bias": np.stack(lay("attention.output.dense.bias")),
        },
      },
      "attention_layer_norm": {
        "scale": np.stack(lay("attention.output.LayerNorm.weight")),
        "bias": np.stack(lay("attention.output.LayerNorm.bias")),
      },
      "fc1": {
        "kernel": np.stack([w.T for w in lay("intermediate.dense.weight")]),
        "bias": np.stack(lay("intermediate.dense.bias")),
      },
      "fc2": {
        "kernel": np.stack([w.T for w in lay("output.dense.weight")]),
        "bias": np.stack(lay("output.dense.bias")),
      },
      "ffn_layer_norm": {
        "scale": np.stack(lay("output.LayerNorm.weight")),
        "bias": np.stack(lay("output.LayerNorm.bias")),
      },
    },
  }


def _state(m: torch.nn.Module) -> dict[str, np.ndarray]:
  # token_type row 0 is zero, so word_embeddings alone is our token table.
  return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


def _grads(m: torch.nn.Module) -> dict[str, np.ndarray]:
  return {
    k: (p.grad.numpy().copy() if p.grad is not None else np.zeros(p.shape, np.float32))
    for k, p in m.named_parameters()
  }


def head_tree(sd: dict[str, np.ndarray], head_layers: int) -> dict:
  linear_ids = [2 * i for i in range(head_layers)]  # Sequential: Linear, GELU, Linear, ...
  return {
    f"dense_{j}": {"kernel": sd[f"{k}.weight"].T, "bias": sd[f"{k}.bias"]}
    for j, k in enumerate(linear_ids)
  }


def assert_close(ours, ref, what: str, rtol: float = RTOL) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
  scale = max(np.max(np.abs(ref)), 1e-30)
  rel = np.max(np.abs(ours - ref)) / scale
  assert rel <= rtol, f"{what}: max |diff| / max |ref| = {rel:.3g} > {rtol}"
  return rel


def assert_tree_close(ours, ref, what: str) -> float:
  worst = 0.0
  flat_ours = jax.tree_util.tree_flatten_with_path(ours)[0]
  flat_ref = dict(jax.tree_util.tree_flatten_with_path(ref)[0])
  assert len(flat_ours) == len(flat_ref)
  for path, leaf in flat_ours:
    worst = max(worst, assert_close(leaf, flat_ref[path], f"{what}{jax.tree_util.keystr(path)}"))
  return worst


# ----------------------------------------------------------------------------------------------
# batch
# ----------------------------------------------------------------------------------------------


def _batch() -> dict[str, np.ndarray]:
  """3 rows, T=14, one row padded; BERT-style corruption so <mask> != selected somewhere."""
  rng = np.random.default_rng(0)
  lengths = (14, 14, 10)
  mcfg = MaskingConfig(
    mask_prob=0.3, mask_multiple_length=2, leave_unmasked_prob=0.15, random_token_prob=0.15
  )
  for seed in range(1000):
    src = np.full((3, 14), PAD, np.int32)
    tgt = np.full((3, 14), PAD, np.int32)
    sel = np.zeros((3, 14), bool)
    for b, n in enumerate(lengths):
      toks = np.concatenate([[0], rng.integers(4, MASK, n - 2), [2]]).astype(np.int32)
      s, m = mask_tokens(toks, config=mcfg, seed=seed, epoch=0, index=b, mask_id=MASK, vocab_size=V)
      src[b, :n], tgt[b, :n], sel[b, :n] = s, toks, m
    is_mask = src == MASK
    if is_mask.any(1).all() and (sel & ~is_mask).any():
      return {"source": src, "target": tgt, "selected": sel}
  raise AssertionError("no suitable batch")


BATCH = _batch()
STUDENT = _hf_model(1)
TEACHER = _hf_model(2)


def plan_for(obj: ObjectiveConfig, **plan) -> ExecutionPlan:
  """An execution plan for BATCH's rows; no arguments: the reference path (every position)."""
  return ExecutionPlan.for_objective(obj, BATCH["source"].shape[1], **plan)


def loss_fn(params, teacher, batch, rng, *, objective, plan=None, packing=None):
  """The step's loss (`training_loss`); with the default plan and no packing, the reference path."""
  return training_loss(
    params,
    teacher,
    batch,
    rng,
    config=CFG,
    objective=objective,
    plan=plan or plan_for(objective),
    packing=packing,
  )


def _case(
  obj: ObjectiveConfig,
  plan: dict | None = None,
  with_dropout: bool = False,
  packing: PackingSpec | None = None,
):
  """Runs both sides; returns a dict of measured relative differences. `plan` (keyword arguments
  of `ExecutionPlan.for_objective`) and `packing` choose how our loss runs (gathered heads,
  pruned last blocks, packed encoders); the reference always runs every position, padded."""
  obj = dataclasses.replace(obj, mask_id=MASK)
  plan = plan_for(obj, **(plan or {}))
  head = _torch_head(obj.head_layers, seed=3)
  src, tgt, sel = (torch.tensor(BATCH[k]) for k in ("source", "target", "selected"))
  teacher_in = tgt if obj.teacher_input == "unmasked" else torch.where(sel, tgt, PAD)
  loss_mask = sel.clone() if obj.loss_positions == "selected" else src.eq(MASK)

  STUDENT.zero_grad()
  head.zero_grad()
  t_loss, t_y, t_pred, t_ym = torch_data2vec(
    STUDENT, TEACHER, head, src, teacher_in, obj, loss_mask
  )
  t_loss.backward()

  params = {
    "encoder": hf_to_encoder_tree(_state(STUDENT)),
    "head": head_tree(_state(head), obj.head_layers),
  }
  teacher = hf_to_encoder_tree(_state(TEACHER))
  batch = {k: jnp.asarray(v) for k, v in BATCH.items()}

  def everything(p, t, b, t_in, key):
    (loss, aux), (grads, teacher_grads) = jax.value_and_grad(
      lambda p, t: loss_fn(p, t, b, None, objective=obj, plan=plan, packing=packing),
      argnums=(0, 1),
      has_aux=True,
    )(p, t)
    y = teacher_targets(t, t_in, config=CFG, objective=obj)
    _, pred = PretrainingModel(CFG, obj).apply({"params": p}, b["source"])
    # Student dropout (train mode): keyed, so reproducible per key and different across keys.
    dropout = (
      [
        loss_fn(p, t, b, k, objective=obj, plan=plan, packing=packing)[0]
        for k in (key, key, jax.random.fold_in(key, 1))
      ]
      if with_dropout
      else []
    )
    return loss, aux, grads, teacher_grads, y, pred, dropout

  with jax.default_matmul_precision("highest"):
    loss, aux, grads, teacher_grads, y, pred, dropout = jax.jit(
      everything, compiler_options=_JIT_OPTIONS
    )(params, teacher, batch, jnp.asarray(teacher_in.numpy()), jax.random.key(0))
  # The teacher never receives gradient (stop_gradient on its parameters and outputs).
  assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(teacher_grads))
  if with_dropout:
    a, b, c = (float(v) for v in dropout)
    assert a == b and a != c and a != float(loss)

  lm = loss_mask.numpy()
  k = plan.head_positions_per_row
  assert float(aux["head_gathered"]) == float(0 < k and lm.sum(1).max() <= k)
  out = {
    "targets": assert_close(y, t_y.numpy(), "targets"),
    "predictions": assert_close(np.asarray(pred)[lm], t_pred.detach().numpy(), "predictions"),
    "loss": assert_close(loss, t_loss.item(), "loss"),
  }
  assert float(aux["num_masked"]) == lm.sum()
  assert_close(aux["loss_sum"], t_loss.item(), "aux loss_sum")
  # data2vec 2.0 compute_var on the selected rows (torch .var is unbiased).
  assert_close(aux["target_var"], torch.sqrt(t_ym.var(dim=0) + 1e-6).mean().item(), "target_var")
  assert_close(
    aux["pred_var"], torch.sqrt(t_pred.detach().var(dim=0) + 1e-6).mean().item(), "pred_var"
  )
  ref_grads = {
    "encoder": hf_to_encoder_tree(_grads(STUDENT)),
    "head": head_tree(_grads(head), obj.head_layers),
  }
  out["grads"] = assert_tree_close(grads, ref_grads, "grad")
  if obj.loss_beta > 0:  # make sure both smooth-L1 branches were exercised
    d = np.abs(t_pred.detach().numpy() - t_ym.numpy())
    assert (d < obj.loss_beta).any() and (d >= obj.loss_beta).any()
  return out


# Every switch appears in some case with a full gradient comparison; switches are combined so the
# file stays fast (one XLA compile per case).
CASES = {
  # The yaml objective (top-2 of 3 blocks, per-layer LN, smooth-L1 beta 4, paper teacher input).
  "default": ObjectiveConfig(average_top_k_layers=2),
  "k3_mse_inv_sqrt_d_post_norms_ffn_residual_head3_selected": ObjectiveConfig(
    average_top_k_layers=3,
    loss_beta=0.0,
    loss_scale=0.0,
    layer_norm_target_layer=False,
    layer_norm_targets=True,
    instance_norm_targets=True,
    target_type="ffn_residual",
    head_layers=3,
    loss_positions="selected",
  ),
  "k1_batch_norm_layer_end_of_block_head1_beta1": ObjectiveConfig(
    average_top_k_layers=1,
    layer_norm_target_layer=False,
    batch_norm_target_layer=True,
    target_type="end_of_block",
    head_layers=1,
    loss_beta=1.0,
    loss_scale=0.5,
  ),
  "masked_only_instance_norm_layer_mse": ObjectiveConfig(
    teacher_input="masked_only",
    layer_norm_target_layer=False,
    instance_norm_target_layer=True,
    loss_beta=0.0,
    average_top_k_layers=3,
  ),
  "masked_only_all_norms": ObjectiveConfig(
    teacher_input="masked_only",
    batch_norm_target_layer=True,
    instance_norm_target_layer=True,
    layer_norm_targets=True,
    instance_norm_targets=True,
    average_top_k_layers=2,
  ),
}
# Gathered head positions (fairseq's x[masked] in static shapes): K fits every row, or one short
# of the fullest row so the batch must fall back to the every-position path -- same numbers.
_MOST_MASKED = int((BATCH["source"] == MASK).sum(1).max())
_MOST_SELECTED = int(BATCH["selected"].sum(1).max())
CASES = {name: (obj, {}) for name, obj in CASES.items()}  # the reference path: every position
CASES.update(
  {
    "default_gathered_heads": (
      ObjectiveConfig(average_top_k_layers=2),
      dict(head_positions_per_row=_MOST_MASKED),
    ),
    "gathered_heads_overflow_falls_back": (
      ObjectiveConfig(average_top_k_layers=2),
      dict(head_positions_per_row=_MOST_MASKED - 1),
    ),
    # What the trainer compiles for an exact masker bound: no fallback branch at all.
    "gathered_heads_no_fallback": (
      ObjectiveConfig(average_top_k_layers=2),
      dict(head_positions_per_row=_MOST_MASKED, head_overflow="error"),
    ),
    # Per-position targets (layer norms only) with the other target types: the teacher's last
    # block also runs on the gathered slots (K=1: no lower block enters the average).
    "gathered_end_of_block_k1_head1": (
      ObjectiveConfig(average_top_k_layers=1, target_type="end_of_block", head_layers=1),
      dict(head_positions_per_row=_MOST_MASKED),
    ),
    "gathered_ffn_residual_k3_layer_norm_targets": (
      ObjectiveConfig(average_top_k_layers=3, target_type="ffn_residual", layer_norm_targets=True),
      dict(head_positions_per_row=_MOST_MASKED + 1),
    ),
    # The gathered cases above also run the student's last block on the gathered slots only
    # (prune_last_block, the default); this one keeps the full last block.
    "selected_gathered_heads_mse_head3_unpruned": (
      ObjectiveConfig(
        loss_positions="selected", loss_beta=0.0, head_layers=3, average_top_k_layers=3
      ),
      dict(head_positions_per_row=_MOST_SELECTED + 2, prune_last_block=False),
    ),
  }
)
_WITH_DROPOUT = ("default", "default_gathered_heads")
# Compile fast: these programs are tiny, and XLA's optimisation passes dominate the test time.
_JIT_OPTIONS = {"xla_backend_optimization_level": 0}


@pytest.mark.parametrize("name", list(CASES))
def test_data2vec_matches_torch(name):
  obj, plan = CASES[name]
  diffs = _case(obj, plan, with_dropout=name in _WITH_DROPOUT)
  print(name, {k: f"{v:.2e}" for k, v in diffs.items()})


# Token packing (our encoders on the real tokens only, the reference padded). BATCH holds 38 real
# tokens in 3 rows of 14: one group at exactly that capacity, or one group per row.
_REAL = int((BATCH["target"] != PAD).sum())
PACKED_CASES = {
  # What the trainer runs: gathered heads, pruned last blocks, student and teacher packed.
  "default_gathered_heads": (*CASES["gathered_heads_no_fallback"], PackingSpec(1, _REAL)),
  # Every-position head and an unpruned student; the teacher packs its few selected tokens.
  "masked_only_teacher_selected_k3": (
    ObjectiveConfig(teacher_input="masked_only", loss_positions="selected", average_top_k_layers=3),
    {},
    PackingSpec(1, _REAL + 5),
  ),
  # Instance norm over time reads the pads: the teacher stays padded, the student packs; the
  # gathered path overflows and falls back to every position.
  "instance_norm_teacher_padded_fallback": (
    ObjectiveConfig(
      layer_norm_target_layer=False, instance_norm_target_layer=True, average_top_k_layers=2
    ),
    dict(head_positions_per_row=_MOST_MASKED - 1),
    PackingSpec(1, _REAL),
  ),
  # One group per row, unpruned, gathered 'selected' positions.
  "one_group_per_row_unpruned": (
    *CASES["selected_gathered_heads_mse_head3_unpruned"],
    PackingSpec(3, 14),
  ),
}


@pytest.mark.parametrize("name", list(PACKED_CASES))
def test_packed_data2vec_matches_torch(name):
  obj, plan, spec = PACKED_CASES[name]
  diffs = _case(obj, plan, with_dropout=name == "default_gathered_heads", packing=spec)
  print(name, spec, {k: f"{v:.2e}" for k, v in diffs.items()})


def test_packing_capacity_overflow_poisons_loss_and_grads():
  import flax.linen as nn

  obj, plan = CASES["gathered_heads_no_fallback"]
  obj = dataclasses.replace(obj, mask_id=MASK)
  fn, params = _loss_and_grads(obj, plan, packing=PackingSpec(1, _REAL - 1))
  (loss, aux), grads = jax.jit(fn, compiler_options=_JIT_OPTIONS)(nn.meta.unbox(params))
  # One real token has no slot: a NaN loss and NaN gradients, never the loss of the others.
  assert np.isnan(float(loss)) and float(aux["head_gathered"]) == 1
  assert all(np.any(np.isnan(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
  (loss, _), _ = jax.jit(
    _loss_and_grads(obj, plan, packing=PackingSpec(1, _REAL))[0], compiler_options=_JIT_OPTIONS
  )(nn.meta.unbox(params))
  assert np.isfinite(float(loss))


# ----------------------------------------------------------------------------------------------
# MLM baseline
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "head_positions", ["all", "fit", "overflow", "fit_no_fallback", "fit_no_fallback_packed"]
)
def test_mlm_matches_torch(head_positions):
  most = int((BATCH["selected"] & (BATCH["target"] != PAD)).sum(1).max())
  k = {
    "all": 0,
    "fit": most,
    "overflow": most - 1,
    "fit_no_fallback": most,
    "fit_no_fallback_packed": most,
  }[head_positions]
  packing = (
    PackingSpec(1, int((BATCH["target"] != PAD).sum()))
    if head_positions.endswith("packed")
    else None
  )
  obj = ObjectiveConfig(kind="mlm", mask_id=MASK)
  plan = plan_for(
    obj,
    head_positions_per_row=k,
    head_overflow="error" if "no_fallback" in head_positions else "fallback",
  )
  torch.manual_seed(5)
  dense, ln = torch.nn.Linear(D, D), torch.nn.LayerNorm(D, eps=1e-5)
  out_bias = torch.nn.Parameter(0.3 * torch.randn(V))
  with torch.no_grad():
    torch.nn.init.normal_(dense.weight, std=0.3)
    torch.nn.init.normal_(dense.bias, std=0.1)
    ln.weight.copy_(1 + 0.2 * torch.randn(D))
    torch.nn.init.normal_(ln.bias, std=0.1)
  src, tgt, sel = (torch.tensor(BATCH[k]) for k in ("source", "target", "selected"))
  STUDENT.zero_grad()
  for p in (*dense.parameters(), *ln.parameters(), out_bias):
    p.grad = None
  x, _ = _run(STUDENT, src)
  masked = tgt.masked_fill(~sel, PAD).ne(PAD)  # fairseq masked_lm: sample["target"].ne(pad)
  # fairseq RobertaLMHead: dense -> gelu -> layer_norm -> F.linear(x, tied weight) + bias
  h = ln(F.gelu(dense(x[masked])))
  logits = F.linear(h, STUDENT.embeddings.word_embeddings.weight) + out_bias
  t_loss = F.nll_loss(
    F.log_softmax(logits, -1, dtype=torch.float32),
    tgt[masked].long(),
    reduction="sum",
    ignore_index=PAD,
  )
  t_loss.backward()

  params = {
    "encoder": hf_to_encoder_tree(_state(STUDENT)),
    "head": {
      "dense": {"kernel": dense.weight.detach().numpy().T, "bias": dense.bias.detach().numpy()},
      "layer_norm": {"scale": ln.weight.detach().numpy(), "bias": ln.bias.detach().numpy()},
      "bias": out_bias.detach().numpy(),
    },
  }
  batch = {k: jnp.asarray(v) for k, v in BATCH.items()}
  with jax.default_matmul_precision("highest"):
    (loss, aux), grads = jax.jit(
      jax.value_and_grad(
        lambda p, b: loss_fn(p, None, b, None, objective=obj, plan=plan, packing=packing),
        has_aux=True,
      ),
      compiler_options=_JIT_OPTIONS,
    )(params, batch)
  assert_close(loss, t_loss.item(), "mlm loss")
  assert float(aux["num_masked"]) == masked.sum().item()
  acc = (logits.argmax(-1) == tgt[masked]).float().mean().item()
  assert abs(float(aux["accuracy"]) - acc) < 1e-6
  assert float(aux["head_gathered"]) == float(head_positions.startswith("fit"))
  ref = {
    "encoder": hf_to_encoder_tree(_grads(STUDENT)),
    "head": {
      "dense": {"kernel": dense.weight.grad.numpy().T, "bias": dense.bias.grad.numpy()},
      "layer_norm": {"scale": ln.weight.grad.numpy(), "bias": ln.bias.grad.numpy()},
      "bias": out_bias.grad.numpy(),
    },
  }
  assert_tree_close(grads, ref, "mlm grad")


def test_init_params_boxed_with_logical_axes():
  import flax.linen as nn

  from data2vec_jax.model.heads import RegressionHead

  is_box = lambda x: isinstance(x, nn.Partitioned)
  for kind in ("data2vec", "mlm"):
    model = PretrainingModel(CFG, ObjectiveConfig(kind=kind, mask_id=MASK))
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.full((1, 6), 5, jnp.int32))["params"]
    assert set(boxed) == {"encoder", "head"}
    assert all(is_box(x) for x in jax.tree_util.tree_leaves(boxed, is_leaf=is_box))
    head = boxed["head"]
    if kind == "data2vec":
      assert head["dense_0"]["kernel"].names == ("embed", "mlp")
      assert head["dense_1"]["kernel"].names == ("mlp", "embed")
      assert head["dense_0"]["kernel"].value.shape == (D, 2 * D)
    else:
      assert head["bias"].value.shape == (V,) and head["bias"].names == ("vocab",)
      assert head["dense"]["kernel"].value.shape == (D, D)
  # init_bert_params: N(0, 0.02) kernels, zero biases.
  values = nn.meta.unbox(
    RegressionHead(CFG.replace(hidden_size=256), 2).init(jax.random.key(0), jnp.zeros((1, 256)))[
      "params"
    ]
  )
  assert not np.any(values["dense_0"]["bias"]) and not np.any(values["dense_1"]["bias"])
  assert abs(float(np.std(values["dense_0"]["kernel"])) - 0.02) < 0.001


def test_config_from_dict_rejects_unknown_and_bad_values():
  assert ObjectiveConfig.from_dict({"loss_beta": 0.0}).loss_beta == 0.0
  with pytest.raises(ValueError, match="unknown"):
    ObjectiveConfig.from_dict({"loss_betta": 0.0})
  for bad in (
    {"teacher_input": "masked"},
    {"target_type": "attn"},
    {"kind": "bert"},
    {"average_top_k_layers": 0},
    {"loss_positions": "all"},
  ):
    with pytest.raises(ValueError):
      ObjectiveConfig(**bad)
  for bad in ({"head_positions_per_row": -1}, {"head_overflow": "truncate"}):
    with pytest.raises(ValueError):
      plan_for(ObjectiveConfig(), **bad)
  for prune in (False, True):  # the pruned teacher sees only K layers, so it checks itself
    with pytest.raises(ValueError, match="average_top_k_layers"):
      teacher_targets_fn(
        hf_to_encoder_tree(_state(TEACHER)),
        jnp.asarray(BATCH["target"]),
        config=CFG,
        objective=ObjectiveConfig(average_top_k_layers=L + 1),
        prune_last_block=prune,
      )


def _loss_and_grads(obj: ObjectiveConfig, plan: dict, packing: PackingSpec | None = None):
  params = {
    "encoder": hf_to_encoder_tree(_state(STUDENT)),
    "head": PretrainingModel(CFG, obj).init(jax.random.key(0), jnp.asarray(BATCH["source"]))[
      "params"
    ]["head"],
  }
  teacher = hf_to_encoder_tree(_state(TEACHER))
  batch = {k: jnp.asarray(v) for k, v in BATCH.items()}
  plan = plan_for(obj, **plan)
  fn = jax.value_and_grad(
    lambda p: loss_fn(p, teacher, batch, None, objective=obj, plan=plan, packing=packing),
    has_aux=True,
  )
  return fn, params


def test_head_overflow_error_compiles_no_fallback_and_poisons_a_row_beyond_k():
  import flax.linen as nn

  obj = ObjectiveConfig(average_top_k_layers=2, mask_id=MASK)
  fits = dict(head_positions_per_row=_MOST_MASKED, head_overflow="error")
  for plan, has_cond in ((fits, False), ({**fits, "head_overflow": "fallback"}, True)):
    fn, params = _loss_and_grads(obj, plan)
    assert ("cond[" in str(jax.make_jaxpr(fn)(nn.meta.unbox(params)))) == has_cond
  # One row more than K: no fallback exists, so the loss and every gradient are NaN (never a
  # finite loss over a subset of the positions), and the step says it did not gather.
  fn, params = _loss_and_grads(obj, {**fits, "head_positions_per_row": _MOST_MASKED - 1})
  (loss, aux), grads = jax.jit(fn, compiler_options=_JIT_OPTIONS)(nn.meta.unbox(params))
  assert np.isnan(float(loss)) and float(aux["head_gathered"]) == 0
  # Every parameter's gradient is hit (unused embedding rows keep a zero gradient), and the global
  # gradient norm that scales every update is NaN.
  assert all(np.any(np.isnan(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))


def test_check_host_batch_refuses_a_batch_beyond_k_on_the_host():
  counts = (BATCH["source"] == MASK).sum(1)
  obj = ObjectiveConfig(mask_id=MASK)
  check = lambda obj, **plan: plan_for(obj, **plan).check_host_batch(
    BATCH, config=CFG, objective=obj
  )
  check(obj, head_positions_per_row=_MOST_MASKED, head_overflow="error")  # fits: no error
  check(obj, head_positions_per_row=0, head_overflow="error")  # every position: no overflow
  check(obj, head_positions_per_row=_MOST_MASKED - 1)  # the step falls back: nothing to check
  row = int(np.argmax(counts))
  with pytest.raises(
    ValueError,
    match=rf"row {row} has {_MOST_MASKED} loss positions.*"
    rf"more than the {_MOST_MASKED - 1} head slots",
  ):
    check(obj, head_positions_per_row=_MOST_MASKED - 1, head_overflow="error")
  # 'selected' loss positions are counted the same way the step counts them.
  sel = dataclasses.replace(obj, loss_positions="selected")
  check(sel, head_positions_per_row=_MOST_SELECTED, head_overflow="error")
  with pytest.raises(ValueError, match="more than the .* head slots per row"):
    check(sel, head_positions_per_row=_MOST_SELECTED - 1, head_overflow="error")


def test_pruning_the_teacher_needs_per_position_targets():
  with pytest.raises(ValueError, match="per-position"):
    teacher_targets_fn(
      hf_to_encoder_tree(_state(TEACHER)),
      jnp.asarray(BATCH["target"]),
      config=CFG,
      objective=ObjectiveConfig(instance_norm_target_layer=True),
      prune_last_block=True,
    )


def test_fields_in_use_leave_data2vec2_fields_out_of_a_v1_config():
  from data2vec_jax.configs import demo
  from data2vec_jax.objective.data2vec2_config import Data2Vec2Config
  from data2vec_jax.objective.loss import DATA2VEC2_ONLY, fields_in_use

  # Every name is one of Data2Vec2Config's fields (ObjectiveConfig.data2vec2).
  assert set(DATA2VEC2_ONLY) == {f.name for f in dataclasses.fields(Data2Vec2Config)}
  v1 = fields_in_use(demo.get_config().objective)
  assert v1["kind"] == "data2vec" and not set(DATA2VEC2_ONLY) & set(v1)
  assert "average_top_k_layers" in v1 and "loss_beta" in v1
  v2 = fields_in_use(demo.get_config("recipe=data2vec2").objective)
  assert set(DATA2VEC2_ONLY) <= set(v2)
