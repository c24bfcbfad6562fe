"""Saving, loading and running pretrained encoders.

A **data2vec-jax model directory** holds:
  config.json         {"format": "data2vec-jax", "format_version": 1,
                       "encoder": EncoderConfig.to_dict(), "heads": [...], "metadata": {...}}
  params.safetensors  the encoder tree flattened with '/' (e.g.
                      `embeddings/token_embedding/embedding` [V, D],
                      `layers/fc1/kernel` [L, D, F]: blocks stacked as in the model)
  heads.safetensors   optional head params, flattened the same way (`lm_head/dense/kernel`, ...)
  tokenizer files     optional: what turns text into the model's ids (config.json's
                      "tokenizer" section names them; see `model_tokenizer`)

`load_pretrained` also accepts a Hugging Face model directory or a fairseq `.pt` file and
dispatches on what is there (`model_tokenizer.load_model_tokenizer` reads the tokenizer that
belongs to any of them); every load checks every key and shape against the config and lists
all missing/unexpected keys and mismatched shapes in one error, and refuses a tensor holding
NaN/Inf (naming the file and the tensor).

`encode` runs the encoder deterministically and returns float32 features, with padding as
fairseq defines it (see `encode`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from data2vec_jax.data.tokenizer import Tokenizer
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.encoder import Encoder
from data2vec_jax.weights import layout, model_tokenizer
from data2vec_jax.weights.layout import Converted
from data2vec_jax.weights.torch_io import CheckpointError, load_safetensors, save_safetensors

FORMAT = "data2vec-jax"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
HEADS_FILE = "heads.safetensors"


def save_pretrained(
  path: str | os.PathLike[str],
  config: EncoderConfig,
  params: Any,
  *,
  head_params: Mapping[str, Any] | None = None,
  metadata: Mapping[str, Any] | None = None,
  tokenizer: Tokenizer | None = None,
) -> None:
  """Writes a data2vec-jax model directory (created if needed; existing files replaced).

  Args:
    config: the encoder config the params belong to.
    params: nested encoder params (jax or numpy arrays); checked against `config` first.
    head_params: optional nested dict of head params, one top-level key per head.
    metadata: optional JSON-serialisable dict (provenance, ...).
    tokenizer: the model's tokenizer; its files are copied in (None: the directory has none,
      and stale tokenizer files of an earlier save are removed).
  Raises:
    ValueError: params do not match config (missing/unexpected keys, shapes), metadata is not
      JSON-serialisable, or the tokenizer's vocabulary is not the model's.
  """
  flat = {k: np.asarray(v) for k, v in layout.flatten(params).items()}
  layout.check_tree(flat, layout.param_shapes(config), "params")
  heads = {k: np.asarray(v) for k, v in layout.flatten(head_params or {}).items()}
  document = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "encoder": config.to_dict(),
    "heads": sorted((head_params or {}).keys()),
    "metadata": dict(metadata or {}),
  }
  json.dumps(document)  # fails before any file is written
  if tokenizer is not None:
    model_tokenizer.check_tokenizer_fits(tokenizer, config)
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  if tokenizer is not None:
    document[model_tokenizer.SECTION] = model_tokenizer.write_tokenizer(path, tokenizer, config)
  else:
    model_tokenizer.remove_tokenizer_files(path)
  text = json.dumps(document, indent=2, sort_keys=True)
  save_safetensors(os.path.join(path, PARAMS_FILE), flat, FORMAT)
  heads_path = os.path.join(path, HEADS_FILE)
  if heads:
    save_safetensors(heads_path, heads, FORMAT)
  elif os.path.exists(heads_path):
    os.remove(heads_path)  # a stale heads file would contradict config.json
  with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
    f.write(text + "\n")


def _load_own_dir(path: str, document: Mapping[str, Any]) -> Converted:
  version = document.get("format_version")
  if version != FORMAT_VERSION:
    raise CheckpointError(
      f"{path}: format_version {version!r}; this library reads {FORMAT_VERSION}"
    )
  try:
    config = EncoderConfig.from_dict(document["encoder"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{path}/{CONFIG_FILE}: bad 'encoder' config: {e}") from None
  # Stored dtypes are kept (params may be bfloat16 when param_dtype says so).
  flat = load_safetensors(os.path.join(path, PARAMS_FILE), upcast=False)
  try:
    layout.check_tree(flat, layout.param_shapes(config), f"{path}/{PARAMS_FILE}")
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  heads: dict[str, Any] = {}
  heads_path = os.path.join(path, HEADS_FILE)
  declared = sorted(document.get("heads", []))
  if os.path.exists(heads_path):
    heads = layout.unflatten(load_safetensors(heads_path, upcast=False))
  if sorted(heads) != declared:
    raise CheckpointError(
      f"{path}: config.json declares heads {declared} but {HEADS_FILE} holds {sorted(heads)}"
    )
  n_heads = len(layout.flatten(heads))
  return Converted(
    config,
    layout.unflatten(flat),
    heads,
    dict(document.get("metadata", {})),
    source="data2vec-jax",
    num_source_tensors=len(flat) + n_heads,
  )


def load_checkpoint(
  path: str | os.PathLike[str], *, use_ema: bool = False, drop_token_type_rows: bool = False
) -> Converted:
  """Loads encoder + heads from any supported source, dispatching on what `path` holds.

  - a directory whose config.json has `"format": "data2vec-jax"`: this library's format;
  - a directory with an HF config.json (`model_type` data2vec-text or roberta): HF import;
  - a file: a fairseq checkpoint (`use_ema=True` selects the EMA teacher's blocks).

  Raises:
    CheckpointError: anything that prevents a complete, exact load (the message says what).
  """
  path = os.fspath(path)
  if os.path.isfile(path):
    from data2vec_jax.weights.fairseq import load_fairseq  # pylint: disable=import-outside-toplevel

    return load_fairseq(path, use_ema=use_ema)
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no such file or directory")
  if use_ema:
    raise CheckpointError(
      f"{path}: use_ema applies to fairseq checkpoints only (a directory "
      "holds a single set of weights)"
    )
  # pylint: disable-next=import-outside-toplevel
  from data2vec_jax.weights.hf import load_hf_dir, read_hf_config

  document = read_hf_config(path)
  if document.get("format") == FORMAT:
    return _load_own_dir(path, document)
  if "model_type" in document:
    return load_hf_dir(path, drop_token_type_rows=drop_token_type_rows)
  raise CheckpointError(
    f"{path}/{CONFIG_FILE}: neither a data2vec-jax config (no "
    f"'format': '{FORMAT}') nor a Hugging Face config (no 'model_type')"
  )


def load_pretrained(
  path: str | os.PathLike[str], *, use_ema: bool = False
) -> tuple[EncoderConfig, Any]:
  """(config, encoder params as numpy) from a data2vec-jax dir, an HF dir or a fairseq `.pt`.

  Heads are not returned; use `load_checkpoint` for them and for the conversion report.
  """
  loaded = load_checkpoint(path, use_ema=use_ema)
  return loaded.config, loaded.params


@flax.struct.dataclass
class Features:
  """Encoder outputs, float32.

  Attributes:
    last_hidden_state: [B, T, D] last block's output.
    hidden_states: L+1 arrays [B, T, D]: embedding output, then each block (HF order).
    ffn_outputs: L arrays [B, T, D]: each block's fc2 output (the data2vec target feature).
  """

  last_hidden_state: jax.Array
  hidden_states: tuple[jax.Array, ...]
  ffn_outputs: tuple[jax.Array, ...]


@functools.partial(jax.jit, static_argnames=("config",))
def _encode(config: EncoderConfig, params: Any, input_ids: jax.Array) -> Features:
  # jit's cache is keyed on the (frozen, hashable) config and the input shapes: one compile each.
  with jax.default_matmul_precision("highest"):  # parity over speed (TPU/GPU default is bf16/tf32)
    out = Encoder(config).apply({"params": params}, input_ids, deterministic=True)
  f32 = lambda x: x.astype(jnp.float32)
  return Features(
    last_hidden_state=f32(out.last_hidden_state),
    hidden_states=tuple(f32(h) for h in out.hidden_states),
    ffn_outputs=tuple(f32(out.ffn_outputs[i]) for i in range(config.num_layers)),
  )


def encode(
  config: EncoderConfig, params: Any, input_ids: Any, attention_mask: Any = None
) -> Features:
  """Runs the encoder deterministically (no dropout) and returns float32 `Features`.

  Args:
    config: the encoder config.
    params: nested encoder params.
    input_ids: [B, T] integer token ids in [0, vocab_size).
    attention_mask: optional [B, T], 1 = real token, 0 = padding. Positions where it is 0 are
      replaced by `config.pad_id` before encoding (the encoder knows padding only as pad ids).
  Returns:
    `Features` (jax arrays). Pad positions: like fairseq, the embedding output is zeroed at pads
    and pads are masked as attention keys; their outputs are *unspecified* (HF computes
    different values there, because it does not zero them) and must be ignored.
  Raises:
    ValueError: wrong rank, mask shape, ids outside [0, vocab_size), or a sequence longer than
      the position table allows.
  """
  ids = np.asarray(input_ids)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(
      f"input_ids must be an integer [batch, length] array, got {ids.dtype} {ids.shape}"
    )
  if attention_mask is not None:
    mask = np.asarray(attention_mask)
    if mask.shape != ids.shape:
      raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    ids = np.where(mask != 0, ids, config.pad_id)
  bad = (ids < 0) | (ids >= config.vocab_size)
  if bad.any():
    where = np.argwhere(bad)[0]
    raise ValueError(
      f"token id {int(ids[tuple(where)])} at position {tuple(int(i) for i in where)}"
      f" is outside [0, vocab_size={config.vocab_size})"
    )
  if ids.shape[1] > config.max_sequence_length:
    raise ValueError(
      f"sequence length {ids.shape[1]} exceeds {config.max_sequence_length} "
      f"(max_positions={config.max_positions})"
    )
  return _encode(config, params, jnp.asarray(ids, jnp.int32))
