"""The data2vec-text encoder in Flax Linen: RoBERTa-shaped, post-LN, numerically equal to fairseq's
`TransformerEncoder` (data2vec text) and `transformers.Data2VecTextModel`.

Pure-functional: `Encoder(config).apply({'params': p}, input_ids, deterministic=...)`. The EMA
teacher is this same module applied to another parameter tree. When a loss reads the output at a
few positions only, `Encoder(..., skip_last_block=True)` followed by `apply_last_block(...,
query_index)` computes the last block there only (same values; the execution plan's pruned last
block, `data2vec_jax/objective/execution.py`).

Parameter tree (leading `L` axis: the blocks are run with `nn.scan`, so one block is compiled):

  embeddings/token_embedding/embedding   [V, D]        ('vocab', 'embed')
  embeddings/position_embedding/embedding [P, D]       (None, 'embed')
  embeddings/layer_norm/{scale,bias}     [D]           ('embed',)
  layers/attention/qkv/kernel            [L, D, 3, H, Dh] ('layers', 'embed', None, 'heads', 'kv')
  layers/attention/qkv/bias              [L, 3, H, Dh]
  layers/attention/out/kernel            [L, H, Dh, D] ('layers', 'heads', 'kv', 'embed')
  layers/attention/out/bias              [L, D]
  layers/attention_layer_norm/{scale,bias} [L, D]
  layers/fc1/{kernel [L, D, F], bias [L, F]}           ('layers', 'embed', 'mlp')
  layers/fc2/{kernel [L, F, D], bias [L, D]}           ('layers', 'mlp', 'embed')
  layers/ffn_layer_norm/{scale,bias}     [L, D]

q, k and v share one kernel (fused projection, one matmul); conversion to and from the reference's
separate `q_proj/k_proj/v_proj` is an exact reshape, so fusing costs no parity.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.speed import packing
from data2vec_jax.speed.contraction import INIT_STD, Projection

# Ordered so that `feature` names read like the paper's Table 5 ablation.
FEATURE_KINDS = ("ffn", "ffn_residual")


def dtype_of(name: str) -> jnp.dtype:
  return jnp.dtype(name)


def _partitioned(init: Any, axes: tuple[str | None, ...]) -> Any:
  return nn.with_logical_partitioning(init, axes)


def _embedding_init(pad_id: int | None):
  """N(0, 0.02) with the padding row zeroed, as `init_bert_params` leaves it."""
  normal = nn.initializers.normal(INIT_STD)

  def init(key, shape, dtype=jnp.float32):
    table = normal(key, shape, dtype)
    if pad_id is not None:
      table = table.at[pad_id].set(0)
    return table

  return init


@flax.struct.dataclass
class EncoderOutput:
  """What the encoder returns; every array is in the compute dtype.

  With `layout` (a packed run, `data2vec_jax/speed/packing.py`) every [B, T] pair of axes below is [G, C] instead
  (real tokens only); `unpacked()` gives the [B, T] view, zeros at pads.

  Attributes:
    last_hidden_state: [B, T, D] output of the last block (after its final LayerNorm).
    embedding_output: [B, T, D] embedding LayerNorm output, pads zeroed (HF `hidden_states[0]`).
    block_outputs: [L, B, T, D] each block's output (HF `hidden_states[1:]`).
    ffn_outputs: [L, B, T, D] each block's FFN output `fc2(gelu(fc1(h)))`, before dropout,
      residual and LayerNorm (the data2vec target); with `feature='ffn_residual'` the FFN output
      plus its residual input, before the LayerNorm (paper Table 5 ablation).
    layout: the packing layout the encoder ran with, or None (unpacked).
  """

  last_hidden_state: jax.Array
  embedding_output: jax.Array
  block_outputs: jax.Array
  ffn_outputs: jax.Array
  layout: packing.TokenLayout | None = None

  def unpacked(self) -> "EncoderOutput":
    """The same outputs as [B, T, D] / [L, B, T, D] arrays (pads zero); self if not packed."""
    if self.layout is None:
      return self
    one = lambda y: packing.unpack(y, self.layout)
    return EncoderOutput(
      last_hidden_state=one(self.last_hidden_state),
      embedding_output=one(self.embedding_output),
      block_outputs=jax.vmap(one)(self.block_outputs),
      ffn_outputs=jax.vmap(one)(self.ffn_outputs),
    )

  @property
  def hidden_states(self) -> tuple[jax.Array, ...]:
    """L+1 arrays [B, T, D]: the embedding output, then each block's output (HF order)."""
    return (self.embedding_output,) + tuple(self.block_outputs)


