"""data2vec 2.0 (text) against an independent PyTorch computation of fairseq's step.

The PyTorch side below is written from fairseq's `examples/data2vec/models/data2vec2.py`
(`forward`, `make_targets`, `d2v_loss`), `modalities/base.py` (`contextualized_features`,
`random_masking`, `decoder_input`), `modalities/modules.py` (`AltBlock`, `AltAttention`,
`Decoder1d`) and `modalities/text.py` (`TextLocalEncoder`) with plain torch ops on a state dict
in fairseq's layout (fused qkv, `modality_encoders.TEXT.*`, `blocks.*`, `_ema`), built here with
random non-trivial values. Our side receives the same tensors through the v2 converter
(`weights/fairseq_v2.py`), and the same recorded mask draw and mask-slot noise (the reference's
§14.5: with them a step replays exactly). Dropout is off (fp32). Compared: the decoder output,
the targets, the loss, and the gradient of every student parameter (the embedding tables' row
`padding_idx` exactly zero on both sides), each within 1e-5 of the
reference's largest magnitude (float32 eps is 1.2e-7; the sums here run over at most a few
hundred terms through a few layers).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data2vec_jax.model.config import tiny_config
from data2vec_jax.objective import data2vec2
from data2vec_jax.objective.data2vec2_config import Data2Vec2Config
from data2vec_jax.objective.loss import ObjectiveConfig, PretrainingModel
from data2vec_jax.weights import fairseq_v2

V, D, L, H, FF, PAD = 60, 32, 3, 4, 64, 1
B, T, M = 2, 16, 3
CFG = tiny_config(
  vocab_size=V,
  hidden_size=D,
  num_layers=L,
  num_heads=H,
  intermediate_size=FF,
  max_positions=T + 2,
  dropout=0.0,
  attention_dropout=0.0,
)
BASE = ObjectiveConfig(
  kind="data2vec2",
  average_top_k_layers=L,
  layer_norm_target_layer=False,
  instance_norm_target_layer=True,
  loss_beta=0.0,
  loss_scale=1.0,
  data2vec2=Data2Vec2Config(
    clone_batch=M,
    mask_prob=0.48,
    decoder_dim=24,
    decoder_kernel=5,
    decoder_layers=2,
    decoder_groups=1,
    projection_layers=2,
    decoder_input_dropout=0.0,
  ),
)
OBJECTIVES = {
  "base_text": BASE,
  # the large text yaml's targets (LN per layer, average, instance norm), top-2, grouped residual
  # decoder with one projection Linear
  "large_targets": dataclasses.replace(
    BASE,
    average_top_k_layers=2,
    layer_norm_target_layer=True,
    instance_norm_target_layer=False,
    instance_norm_targets=True,
    data2vec2=dataclasses.replace(
      BASE.data2vec2, decoder_dim=D, decoder_groups=2, decoder_residual=True, projection_layers=1
    ),
  ),
}
RTOL = 1e-5


# ----------------------------------------------------------------------------------------------
# the fairseq-layout state dict and the PyTorch computation
# ----------------------------------------------------------------------------------------------


def fairseq_state_dict(obj: ObjectiveConfig, seed: int) -> dict[str, torch.Tensor]:
  """Random student (+ a different `_ema` teacher) in fairseq's v2 key layout."""
  g = torch.Generator().manual_seed(seed)
  rnd = lambda *shape, std=0.05: torch.randn(*shape, generator=g) * std
  ln = lambda: (1 + rnd(D, std=0.1), rnd(D, std=0.1))
  local = fairseq_v2.LOCAL
  sd = {
    local + "embed_tokens.weight": rnd(V, D, std=0.3),
    local + "embed_positions.weight": rnd(T + 2, D, std=0.3),
  }
  sd[local + "layernorm_embedding.weight"], sd[local + "layernorm_embedding.bias"] = ln()

  def blocks(prefix):
    out = {}
    for i in range(L):
      p = f"{prefix}{i}."
      out[p + "attn.qkv.weight"], out[p + "attn.qkv.bias"] = rnd(3 * D, D), rnd(3 * D)
      out[p + "attn.proj.weight"], out[p + "attn.proj.bias"] = rnd(D, D), rnd(D)
      out[p + "norm1.weight"], out[p + "norm1.bias"] = ln()
      out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = rnd(FF, D), rnd(FF)
      out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = rnd(D, FF), rnd(D)
      out[p + "norm2.weight"], out[p + "norm2.bias"] = ln()
    return out

  sd.update(blocks("blocks."))
  dec = fairseq_v2.DECODER
  in_dim = D
  for j in range(obj.data2vec2.decoder_layers):
    k, groups = obj.data2vec2.decoder_kernel, obj.data2vec2.decoder_groups
    bound = (k * in_dim / groups) ** -0.5  # torch's Conv1d default scale
    sd[f"{dec}blocks.{j}.0.weight"] = rnd(obj.data2vec2.decoder_dim, in_dim // groups, k, std=bound)
    sd[f"{dec}blocks.{j}.0.bias"] = rnd(obj.data2vec2.decoder_dim, std=bound)
    in_dim = obj.data2vec2.decoder_dim
  if obj.data2vec2.projection_layers == 1:
    sd[dec + "proj.weight"], sd[dec + "proj.bias"] = rnd(D, in_dim), rnd(D)
  else:
    hidden = int(in_dim * obj.data2vec2.projection_ratio)
    sd[dec + "proj.0.weight"], sd[dec + "proj.0.bias"] = rnd(hidden, in_dim), rnd(hidden)
    sd[dec + "proj.2.weight"], sd[dec + "proj.2.bias"] = rnd(D, hidden), rnd(D)
  sd["_ema"] = blocks("")
  return sd


def alt_block(p, pre, x, padding_mask):
  """fairseq `AltBlock.forward` with layer_norm_first=False and ffn_targets=True (eval mode)."""
  b, n, c = x.shape
  qkv = F.linear(x, p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"])
  qkv = qkv.reshape(b, n, 3, H, c // H).permute(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]
  q = q * (c // H) ** -0.5
  attn = q @ k.transpose(-2, -1)
  if padding_mask is not None and padding_mask.any():
    attn = attn.masked_fill(padding_mask.unsqueeze(1).unsqueeze(2), float("-inf"))
  attn = attn.softmax(dim=-1, dtype=torch.float32)
  a = (attn @ v).transpose(1, 2).reshape(b, n, c)
  x = x + F.linear(a, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])
  r = x = F.layer_norm(x, (c,), p[pre + "norm1.weight"], p[pre + "norm1.bias"], 1e-5)
  h = F.gelu(F.linear(x, p[pre + "mlp.fc1.weight"], p[pre + "mlp.fc1.bias"]))
  t = F.linear(h, p[pre + "mlp.fc2.weight"], p[pre + "mlp.fc2.bias"])
  x = F.layer_norm(r + t, (c,), p[pre + "norm2.weight"], p[pre + "norm2.bias"], 1e-5)
  return x, t


def torch_v2(sd, tokens, uniform, noise, obj):
  """(pred [N,T,D], targets [N,T,D], loss_sum, mask [N,T]) of fairseq's text step."""
  local, dec = fairseq_v2.LOCAL, fairseq_v2.DECODER
  pad = tokens.eq(PAD)
  # TextLocalEncoder: no pad zeroing; both tables are built with padding_idx (row PAD: no grad)
  x = F.embedding(tokens, sd[local + "embed_tokens.weight"], padding_idx=PAD)
  positions = torch.cumsum(~pad, dim=1) * (~pad) + PAD
  x = x + F.embedding(positions, sd[local + "embed_positions.weight"], padding_idx=PAD)
  x = F.layer_norm(
    x, (D,), sd[local + "layernorm_embedding.weight"], sd[local + "layernorm_embedding.bias"], 1e-5
  )
  local_features = x
  # contextualized_features: clone, then random_masking
  x = x.repeat_interleave(M, 0)
  padc = pad.repeat_interleave(M, 0)
  n, t = padc.shape
  len_keep = int(t * (1 - obj.data2vec2.mask_prob))
  ids_shuffle = uniform.argsort(dim=1)
  ids_restore = ids_shuffle.argsort(dim=1)
  ids_keep = ids_shuffle[:, :len_keep]
  x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
  mask = torch.ones(n, t)
  mask[:, :len_keep] = 0
  mask = torch.gather(mask, 1, ids_restore)
  kpad = torch.gather(padc, 1, ids_keep)
  for i in range(L):
    x, _ = alt_block(sd, f"blocks.{i}.", x, kpad)
  # decoder_input + Decoder1d
  x = torch.cat([x, noise], dim=1)
  x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))
  h = x.transpose(1, 2)
  residual = h
  for j in range(obj.data2vec2.decoder_layers):
    h = F.conv1d(
      h,
      sd[f"{dec}blocks.{j}.0.weight"],
      sd[f"{dec}blocks.{j}.0.bias"],
      padding=obj.data2vec2.decoder_kernel // 2,
      groups=obj.data2vec2.decoder_groups,
    )
    h = F.layer_norm(h.transpose(1, 2), (obj.data2vec2.decoder_dim,), eps=1e-5).transpose(1, 2)
    h = F.gelu(h)
    if obj.data2vec2.decoder_residual and residual.size(1) == h.size(1):
      h = h + residual
    residual = h
  h = h.transpose(1, 2)
  if obj.data2vec2.projection_layers == 1:
    pred = F.linear(h, sd[dec + "proj.weight"], sd[dec + "proj.bias"])
  else:
    h = F.gelu(F.linear(h, sd[dec + "proj.0.weight"], sd[dec + "proj.0.bias"]))
    pred = F.linear(h, sd[dec + "proj.2.weight"], sd[dec + "proj.2.bias"])
  # teacher: the EMA blocks on the student's embedding output, eval mode, no grad
  with torch.no_grad():
    y = local_features.detach()
    feats = []
    for i in range(L):
      y, lr = alt_block(sd["_ema"], f"{i}.", y, pad)
      feats.append(lr)
    layers = feats[-obj.average_top_k_layers :]
    if obj.instance_norm_target_layer:
      layers = [F.instance_norm(tl.float().transpose(1, 2)).transpose(1, 2) for tl in layers]
    if obj.layer_norm_target_layer:
      layers = [F.layer_norm(tl.float(), tl.shape[-1:]) for tl in layers]
    y = sum(layers) / len(layers)
    if obj.instance_norm_targets:
      y = F.instance_norm(y.transpose(1, 2)).transpose(1, 2)
    y = y.repeat_interleave(M, 0)
  masked_b = mask.bool()
  loss = F.mse_loss(pred[masked_b].float(), y[masked_b], reduction="none").sum()
  return pred, y, loss, mask


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def assert_close(ours, ref, what: str, rtol: float = RTOL) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
  rel = np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30)
  assert rel <= rtol, f"{what}: max |diff| / max |ref| = {rel:.3g} > {rtol}"
  return rel


