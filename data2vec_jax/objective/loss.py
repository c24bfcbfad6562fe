"""The data2vec (v1, text) objective and the RoBERTa MLM baseline: model, loss and metrics.

data2vec (fairseq `Data2VecTextEncoder.forward`, docs/reference/data2vec_text_reference.md §1.5):

  x    = student(source)            last block output, train mode (dropout)
  y    = targets(teacher(teacher_in))   top-K FFN outputs, normalised, averaged (`data2vec_jax/objective/targets.py`)
  loss = loss_scale * sum_{t in loss positions} sum_d  l(head(x_t)_d - y_t,d)

with l = PyTorch's smooth-L1 with `beta` (`0.5 d^2 / beta` if |d| < beta else `|d| - beta/2`;
note `optax.huber_loss` is beta times this) or the squared error when beta == 0. The loss is a
SUM: fairseq divides the gradient by the number of loss positions of the whole global batch
(docs/reference/data2vec_text_reference.md §1.6), which only the train step knows.

Loss positions (`loss_positions`): 'mask_token' = `source == <mask>` (the reference's
`src_tokens.eq(mask_idx)`; with BERT 80/10/10 masking that is only the 80% replaced by <mask>,
fairseq issue #4229), or 'selected' = every position the masker chose. The MLM baseline always
uses the selected positions (fairseq `masked_lm` criterion: `target != pad`).

Teacher input (`teacher_input`, docs/reference/data2vec_text_reference.md §3.3, AMBIGUOUS): 'unmasked' (default, the paper) feeds
the original tokens; 'masked_only' reproduces the published fairseq code, whose teacher gets
`target_tokens` = the original token at the masker's *selected* positions and <pad> elsewhere, so
the selected tokens attend only to each other at compacted positions (the encoder's
`make_positions` does the compaction, as in fairseq).

Everything has static shapes (positions are weights, never boolean indexing), so it jit-compiles.

`loss_fn` here is the paper's math read plainly: the student and the teacher run on every
position of the padded rows, the head on every position, the loss weights select. The
torch-parity tests pin it down. The training step runs the same loss faster, with the head on
gathered positions, pruned last blocks and packed tokens (`data2vec_jax/objective/training_loss.py`, decided by the
`execution.ExecutionPlan`), and tests/objective/test_execution.py proves it equal to this one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from data2vec_jax import strict_config
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.encoder import Encoder, EncoderOutput
from data2vec_jax.model.heads import MaskedLMHead, RegressionHead
from data2vec_jax.objective import data2vec2_config
from data2vec_jax.objective.data2vec2_config import Data2Vec2Config
from data2vec_jax.objective.targets import TARGET_TYPES, teacher_targets
from data2vec_jax.speed import packing as packing_lib

KINDS = ("data2vec", "mlm", "data2vec2")
# The fields of a `config.objective` section that only data2vec 2.0 (kind 'data2vec2') reads:
# `ObjectiveConfig.data2vec2`'s.
DATA2VEC2_ONLY = data2vec2_config.FIELDS
TEACHER_INPUTS = ("unmasked", "masked_only")
LOSS_POSITIONS = ("mask_token", "selected")
VAR_EPS = 1e-6  # data2vec 2.0 compute_var


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig(strict_config.StrictConfig):
  """What is predicted and how it is scored; defaults are the data2vec text yaml (docs/reference/data2vec_text_reference.md §4).

  Attributes:
    kind: 'data2vec' (EMA-teacher regression), 'mlm' (RoBERTa baseline, tied LM head) or
      'data2vec2' (`data2vec_jax/objective/data2vec2.py`).
    average_top_k_layers: K, how many of the top blocks are averaged (yaml 10).
    layer_norm_target_layer: parameter-free LayerNorm over channels per layer (yaml true).
    instance_norm_target_layer: instance norm over time per layer (data2vec 2.0 / speech).
    batch_norm_target_layer: batch norm (batch statistics) per layer.
    layer_norm_targets: LayerNorm after averaging.
    instance_norm_targets: instance norm after averaging.
    target_type: 'ffn' (FFN output, the paper's choice), 'ffn_residual' or 'end_of_block'.
    head_layers: regression head depth (yaml 2: Linear(D,2D)-GELU-Linear(2D,D); 1: Linear(D,D)).
    loss_beta: smooth-L1 beta in PyTorch's convention; 0 = squared error (yaml 4).
    loss_scale: multiplies the summed loss; <= 0 means 1/sqrt(D) (yaml 1). Not used by 'mlm'.
    teacher_input: 'unmasked' (paper) or 'masked_only' (published fairseq code), see module doc.
    loss_positions: 'mask_token' (reference: source == <mask>) or 'selected'; data2vec only.
    mask_id: id of <mask> (50264 in the released dictionary).
    data2vec2: data2vec 2.0's own fields (`objective/data2vec2_config.py`: clone_batch,
      mask_prob, the decoder, ...), read only by kind 'data2vec2'. `from_dict` also takes them
      flat, as a `config.objective` section (`--config.objective.decoder_dim`) and the
      recipe.json of runs from before issue 26 keep them.
  """

  kind: str = "data2vec"
  average_top_k_layers: int = 10
  layer_norm_target_layer: bool = True
  instance_norm_target_layer: bool = False
  batch_norm_target_layer: bool = False
  layer_norm_targets: bool = False
  instance_norm_targets: bool = False
  target_type: str = "ffn"
  head_layers: int = 2
  loss_beta: float = 4.0
  loss_scale: float = 1.0
  teacher_input: str = "unmasked"
  loss_positions: str = "mask_token"
  mask_id: int = 50264
  data2vec2: Data2Vec2Config = dataclasses.field(default_factory=Data2Vec2Config)

  def __post_init__(self):
    for name, allowed in (
      ("kind", KINDS),
      ("target_type", TARGET_TYPES),
      ("teacher_input", TEACHER_INPUTS),
      ("loss_positions", LOSS_POSITIONS),
    ):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")
    if self.average_top_k_layers < 1:
      raise ValueError(f"average_top_k_layers must be >= 1, got {self.average_top_k_layers}")
    if self.head_layers < 1:
      raise ValueError(f"head_layers must be >= 1, got {self.head_layers}")
    if self.loss_beta < 0:
      raise ValueError(f"loss_beta must be >= 0, got {self.loss_beta}")

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ObjectiveConfig":
    """Builds the config from a `config.objective` section or a recipe.json 'objective' (unknown
    keys refused). data2vec 2.0's fields come flat (the config section; recipe.json before
    issue 26) or as a nested 'data2vec2' mapping (recipe.json since), not both."""
    values = dict(values.items())
    known = {f.name for f in dataclasses.fields(cls)} | set(DATA2VEC2_ONLY)
    if unknown := sorted(set(values) - known):
      # The config section's names: data2vec 2.0's flat, as in --config.objective.decoder_dim.
      raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known keys: {sorted(known)}")
    flat = {k: values.pop(k) for k in DATA2VEC2_ONLY if k in values}
    nested = dict(values.pop("data2vec2", None) or {})
    if flat and nested:
      raise ValueError(f"data2vec2 fields both flat {sorted(flat)} and nested {sorted(nested)}")
    values["data2vec2"] = Data2Vec2Config.from_dict(flat or nested)
    return strict_config.from_dict(cls, values)


def fields_in_use(objective: Mapping[str, Any]) -> dict[str, Any]:
  """The fields of an objective config (a `config.objective` section or ObjectiveConfig's
  dict) that its kind reads: data2vec 2.0's own (DATA2VEC2_ONLY, flat, or the nested
  'data2vec2') only for kind 'data2vec2'."""
  kind = objective.get("kind", "data2vec")
  v2_only = {*DATA2VEC2_ONLY, "data2vec2"}
  return {k: v for k, v in dict(objective).items() if kind == "data2vec2" or k not in v2_only}


class PretrainingModel(nn.Module):
  """Student encoder + head. Params: {'encoder': Encoder tree, 'head': head tree}.

  `head` is a `RegressionHead` (data2vec), a `MaskedLMHead` (mlm, decoder tied to
  encoder/embeddings/token_embedding) or data2vec 2.0's convolutional `Decoder1d` (data2vec2,
  whose encoder does not zero the pad embeddings). Every parameter carries logical axis names, so
  `.init(rng, tokens)` returns `nn.Partitioned`-boxed params. `encode` and `predict` run the two
  halves separately (same parameter paths and dropout streams), so the loss can gather positions
  between them.
  """

  config: EncoderConfig
  objective: ObjectiveConfig

  def setup(self):
    obj = self.objective
    self.encoder = Encoder(self.config, zero_pads=obj.kind != "data2vec2")
    if obj.kind == "data2vec":
      self.head = RegressionHead(self.config, obj.head_layers)
    elif obj.kind == "data2vec2":
      self.head = data2vec2_config.make_decoder(self.config, obj.data2vec2)
    else:
      self.head = MaskedLMHead(self.config)

  def encode(
    self,
    tokens: jax.Array,
    *,
    deterministic: bool = True,
    skip_last_block: bool = False,
    layout: packing_lib.TokenLayout | None = None,
    clones: int = 1,
    keep_index: jax.Array | None = None,
    key_mask: jax.Array | None = None,
  ) -> EncoderOutput:
    """tokens: [B, T] int32 student input. Dropout needs the 'dropout' rng. With a packing
    `layout` the outputs are packed [G, C, D]; `clones` / `keep_index` / `key_mask` are
    data2vec 2.0's cloned, gathered student (`Encoder`)."""
    return self.encoder(
      tokens,
      deterministic=deterministic,
      skip_last_block=skip_last_block,
      layout=layout,
      clones=clones,
      keep_index=keep_index,
      key_mask=key_mask,
    )

  def predict(self, features: jax.Array) -> jax.Array:
    """features: [..., D] student features -> predictions [..., D] in the compute dtype
    (data2vec) or float32 logits [..., V] (mlm)."""
    if self.objective.kind in ("data2vec", "data2vec2"):
      return self.head(features)
    return self.head(features, self.encoder.token_table())

  def __call__(
    self, tokens: jax.Array, *, deterministic: bool = True
  ) -> tuple[EncoderOutput, jax.Array]:
    """tokens: [B, T] int32. Returns (encoder output, head output at every position)."""
    out = self.encode(tokens, deterministic=deterministic)
    return out, self.predict(out.last_hidden_state)