def position_ids(input_ids: jax.Array, pad_id: int) -> jax.Array:
  """fairseq `make_positions`: 1-based count of non-pad tokens, offset by `pad_id`; pads get `pad_id`.

  Args:
    input_ids: [B, T] int.
  Returns:
    [B, T] int32; the first real token gets `pad_id + 1`.
  """
  not_pad = (input_ids != pad_id).astype(jnp.int32)
  return jnp.cumsum(not_pad, axis=1) * not_pad + pad_id


class Embeddings(nn.Module):
  """Token + learned position embeddings -> LayerNorm -> dropout -> zero the pads.

  input_ids [B, T] -> [B, T, D], or [G, C, D] with a packing `layout` (positions are counted
  on the unpacked rows first, so they are the same). `zero_pads=False` keeps the pad rows as
  they are (data2vec 2.0's `TextLocalEncoder` does not zero them).
  """

  config: EncoderConfig
  zero_pads: bool = True

  @nn.compact
  def __call__(
    self, input_ids: jax.Array, deterministic: bool, layout: packing.TokenLayout | None = None
  ) -> jax.Array:
    cfg = self.config
    dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    token_embedding = nn.Embed(
      cfg.vocab_size,
      cfg.hidden_size,
      dtype=dtype,
      param_dtype=param_dtype,
      embedding_init=_partitioned(_embedding_init(cfg.pad_id), ("vocab", "embed")),
      name="token_embedding",
    )
    position_embedding = nn.Embed(
      cfg.max_positions,
      cfg.hidden_size,
      dtype=dtype,
      param_dtype=param_dtype,
      embedding_init=_partitioned(_embedding_init(cfg.pad_id), (None, "embed")),
      name="position_embedding",
    )
    positions = position_ids(input_ids, cfg.pad_id)
    if layout is not None:
      # Left-over slots get the pad id: zeroed below like pads, so they stay finite and inert.
      input_ids = packing.pack_ids(input_ids, layout, cfg.pad_id)
      positions = packing.pack_ids(positions, layout, cfg.pad_id)
    is_pad = input_ids == cfg.pad_id
    x = token_embedding(input_ids) + position_embedding(positions)
    # Laid out like the tables (width over fsdp), rows over data only: the lookups' gradient
    # then scatters into each chip's slice of the tables and sums over data. Left to XLA, the
    # scatter all-gathered the whole [B, T, D] gradient over every chip of a fsdp mesh.
    x = nn.with_logical_constraint(x, ("data_batch", "length", "embed"))
    # fairseq's `padding_idx`: row pad_id of both tables gets no gradient (model/pad_rows.py).
    # Pads, and only pads, look up row pad_id of both (real positions start at pad_id + 1).
    x = jnp.where(is_pad[..., None], jax.lax.stop_gradient(x), x)
    x = layer_norm(cfg, "layer_norm")(x)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    # fairseq zeroes pad positions after the LayerNorm; HF and data2vec 2.0 do not. Only pad
    # outputs differ.
    if self.zero_pads:
      x = jnp.where(is_pad[..., None], jnp.zeros((), x.dtype), x)
    return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


def exact_gelu(x: jax.Array) -> jax.Array:
  """fairseq's `gelu` / torch `nn.GELU()`: the exact erf form (Flax defaults to tanh),
  evaluated in float32, returned in x's dtype."""
  return jax.nn.gelu(x.astype(jnp.float32), approximate=False).astype(x.dtype)


def layer_norm(cfg: EncoderConfig, name: str) -> nn.LayerNorm:
  """The encoder's LayerNorm (eps, dtypes, ones/zeros init with logical axes); Flax reduces its
  statistics in float32 even for bf16 inputs."""
  return nn.LayerNorm(
    epsilon=cfg.layer_norm_eps,
    dtype=dtype_of(cfg.dtype),
    param_dtype=dtype_of(cfg.param_dtype),
    scale_init=_partitioned(nn.initializers.ones, ("embed",)),
    bias_init=_partitioned(nn.initializers.zeros, ("embed",)),
    name=name,
  )


def _resolve_attention_impl(
  cfg: EncoderConfig, dropout_active: bool, all_queries: bool = True
) -> str:
  if dropout_active:
    return "reference"  # jax.nn.dot_product_attention has no dropout on the probabilities
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  on_gpu = jax.default_backend() == "gpu"
  # 'auto' keeps the pruned last block (K of T positions queried, a small share of the step)
  # on XLA's attention: cuDNN's fused kernel with unequal query and key lengths has not been
  # verified on a GPU in this project yet.
  use_cudnn = on_gpu and all_queries and cfg.dtype in ("bfloat16", "float16")
  return "cudnn" if use_cudnn else "xla"


