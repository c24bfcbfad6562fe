"""The data2vec 2.0 (text) objective: masking, cloned student, decoder, targets and loss.

fairseq `Data2VecMultiModel.forward` with the text modality (docs/reference/data2vec2_text_reference.md
§7 gives the step with shapes; B sentences of T tokens, M = clone_batch, N = B*M, K kept):

  e        = student embeddings(tokens)         [B, T, D]  token + position, LN, dropout; pads
                                                           NOT zeroed
  keep, restore, mask = random_masking(u)        u ~ U[0,1)^[N, T]; K = int(T * (1 - mask_prob))
                                                 kept per row (argsort of u: the smallest kept)
  x        = student blocks(gather(repeat(e, M), keep))      [N, K, D]  masked tokens dropped
  x        = dropout(x, decoder_input_dropout)
  full     = gather(concat([x, noise]), restore)              [N, T, D]  noise ~ N(0, std^2),
                                                              [N, T-K, D], fresh every step
  pred     = Decoder1d(full)                                  [N, T, D]
  y        = make_targets(teacher blocks(stop_gradient(e)))   [B, T, D]  EMA blocks, eval mode;
                                                              every block's FFN output,
                                                              instance norm over time, mean
  loss_sum = loss_scale * sum_{mask} sum_d l(pred - repeat(y, M))   l = squared error (beta 0)

and the train step divides by the number of masked positions of the whole batch (all clones,
all devices), as fairseq's trainer. The step's `masked_fraction` metric is then masked positions
of all clones per real sentence token, about M * mask_prob (not a fraction: 3.8 at M = 8). Masked positions include pads and <s> (fairseq scores them);
the kept count comes from the padded T; the decoder sees the noise at pads too (§14.3-4).

Hyper-parameters: `ObjectiveConfig.data2vec2`, a `Data2Vec2Config` (objective/data2vec2_config.py:
clone_batch, mask_prob, mask_noise_std, the decoder); the v1 fields it shares (top-K, target
norms, loss_beta, loss_scale) are the `ObjectiveConfig`'s own.

Randomness. One key per (micro-)batch gives the mask, the noise, the student's dropout and the
decoder-input dropout (independent `fold_in`s), so a step is a pure function of (state.rng,
step): exact on resume. fairseq seeds its masks from (seed, update, sum of sample ids); the port
keeps determinism per (seed, update) and cannot reproduce torch's stream (§4). A batch may carry
the uniform draw and the noise (`MASK_UNIFORM`, `MASK_NOISE`, [N, ...] rows) to replay a
recorded step exactly: the parity tests do (the noise moves the loss ~1e-3, §14.5).

Execution: `drop_masked=True` (the default, fairseq's) runs the blocks on the K kept tokens of
each row only; False runs them on all T positions with the masked keys hidden from attention
and reads the kept positions: the same values (attention is permutation-equivariant and
position is in the embeddings), proved equal in tests/objective/test_data2vec2.py; it exists as the plain
form of the gather, not for speed.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.encoder import EncoderOutput, take_positions
from data2vec_jax.objective.data2vec2_config import Data2Vec2Config
from data2vec_jax.objective.loss import ObjectiveConfig, PretrainingModel, scored
from data2vec_jax.objective.targets import make_targets, teacher_layer_features

MASK_UNIFORM = "v2_mask_uniform"  # optional batch entry [N, T] float32: u of random_masking
MASK_NOISE = "v2_mask_noise"  # optional batch entry [N, T-K, D]: the masked slots' values
# Validation runs without a dropout key; its masks and noise come from this fixed key, so every
# evaluation scores the same views.
EVAL_KEY_SEED = 0


class Masks(NamedTuple):
  """One random masking of N rows of T positions (fairseq `random_masking`).

  keep: [N, K] int32 kept positions, in the order of their draw (not positional).
  restore: [N, T] int32, the inverse permutation: concat([kept, masked])[restore] is token order.
  mask: [N, T] bool, True at the T - K masked positions.
  """

  keep: jax.Array
  restore: jax.Array
  mask: jax.Array


def kept_count(length: int, mask_prob: float) -> int:
  """K = int(T * (1 - mask_prob)), as fairseq (266 of 512 at 0.48); the same for every row."""
  return int(length * (1 - mask_prob))


def random_masking(uniform: jax.Array, mask_prob: float) -> Masks:
  """MAE-style masking from u [N, T] (uniform): the K positions of smallest u are kept."""
  k = kept_count(uniform.shape[1], mask_prob)
  shuffle = jnp.argsort(uniform, axis=1).astype(jnp.int32)
  restore = jnp.argsort(shuffle, axis=1).astype(jnp.int32)
  return Masks(keep=shuffle[:, :k], restore=restore, mask=restore >= k)


def decoder_input(kept: jax.Array, noise: jax.Array, restore: jax.Array) -> jax.Array:
  """fairseq `decoder_input`: kept [N, K, D] and noise [N, T-K, D] -> [N, T, D] in token order."""
  full = jnp.concatenate([kept, noise.astype(kept.dtype)], axis=1)
  return take_positions(full, restore)


def v2_targets(
  teacher_encoder_params: Any,
  tokens: jax.Array,
  embedded: jax.Array,
  *,
  config: EncoderConfig,
  objective: ObjectiveConfig,
) -> jax.Array:
  """[B, T, D] float32 targets: the teacher's blocks (eval mode) on the student's embedding
  output `embedded` [B, T, D], top-K features normalised and averaged; no gradient."""
  layers = jax.lax.stop_gradient({"layers": teacher_encoder_params["layers"]})
  features = teacher_layer_features(
    layers,
    tokens,
    config=config,
    target_type=objective.target_type,
    embedded=jax.lax.stop_gradient(embedded),
  )
  return jax.lax.stop_gradient(make_targets(features, objective))


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def loss_fn(
  params: Any,
  teacher_encoder_params: Any,
  batch: Mapping[str, jax.Array],
  rng: jax.Array | None,
  *,
  config: EncoderConfig,
  objective: ObjectiveConfig,
  drop_masked: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Summed data2vec 2.0 loss of one (micro-)batch and its metrics.

  Args:
    params: {'encoder': ..., 'head': Decoder1d tree} student parameters (unboxed).
    teacher_encoder_params: the teacher's encoder tree; only its 'layers' are read (the EMA
      blocks; the teacher's input is the student's embedding output).
    batch: 'target' [B, T] int32 sentences (pads = pad_id); optional `MASK_UNIFORM` [B*M, T]
      and `MASK_NOISE` [B*M, T-K, D] replay a given masking and noise.
    rng: the step's key (masks, noise, dropouts); None: no dropout, masks and noise from a
      fixed key (validation).
    drop_masked: the student's blocks run on the kept tokens only (see module docstring).

  Returns:
    loss_sum: float32, the SUM over the masked positions of all clones and the D dims.
    aux: 'num_masked' (B*M*(T-K)) and 'loss_sum' (sums), 'target_var' / 'pred_var' (the
      collapse monitors over the masked positions).
  """
  if teacher_encoder_params is None:
    raise ValueError("the data2vec2 objective needs teacher_encoder_params")
  tokens = batch["target"]
  v2 = objective.data2vec2
  m = v2.clone_batch
  deterministic = rng is None
  base = jax.random.PRNGKey(EVAL_KEY_SEED) if rng is None else rng
  mask_key, noise_key, encoder_key, decoder_key = (jax.random.fold_in(base, i) for i in range(4))
  masks, noise = masks_and_noise(batch, mask_key, noise_key, hidden_size=config.hidden_size, v2=v2)

  model = PretrainingModel(config, objective)
  out, kept = student_kept(
    model,
    params,
    tokens,
    masks,
    dropout_rng=None if deterministic else encoder_key,
    drop_masked=drop_masked,
  )  # kept: [N, K, D]
  kept = _dropout(kept, v2.decoder_input_dropout, None if deterministic else decoder_key)
  pred = model.apply(
    {"params": params},
    decoder_input(kept, noise, masks.restore),
    method=PretrainingModel.predict,
  )  # [N, T, D]

  y = v2_targets(
    teacher_encoder_params, tokens, out.embedding_output, config=config, objective=objective
  )
  y = jnp.repeat(y, m, axis=0)  # [N, T, D], row b*M+j is clone j of sentence b
  loss_sum, aux = scored(pred, y, jnp.repeat(tokens, m, axis=0), masks.mask, objective)
  num_masked = jnp.sum(masks.mask.astype(jnp.float32))
  return loss_sum, {"num_masked": num_masked, "loss_sum": loss_sum, **aux}