def regression_loss(pred: jax.Array, target: jax.Array, beta: float) -> jax.Array:
  """Element-wise `F.smooth_l1_loss(reduction='none', beta=beta)`, `F.mse_loss` when beta == 0."""
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  if beta == 0:
    return d * d
  ad = jnp.abs(d)
  return jnp.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)


def masked_std(x: jax.Array, weights: jax.Array) -> jax.Array:
  """data2vec 2.0 `compute_var` over the weighted rows: mean_d sqrt(unbiased var_d + 1e-6).

  x: [N, D]; weights: [N] float32 0/1. Returns a float32 scalar (0 when fewer than 2 rows).
  """
  x = x.astype(jnp.float32)
  n = jnp.sum(weights)
  mean = jnp.sum(x * weights[:, None], axis=0) / jnp.maximum(n, 1.0)
  var = jnp.sum(jnp.square(x - mean) * weights[:, None], axis=0) / jnp.maximum(n - 1.0, 1.0)
  return jnp.where(n > 1, jnp.mean(jnp.sqrt(var + VAR_EPS)), 0.0)


def loss_positions(
  batch: Mapping[str, Any], *, config: EncoderConfig, objective: ObjectiveConfig
) -> Any:
  """[B, T] bool positions the loss covers (see module docstring).

  Operators only, so it runs on jax arrays in the step and on the host's numpy batches alike.
  """
  if objective.kind == "mlm" or objective.loss_positions == "selected":
    return batch["selected"] & (batch["target"] != config.pad_id)
  return batch["source"] == objective.mask_id