class SelfAttention(nn.Module):
  """Multi-head self-attention with key padding mask; softmax in float32 like fairseq."""

  config: EncoderConfig
  deterministic: bool

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    attend: jax.Array,
    query_index: jax.Array | None = None,
    layout: packing.TokenLayout | None = None,
  ) -> jax.Array:
    """x: [B, T, D]; attend: [B, T] bool, False at keys to ignore (pads).

    query_index: optional [B, K] int32 positions; only those positions are queried (keys and
    values still cover all T). Returns [B, T, D], or [B, K, D] with `query_index`.
    layout: x is packed [G, C, D]: the projections run packed, the attention itself on the
    unpacked rows; the output is packed too (but [B, K, D] with `query_index`).
    """
    cfg = self.config
    dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    qkv_proj = Projection(
      (cfg.hidden_size, 3, cfg.num_heads, cfg.head_dim),
      ("embed", None, "heads", "kv"),
      dtype,
      param_dtype,
      name="qkv",
    )
    if query_index is None:
      qkv = packing.rows(qkv_proj(x), layout)
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, T, H, Dh]
    else:
      # Slices of the one fused kernel, so the parameters (and conversion) are unchanged.
      kv = packing.rows(qkv_proj(x, first_output=slice(1, 3)), layout)
      k, v = kv[:, :, 0], kv[:, :, 1]
      q = qkv_proj(gather_positions(x, query_index, layout), first_output=slice(0, 1))[:, :, 0]
    q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "act_kv"))
    scale = cfg.head_dim**-0.5
    dropout_active = (not self.deterministic) and cfg.attention_dropout > 0
    impl = _resolve_attention_impl(cfg, dropout_active, all_queries=query_index is None)
    if impl == "reference":
      # fairseq scales q after the projection, then softmax in float32 (`utils.softmax`).
      logits = jnp.einsum(
        "bqhd,bkhd->bhqk", q * jnp.asarray(scale, dtype), k, preferred_element_type=jnp.float32
      )
      logits = jnp.where(attend[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(logits, axis=-1)
      probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=not dropout_active)
      out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v)
    else:
      out = jax.nn.dot_product_attention(
        q, k, v, mask=attend[:, None, None, :], scale=scale, implementation=impl
      )
    if layout is not None and query_index is None:
      out = packing.pack(out, layout)
    return Projection(
      (cfg.num_heads, cfg.head_dim, cfg.hidden_size),
      ("heads", "kv", "embed"),
      dtype,
      param_dtype,
      contract_ndim=2,
      name="out",
    )(out)


class EncoderBlock(nn.Module):
  """One post-LN transformer block; returns (output, (output, ffn feature)) for `nn.scan`."""

  config: EncoderConfig
  deterministic: bool
  feature: str = "ffn"

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    attend: jax.Array,
    query_index: jax.Array | None = None,
    layout: packing.TokenLayout | None = None,
  ):
    """x: [B, T, D] (or [G, C, D] packed, with `layout`); attend: [B, T] bool (False at pads).

    query_index: optional [B, K] int32; the block's outputs are then computed at those positions
    only ([B, K, D]): every position still serves as key and value, and everything after the
    attention is per position, so the values equal the full block's at those positions.
    """
    cfg = self.config
    dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    dropout = lambda rate, h: nn.Dropout(rate)(h, deterministic=self.deterministic)

    attn = SelfAttention(cfg, self.deterministic, name="attention")(x, attend, query_index, layout)
    if query_index is not None:
      x = gather_positions(x, query_index, layout)
    x = layer_norm(cfg, "attention_layer_norm")(x + dropout(cfg.dropout, attn))

    h = Projection(
      (cfg.hidden_size, cfg.intermediate_size), ("embed", "mlp"), dtype, param_dtype, name="fc1"
    )(x)
    h = nn.with_logical_constraint(h, ("batch", "length", "act_mlp"))
    h = exact_gelu(h).astype(dtype)
    h = dropout(cfg.activation_dropout, h)
    ffn = Projection(
      (cfg.intermediate_size, cfg.hidden_size), ("mlp", "embed"), dtype, param_dtype, name="fc2"
    )(h)
    feature = ffn if self.feature == "ffn" else x + ffn
    x = layer_norm(cfg, "ffn_layer_norm")(x + dropout(cfg.dropout, ffn))
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    return x, (x, feature)