def tokens_batch(seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, V, size=(B, T)).astype(np.int64)
  tokens[:, 0] = 0
  tokens[1, -3:] = PAD  # a padded row: pads are kept or masked (and scored), as in fairseq
  return tokens


def recorded_draws(obj: ObjectiveConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
  g = torch.Generator().manual_seed(100 + seed)
  k = data2vec2.kept_count(T, obj.data2vec2.mask_prob)
  uniform = torch.rand(B * M, T, generator=g)
  noise = torch.randn(B * M, T - k, D, generator=g) * obj.data2vec2.mask_noise_std
  return uniform, noise


def _numpy(sd):
  return {
    k: (
      {kk: vv.detach().numpy() for kk, vv in v.items()}
      if isinstance(v, dict)
      else v.detach().numpy()
    )
    for k, v in sd.items()
  }


@pytest.fixture(scope="module", params=sorted(OBJECTIVES))
def case(request):
  obj = OBJECTIVES[request.param]
  seed = len(request.param)
  sd = fairseq_state_dict(obj, seed)
  student = [k for k in sd if k != "_ema"]
  for k in student:
    sd[k].requires_grad_(True)
  tokens = tokens_batch(seed)
  uniform, noise = recorded_draws(obj, seed)
  pred, y, loss, mask = torch_v2(sd, torch.from_numpy(tokens), uniform, noise, obj)
  loss.backward()
  grads = {k: sd[k].grad.numpy().copy() for k in student}
  params, ema = fairseq_v2.params_from_fairseq_v2(_numpy(sd), CFG)
  grad_tree, _ = fairseq_v2.params_from_fairseq_v2(grads, CFG)
  batch = {
    "target": jnp.asarray(tokens, jnp.int32),
    data2vec2.MASK_UNIFORM: jnp.asarray(uniform.numpy()),
    data2vec2.MASK_NOISE: jnp.asarray(noise.numpy()),
  }
  ref = dict(
    pred=pred.detach().numpy(),
    y=y.numpy(),
    loss=float(loss.detach()),
    mask=mask.numpy(),
    grads=grad_tree,
  )
  return request.param, obj, params, ema, batch, ref


@functools.partial(jax.jit, static_argnums=(0, 4))
def _loss(obj, params, ema, batch, drop_masked=True):
  return data2vec2.loss_fn(
    params, ema, batch, None, config=CFG, objective=obj, drop_masked=drop_masked
  )


# One compiled program per (objective, path), shared by the parity and the plain-path tests.
_grad = jax.jit(
  jax.value_and_grad(_loss.__wrapped__, argnums=1, has_aux=True), static_argnums=(0, 4)
)


@functools.partial(jax.jit, static_argnums=0)
def _decoder_output_and_targets(obj, params, ema, batch):
  masks = data2vec2.random_masking(batch[data2vec2.MASK_UNIFORM], obj.data2vec2.mask_prob)
  model = PretrainingModel(CFG, obj)
  out = model.apply(
    {"params": params},
    batch["target"],
    clones=M,
    keep_index=masks.keep,
    method=PretrainingModel.encode,
  )
  full = data2vec2.decoder_input(out.last_hidden_state, batch[data2vec2.MASK_NOISE], masks.restore)
  pred = model.apply({"params": params}, full, method=PretrainingModel.predict)
  y = data2vec2.v2_targets(ema, batch["target"], out.embedding_output, config=CFG, objective=obj)
  return masks.mask, pred, y


# ----------------------------------------------------------------------------------------------
# parity
# ----------------------------------------------------------------------------------------------


def test_decoder_output_targets_and_mask_match_torch(case):
  name, obj, params, ema, batch, ref = case
  mask, pred, y = _decoder_output_and_targets(obj, params, ema, batch)
  np.testing.assert_array_equal(np.asarray(mask), ref["mask"].astype(bool))
  assert_close(pred, ref["pred"], f"{name}: decoder output")
  assert_close(jnp.repeat(y, M, axis=0), ref["y"], f"{name}: targets")


def test_loss_and_every_student_gradient_match_torch(case):
  name, obj, params, ema, batch, ref = case
  (loss, aux), grads = _grad(obj, params, ema, batch, True)
  assert_close(loss, ref["loss"], f"{name}: loss")
  assert float(aux["num_masked"]) == B * M * (T - data2vec2.kept_count(T, obj.data2vec2.mask_prob))
  flat_ours = jax.tree_util.tree_flatten_with_path(grads)[0]
  flat_ref = dict(jax.tree_util.tree_flatten_with_path(ref["grads"])[0])
  assert len(flat_ours) == len(flat_ref)
  for path, leaf in flat_ours:
    assert_close(leaf, flat_ref[path], f"{name}: grad {jax.tree_util.keystr(path)}")
  # The embedding tables' row PAD: exactly zero on both sides (fairseq's padding_idx).
  for table in ("token_embedding", "position_embedding"):
    ours = np.asarray(grads["encoder"]["embeddings"][table]["embedding"])
    ref_table = np.asarray(ref["grads"]["encoder"]["embeddings"][table]["embedding"])
    assert np.all(ours[PAD] == 0) and np.all(ref_table[PAD] == 0), (name, table)


def test_plain_path_equals_the_kept_token_gather(case):
  """Every position encoded with the masked keys hidden == only the kept tokens encoded."""
  name, obj, params, ema, batch, _ = case
  (fast, _), g_fast = _grad(obj, params, ema, batch, True)
  (plain, _), g_plain = _grad(obj, params, ema, batch, False)
  assert_close(fast, plain, f"{name}: loss")
  for (path, a), b in zip(
    jax.tree_util.tree_flatten_with_path(g_fast)[0], jax.tree_util.tree_leaves(g_plain)
  ):
    assert_close(a, b, f"{name}: grad {jax.tree_util.keystr(path)}")


def test_the_noise_in_the_masked_slots_matters():
  """Why the step accepts recorded noise: another N(0, 0.01) draw moves the loss well above
  the parity tolerance (the affine-free decoder LayerNorm rescales mostly-noise windows)."""
  obj = BASE
  sd = _numpy(fairseq_state_dict(obj, 0))
  params, ema = fairseq_v2.params_from_fairseq_v2(sd, CFG)
  uniform, noise = recorded_draws(obj, 0)
  batch = {
    "target": jnp.asarray(tokens_batch(0), jnp.int32),
    data2vec2.MASK_UNIFORM: jnp.asarray(uniform.numpy()),
    data2vec2.MASK_NOISE: jnp.asarray(noise.numpy()),
  }
  a = float(_loss(obj, params, ema, batch, True)[0])
  batch[data2vec2.MASK_NOISE] = jnp.asarray(np.roll(noise.numpy(), 1, axis=1))
  b = float(_loss(obj, params, ema, batch, True)[0])
  assert abs(a - b) / abs(a) > RTOL


# ----------------------------------------------------------------------------------------------
# masking statistics and determinism
# ----------------------------------------------------------------------------------------------


def test_random_masking_keeps_exactly_k_per_row_and_is_uniform():
  n, t, p = 4000, 20, 0.48
  masks = data2vec2.random_masking(jax.random.uniform(jax.random.PRNGKey(0), (n, t)), p)
  k = data2vec2.kept_count(t, p)
  assert k == int(t * 0.52) == 10
  mask = np.asarray(masks.mask)
  np.testing.assert_array_equal(mask.sum(1), t - k)
  keep = np.asarray(masks.keep)
  assert not mask[np.arange(n)[:, None], keep].any()  # kept positions are the unmasked ones
  assert (np.sort(keep, 1)[:, 1:] > np.sort(keep, 1)[:, :-1]).all()  # distinct
  # every position masked with probability (t-k)/t: 4 binomial standard deviations
  freq = mask.mean(0)
  sd = np.sqrt(0.5 * 0.5 / n)
  assert np.all(np.abs(freq - (t - k) / t) < 4 * sd), freq
  # the restore permutation undoes the shuffle
  order = np.concatenate([keep, np.argsort(np.asarray(masks.restore), 1)[:, k:]], 1)
  np.testing.assert_array_equal(
    np.take_along_axis(order, np.asarray(masks.restore), 1), np.tile(np.arange(t), (n, 1))
  )
  # the kept count is fairseq's for the base recipe
  assert data2vec2.kept_count(512, 0.48) == 266


def test_masks_are_a_pure_function_of_the_key_and_clones_differ():
  obj = BASE
  init = jax.jit(PretrainingModel(CFG, obj).init)
  params = nn.meta.unbox(init(jax.random.PRNGKey(0), jnp.full((1, T), 5, jnp.int32)))["params"]
  ema = {"layers": params["encoder"]["layers"]}
  batch = {"target": jnp.asarray(tokens_batch(1), jnp.int32)}
  keyed = jax.jit(
    lambda params, ema, batch, key: data2vec2.loss_fn(
      params, ema, batch, key, config=CFG, objective=obj
    )
  )
  run = lambda key: (
    _loss(obj, params, ema, batch, True) if key is None else keyed(params, ema, batch, key)
  )
  a, b = run(jax.random.PRNGKey(3)), run(jax.random.PRNGKey(3))
  assert float(a[0]) == float(b[0])
  c = run(jax.random.PRNGKey(4))
  assert float(a[0]) != float(c[0])
  # validation (no key) is deterministic too
  assert float(run(None)[0]) == float(run(None)[0])
  # clones of one sentence get independent masks
  u = jax.random.uniform(jax.random.PRNGKey(5), (B * M, T))
  mask = np.asarray(data2vec2.random_masking(u, obj.data2vec2.mask_prob).mask).reshape(B, M, T)
  assert not (mask[:, :1] == mask[:, 1:]).all(axis=-1).any()


def test_objective_config_rejects_bad_v2_values():
  for bad in (
    dict(clone_batch=0),
    dict(mask_prob=1.0),
    dict(decoder_kernel=4),
    dict(decoder_layers=0),
    dict(mask_noise_std=-1.0),
  ):
    with pytest.raises(ValueError):
      dataclasses.replace(BASE.data2vec2, **bad)