def masks_and_noise(
  batch: Mapping[str, jax.Array],
  mask_key: jax.Array,
  noise_key: jax.Array,
  *,
  hidden_size: int,
  v2: Data2Vec2Config,
) -> tuple[Masks, jax.Array]:
  """The masks of the N = B*M student rows and the decoder's noise [N, T-K, D] float32, drawn
  from the keys, or the batch's `MASK_UNIFORM` / `MASK_NOISE` when it carries them."""
  b, t = batch["target"].shape
  n = b * v2.clone_batch
  k = kept_count(t, v2.mask_prob)
  if not 0 < k < t:
    raise ValueError(f"mask_prob={v2.mask_prob} keeps {k} of {t} positions per row")
  uniform = batch.get(MASK_UNIFORM)
  if uniform is None:
    uniform = jax.random.uniform(mask_key, (n, t))
  masks = random_masking(uniform, v2.mask_prob)
  noise = batch.get(MASK_NOISE)
  if noise is None:
    noise = v2.mask_noise_std * jax.random.normal(noise_key, (n, t - k, hidden_size), jnp.float32)
  return masks, noise


def student_kept(
  model: PretrainingModel,
  params: Any,
  tokens: jax.Array,
  masks: Masks,
  *,
  dropout_rng: jax.Array | None,
  drop_masked: bool,
) -> tuple[EncoderOutput, jax.Array]:
  """The student on the M clones of tokens [B, T]: its output and the kept positions' last
  hidden states [N, K, D] (blocks on the kept tokens only, or on all T with the masked keys
  hidden: see the module docstring)."""
  variables = {"params": params}
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  clones = model.objective.data2vec2.clone_batch
  if drop_masked:
    out = model.apply(
      variables,
      tokens,
      deterministic=dropout_rng is None,
      clones=clones,
      keep_index=masks.keep,
      rngs=rngs,
      method=PretrainingModel.encode,
    )
    return out, out.last_hidden_state  # [N, K, D]
  out = model.apply(
    variables,
    tokens,
    deterministic=dropout_rng is None,
    clones=clones,
    key_mask=~masks.mask,
    rngs=rngs,
    method=PretrainingModel.encode,
  )
  return out, take_positions(out.last_hidden_state, masks.keep)  # [N, K, D]