_REMAT_POLICY_FNS = {
  "full": None,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Encoder(nn.Module):
  """The data2vec-text encoder.

  Attributes:
    config: shape and numerics.
    feature: which per-block feature `ffn_outputs` holds: 'ffn' (fc2 output, the data2vec
      target) or 'ffn_residual' (FFN output + residual, before the block's final LayerNorm).
    zero_pads: zero the embedding output at pads (fairseq's `TransformerEncoder`: RoBERTa and
      data2vec v1); data2vec 2.0 does not (docs/reference/data2vec2_text_reference.md §9.4).
  """

  config: EncoderConfig
  feature: str = "ffn"
  zero_pads: bool = True

  def token_table(self) -> jax.Array:
    """[V, D] the token embedding table (param_dtype), for a decoder tied to it (the MLM
    head's output projection, as lm1b's `attend`). Needs initialised parameters."""
    return nn.meta.unbox(self.variables["params"]["embeddings"]["token_embedding"]["embedding"])

  @nn.compact
  def __call__(
    self,
    input_ids: jax.Array,
    *,
    deterministic: bool = True,
    skip_last_block: bool = False,
    layout: packing.TokenLayout | None = None,
    clones: int = 1,
    keep_index: jax.Array | None = None,
    embedded: jax.Array | None = None,
    key_mask: jax.Array | None = None,
  ) -> EncoderOutput:
    """input_ids: [B, T] int32 (pads = `config.pad_id`). Dropout needs the 'dropout' rng.

    data2vec 2.0's student and teacher (docs/reference/data2vec2_text_reference.md §3.5, §5.1):
      clones: M; the embedding output is repeated M times along the batch (row b*M+m is clone m
        of row b, torch's `repeat_interleave`) before the blocks.
      keep_index: [B*M, K] int32; the blocks then run on the K gathered positions of each
        (cloned) row only ([B*M, K, D] outputs; the key-padding mask is gathered the same way).
        `embedding_output` stays the un-cloned, un-gathered [B, T, D] embedding output.
      embedded: [B, T, D] used instead of the embeddings (they do not run and need no
        parameters): the data2vec 2.0 teacher, fed the student's embedding output.
      key_mask: [B*M, T] bool, False at keys no position may attend to (besides pads): the
        plain form of the gather, every position computed, the masked ones invisible.

    layout: run packed (`packing.make_layout(input_ids != pad_id, spec)`): the outputs are then
      [G, C, D] (`EncoderOutput.unpacked` for [B, T, D]), real tokens equal to the unpacked run's.

    skip_last_block: run only the first L-1 blocks (apply only, not init): `last_hidden_state`
      is then the input of the last block, `block_outputs`/`ffn_outputs` have L-1 entries, and
      `apply_last_block` finishes the stack -- at chosen positions only, if that is all a loss
      needs (`ExecutionPlan.prune_student_last_block`).
    """
    cfg = self.config
    _check_inputs(cfg, self.feature, input_ids, layout)
    attend = input_ids != cfg.pad_id
    x = embedded  # the data2vec 2.0 teacher's input, or None: the embeddings run
    if embedded is None:
      x = Embeddings(cfg, self.zero_pads, name="embeddings")(input_ids, deterministic, layout)
    embedding_output = x
    if clones > 1 or keep_index is not None or key_mask is not None:
      if layout is not None or skip_last_block:
        raise ValueError("clones / keep_index do not combine with packing or skip_last_block")
      x, attend = _student_views(x, attend, clones, keep_index, key_mask)
    num_blocks = cfg.num_layers - 1 if skip_last_block else cfg.num_layers
    if num_blocks == 0:
      last = x
      block_outputs = ffn_outputs = jnp.zeros((0,) + x.shape, x.dtype)
    else:
      stack = _block_stack(cfg, num_blocks, skip_last_block)
      last, (block_outputs, ffn_outputs) = stack(cfg, deterministic, self.feature, name="layers")(
        x, attend, None, layout
      )
    return EncoderOutput(
      last_hidden_state=last,
      embedding_output=embedding_output,
      block_outputs=block_outputs,
      ffn_outputs=ffn_outputs,
      layout=layout,
    )


def _check_inputs(
  cfg: EncoderConfig, feature: str, input_ids: jax.Array, layout: packing.TokenLayout | None
) -> None:
  """Raises ValueError for an unknown feature, a non-[B, T] input, one longer than the position
  table, or a packing layout of another shape."""
  if feature not in FEATURE_KINDS:
    raise ValueError(f"feature={feature!r}; expected one of {FEATURE_KINDS}")
  if input_ids.ndim != 2:
    raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
  if input_ids.shape[1] > cfg.max_sequence_length:
    raise ValueError(
      f"sequence length {input_ids.shape[1]} exceeds the {cfg.max_sequence_length} positions "
      f"of the position table (max_positions={cfg.max_positions})"
    )
  if layout is not None and (layout.rows, layout.length) != input_ids.shape:
    raise ValueError(
      f"packing layout is for [{layout.rows}, {layout.length}] inputs, got {input_ids.shape}"
    )


def _student_views(
  x: jax.Array,
  attend: jax.Array,
  clones: int,
  keep_index: jax.Array | None,
  key_mask: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
  """data2vec 2.0's student input (`Encoder.__call__`'s clones / keep_index / key_mask): the
  embedding output x [B, T, D] and attend [B, T] bool -> [B*M, T|K, D] and [B*M, T|K]."""
  if clones > 1:
    x = jnp.repeat(x, clones, axis=0)
    attend = jnp.repeat(attend, clones, axis=0)
  if key_mask is not None:
    attend = attend & key_mask
  if keep_index is not None:
    x = take_positions(x, keep_index)
    attend = take_positions(attend, keep_index)
  return nn.with_logical_constraint(x, ("batch", "length", "act_embed")), attend


def _block_stack(cfg: EncoderConfig, num_blocks: int, skip_last_block: bool) -> Any:
  """The `EncoderBlock` module class scanned over `num_blocks` blocks (parameters stacked on a
  leading 'layers' axis), rematerialised as `cfg.remat_policy` says."""
  block = EncoderBlock
  if cfg.remat_policy != "none":
    block = nn.remat(block, policy=_REMAT_POLICY_FNS[cfg.remat_policy], prevent_cse=False)
  scanned = nn.scan(
    block,
    variable_axes={"params": 0},
    split_rngs={"params": True, "dropout": True},
    in_axes=nn.broadcast,
    length=num_blocks,
    unroll=min(cfg.scan_unroll, num_blocks),
    metadata_params={nn.PARTITION_NAME: "layers"},
  )
  if skip_last_block:
    # The stacked parameters stay [L, ...]; the scan reads the first L-1 of them.
    scanned = nn.map_variables(
      scanned, "params", trans_in_fn=lambda v: jax.tree.map(lambda a: a[:-1], v), init=False
    )
  return scanned


def take_positions(x: jax.Array, index: jax.Array) -> jax.Array:
  """x: [B, T, ...], index: [B, K] int -> [B, K, ...], row b holding x[b, index[b]]."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def gather_positions(
  x: jax.Array, index: jax.Array, layout: packing.TokenLayout | None
) -> jax.Array:
  """`take_positions` of x [B, T, ...], or of packed x [G, C, ...] when `layout` is given."""
  return take_positions(x, index) if layout is None else packing.take(x, index, layout)


def apply_last_block(
  config: EncoderConfig,
  encoder_params: Any,
  x: jax.Array,
  attend: jax.Array,
  query_index: jax.Array | None = None,
  *,
  deterministic: bool = True,
  dropout_rng: jax.Array | None = None,
  feature: str = "ffn",
  layout: packing.TokenLayout | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The encoder's last block (parameters `layers[-1]` of an unboxed encoder tree).

  Args:
    x: [B, T, D] input of the last block (`Encoder(..., skip_last_block=True)`).
    attend: [B, T] bool, False at pads.
    query_index: [B, K] int32 positions to compute the output at; None = every position.
    dropout_rng: needed unless `deterministic`.
    feature: as `Encoder.feature`.
    layout: x is packed [G, C, D] (`Encoder(..., layout=...)`); without `query_index` the
      outputs are then packed too.
  Returns:
    (output, feature), each [B, T, D], or [B, K, D] with `query_index`: equal to the full
    encoder's last hidden state and last `ffn_outputs` entry at those positions (dropout aside).
    With K << T this skips ~(1 - K/T) of the block's q/out/FFN work, forward and backward.
  """
  block_params = jax.tree.map(lambda a: a[-1], encoder_params["layers"])
  rngs = {} if deterministic else {"dropout": dropout_rng}
  out, (_, block_feature) = EncoderBlock(config, deterministic, feature).apply(
    {"params": block_params}, x, attend, query_index, layout, rngs=rngs
  )
  return out, block_feature


def init_params(config: EncoderConfig, rng: jax.Array, seq_len: int = 8) -> Any:
  """Random parameters (reference init distributions), unboxed from their partitioning metadata."""
  dummy = jnp.full((1, seq_len), config.pad_id + 1, jnp.int32)
  variables = Encoder(config).init(rng, dummy, deterministic=True)
  return nn.meta.unbox(variables["params"])