def teacher_tokens(
  batch: Mapping[str, jax.Array], *, config: EncoderConfig, objective: ObjectiveConfig
) -> jax.Array:
  """[B, T] int32 teacher input: the original tokens, or fairseq's `target_tokens`."""
  if objective.teacher_input == "unmasked":
    return batch["target"]
  return jnp.where(batch["selected"], batch["target"], config.pad_id).astype(batch["target"].dtype)


def loss_fn(
  params: Any,
  teacher_encoder_params: Any,
  batch: Mapping[str, jax.Array],
  dropout_rng: jax.Array | None,
  *,
  config: EncoderConfig,
  objective: ObjectiveConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Summed loss of one (micro-)batch and its metrics: the reference path (every position).

  Args:
    params: {'encoder': ..., 'head': ...} student parameters (unboxed).
    teacher_encoder_params: encoder tree for the teacher (`ema.teacher_params`); ignored (may be
      None) for 'mlm'. Gradients are stopped: the teacher never receives gradient.
    batch: 'source' [B, T] int32 masked input; 'target' [B, T] int32 original tokens (pads =
      pad_id); 'selected' [B, T] bool positions chosen by the masker.
    dropout_rng: key for the student's dropout; None runs the student deterministically.

  Returns:
    loss_sum: float32 scalar, SUM over loss positions (and feature dims) of the per-element loss,
      times loss_scale for data2vec. Not normalised: divide by the global `num_masked`.
    aux: float32 scalars. 'num_masked' (number of loss positions) and 'loss_sum' are sums.
      data2vec: 'target_var' / 'pred_var' (data2vec 2.0 compute_var over this batch's loss
      positions; under gradient accumulation the train step averages them over micro-batches,
      which is not the variance of the whole batch). mlm: 'accuracy' (fraction of loss positions
      whose argmax is the target, in this micro-batch; also averaged over micro-batches).
  """
  if objective.kind == "data2vec2":
    raise ValueError("kind='data2vec2' has its own loss: data2vec_jax.objective.data2vec2.loss_fn")
  model = PretrainingModel(config, objective)
  variables = {"params": params}
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  features = model.apply(
    variables,
    batch["source"],
    deterministic=dropout_rng is None,
    rngs=rngs,
    method=PretrainingModel.encode,
  ).last_hidden_state  # [B, T, D]
  head_out = model.apply(variables, features, method=PretrainingModel.predict)
  y = None  # the MLM head's targets are the tokens
  if objective.kind == "data2vec":
    if teacher_encoder_params is None:
      raise ValueError("the data2vec objective needs teacher_encoder_params")
    y = teacher_targets(
      teacher_encoder_params,
      teacher_tokens(batch, config=config, objective=objective),
      config=config,
      objective=objective,
    )  # [B, T, D]
  positions = loss_positions(batch, config=config, objective=objective)
  loss_sum, aux = scored(head_out, y, batch["target"], positions, objective)
  num_masked = jnp.sum(positions.astype(jnp.float32))
  return loss_sum, {"num_masked": num_masked, "loss_sum": loss_sum, **aux}


def scored(
  head_out: jax.Array,
  y: jax.Array | None,
  targets: jax.Array,
  positions: jax.Array,
  objective: ObjectiveConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Summed loss and metrics of head outputs [B, N, D|V] at [B, N] bool loss positions.

  y: [B, N, D] float32 regression targets (data2vec) or None (mlm); targets: [B, N] int tokens.
  N is T on the reference path, or the K gathered slots of `training_loss`.
  """
  weights = positions.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weights), 1.0)
  if objective.kind == "mlm":
    logp = jax.nn.log_softmax(head_out.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    loss_sum = jnp.sum(jnp.where(positions, nll, 0.0))
    correct = (jnp.argmax(head_out, axis=-1) == targets).astype(jnp.float32) * weights
    return loss_sum, {"accuracy": jnp.sum(correct) / count}

  # Zero the targets off the loss positions: a non-finite value there (possible in the teacher's
  # all-pad rows) would otherwise turn into NaN gradients through the masked-out branch.
  y = jnp.where(positions[..., None], y, 0.0)
  per_token = jnp.sum(regression_loss(head_out, y, objective.loss_beta), axis=-1)  # [B, N]
  dim = head_out.shape[-1]
  scale = objective.loss_scale if objective.loss_scale > 0 else 1.0 / math.sqrt(dim)
  loss_sum = jnp.sum(jnp.where(positions, per_token, 0.0)) * jnp.float32(scale)
  flat_w = weights.reshape(-1)
  return loss_sum, {
    "target_var": masked_std(y.reshape(-1, dim), flat_w),
    "pred_var": masked_std(jax.lax.stop_gradient(head_out).reshape(-1, dim), flat_w),
  }
