"""fairseq data2vec 2.0 text checkpoints (`data2vec_multi`, released `nlp_base.pt` of data2vec2)
<-> data2vec-jax parameters (docs/reference/data2vec2_text_reference.md §9.2, §9.4).

State-dict layout (`checkpoint['model']`; [DERIVED] in the reference: the released file was
never inspected, so the names follow the module structure of fairseq's code):

  modality_encoders.TEXT.local_encoder.embed_tokens.weight            [V, D]
  modality_encoders.TEXT.local_encoder.embed_positions.weight         [P, D]
  modality_encoders.TEXT.local_encoder.layernorm_embedding.{weight,bias} [D]
  modality_encoders.TEXT.decoder.blocks.{j}.0.{weight [dim, in/groups, k], bias [dim]}
  modality_encoders.TEXT.decoder.proj.{2i}.{weight,bias}   (projection_layers > 1; `proj.*`
                                                            when it is one Linear)
  blocks.{i}.attn.qkv.{weight [3D, D], bias [3D]}   rows [q | k | v], each (head, Dh)
  blocks.{i}.attn.proj.*, blocks.{i}.norm1.*, blocks.{i}.mlp.fc1.*, blocks.{i}.mlp.fc2.*,
  blocks.{i}.norm2.*
  _ema: {"{i}.norm1.weight", ...}   the EMA teacher's blocks (fp32), keyed without `blocks.`

Mapping onto the encoder tree (`model/encoder.py`): norm1 -> attention_layer_norm, norm2 ->
ffn_layer_norm, mlp.fc1/fc2 -> fc1/fc2, attn.proj -> attention/out, and the fused qkv weight is
exactly the fused kernel [D, 3, H, Dh] transposed and reshaped. The decoder goes to the
`Decoder1d` tree (conv_{j}, proj_{i}). Every conversion is a transpose or reshape, so a round
trip is bit-exact (`params_to_fairseq_v2`).

The encoder alone is RoBERTa's (the same function up to pad zeroing, which changes only pad
outputs), so `export_hf_dir` writes it as a Hugging Face `Data2VecTextModel` directory that
`transformers` and this project's fine-tuning load.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.weights import layout
from data2vec_jax.weights.torch_io import CheckpointError, load_torch_pickle, plain_data, to_numpy

TEXT = "modality_encoders.TEXT."
LOCAL = TEXT + "local_encoder."
DECODER = TEXT + "decoder."
EMA_KEY = "_ema"
PAD_ID = 1

_EMBEDDINGS = {
  "embed_tokens.weight": "embeddings/token_embedding/embedding",
  "embed_positions.weight": "embeddings/position_embedding/embedding",
  "layernorm_embedding.weight": "embeddings/layer_norm/scale",
  "layernorm_embedding.bias": "embeddings/layer_norm/bias",
}
# block key suffix -> (our stacked leaf, transposed from torch's [out, in])
_BLOCK = {
  "norm1.weight": ("attention_layer_norm/scale", False),
  "norm1.bias": ("attention_layer_norm/bias", False),
  "norm2.weight": ("ffn_layer_norm/scale", False),
  "norm2.bias": ("ffn_layer_norm/bias", False),
  "mlp.fc1.weight": ("fc1/kernel", True),
  "mlp.fc1.bias": ("fc1/bias", False),
  "mlp.fc2.weight": ("fc2/kernel", True),
  "mlp.fc2.bias": ("fc2/bias", False),
  "attn.proj.bias": ("attention/out/bias", False),
}


def _num_blocks(keys: Any, prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
  return max(found) + 1 if found else 0


def blocks_from_fairseq(sd: Mapping[str, np.ndarray], config: EncoderConfig, prefix: str) -> dict:
  """`{prefix}{i}.*` block tensors -> our {'layers': ...} tree (numpy)."""
  d, h, dh, n = config.hidden_size, config.num_heads, config.head_dim, config.num_layers
  get = lambda i, name: np.asarray(sd[f"{prefix}{i}.{name}"])
  flat = {}
  for name, (leaf, transpose) in _BLOCK.items():
    flat[f"layers/{leaf}"] = np.stack(
      [get(i, name).T if transpose else get(i, name) for i in range(n)]
    )
  flat["layers/attention/qkv/kernel"] = np.stack(
    [get(i, "attn.qkv.weight").T.reshape(d, 3, h, dh) for i in range(n)]
  )
  flat["layers/attention/qkv/bias"] = np.stack(
    [get(i, "attn.qkv.bias").reshape(3, h, dh) for i in range(n)]
  )
  flat["layers/attention/out/kernel"] = np.stack(
    [get(i, "attn.proj.weight").T.reshape(h, dh, d) for i in range(n)]
  )
  return layout.unflatten({k: np.ascontiguousarray(v) for k, v in flat.items()})


def blocks_to_fairseq(layers: Any, config: EncoderConfig, prefix: str) -> dict[str, np.ndarray]:
  """Inverse of `blocks_from_fairseq` for a {'layers': ...} tree."""
  flat = {k: np.asarray(v) for k, v in layout.flatten(layers).items()}
  d = config.hidden_size
  out = {}
  for i in range(config.num_layers):
    for name, (leaf, transpose) in _BLOCK.items():
      w = flat[f"layers/{leaf}"][i]
      out[f"{prefix}{i}.{name}"] = w.T if transpose else w
    out[f"{prefix}{i}.attn.qkv.weight"] = flat["layers/attention/qkv/kernel"][i].reshape(d, 3 * d).T
    out[f"{prefix}{i}.attn.qkv.bias"] = flat["layers/attention/qkv/bias"][i].reshape(3 * d)
    out[f"{prefix}{i}.attn.proj.weight"] = flat["layers/attention/out/kernel"][i].reshape(d, d).T
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _proj_names(num_linear: int) -> list[str]:
  """torch names of the decoder projection's Linears (Sequential: Linear, GELU, Linear, ...)."""
  return ["proj"] if num_linear == 1 else [f"proj.{2 * i}" for i in range(num_linear)]


def decoder_from_fairseq(sd: Mapping[str, np.ndarray]) -> dict:
  """`modality_encoders.TEXT.decoder.*` -> our `Decoder1d` tree."""
  tree: dict[str, Any] = {}
  for j in range(_num_blocks(sd, DECODER + "blocks.")):
    w = np.asarray(sd[f"{DECODER}blocks.{j}.0.weight"])  # [out, in/groups, k]
    tree[f"conv_{j}"] = {
      "kernel": np.ascontiguousarray(w.transpose(2, 1, 0)),
      "bias": np.asarray(sd[f"{DECODER}blocks.{j}.0.bias"]),
    }
  num_linear = 1 if f"{DECODER}proj.weight" in sd else _num_blocks(sd, DECODER + "proj.") // 2 + 1
  for i, name in enumerate(_proj_names(num_linear)):
    tree[f"proj_{i}"] = layout.linear_from_torch(
      sd[f"{DECODER}{name}.weight"], sd[f"{DECODER}{name}.bias"]
    )
  return tree


def decoder_to_fairseq(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  out = {}
  convs = sorted((k for k in tree if k.startswith("conv_")), key=lambda k: int(k[5:]))
  for j, key in enumerate(convs):
    out[f"{DECODER}blocks.{j}.0.weight"] = np.ascontiguousarray(
      np.asarray(tree[key]["kernel"]).transpose(2, 1, 0)
    )
    out[f"{DECODER}blocks.{j}.0.bias"] = np.asarray(tree[key]["bias"])
  projs = sorted((k for k in tree if k.startswith("proj_")), key=lambda k: int(k[5:]))
  for key, name in zip(projs, _proj_names(len(projs))):
    out.update(layout.linear_to_torch(tree[key], DECODER + name))
  return out


def config_from_state_dict(
  sd: Mapping[str, np.ndarray], *, num_heads: int | None = None, layer_norm_eps: float = 1e-5
) -> EncoderConfig:
  """Shapes -> `EncoderConfig`. The head count is not in the shapes (fused qkv): given, or
  D / 64 (every released data2vec text model has 64-wide heads)."""
  tokens = np.asarray(sd[LOCAL + "embed_tokens.weight"])
  d = tokens.shape[1]
  return EncoderConfig(
    vocab_size=tokens.shape[0],
    hidden_size=d,
    num_layers=_num_blocks(sd, "blocks."),
    num_heads=num_heads or max(d // 64, 1),
    intermediate_size=np.asarray(sd["blocks.0.mlp.fc1.weight"]).shape[0],
    max_positions=np.asarray(sd[LOCAL + "embed_positions.weight"]).shape[0],
    pad_id=PAD_ID,
    layer_norm_eps=layer_norm_eps,
  )


def params_from_fairseq_v2(
  sd: Mapping[str, Any], config: EncoderConfig
) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """A v2 state dict (tensors or arrays; `_ema` optional) -> ({'encoder', 'head'}, EMA tree).

  The EMA tree is {'layers': ...} (`ema.init_ema` with `ema_transformer_layers_only`), or None
  when the dict has no `_ema`. Raises CheckpointError on missing, unexpected or misshapen keys.
  """
  sd = dict(sd)
  ema_raw = sd.pop(EMA_KEY, None)
  arrays = {k: to_numpy(v, k) for k, v in sd.items()}
  encoder_keys = [LOCAL + k for k in _EMBEDDINGS] + [k for k in arrays if k.startswith("blocks.")]
  unexpected = sorted(k for k in arrays if k not in encoder_keys and not k.startswith(DECODER))
  missing = [k for k in (LOCAL + e for e in _EMBEDDINGS) if k not in arrays]
  if unexpected or missing:
    raise CheckpointError(
      f"data2vec 2.0 state dict: missing keys {missing}, unexpected keys {unexpected}"
    )
  try:
    encoder = blocks_from_fairseq(arrays, config, "blocks.")
    encoder.update(layout.unflatten({ours: arrays[LOCAL + fs] for fs, ours in _EMBEDDINGS.items()}))
    layout.check_tree(layout.flatten(encoder), layout.param_shapes(config), "converted encoder")
    ema = None
    if ema_raw is not None:
      ema_arrays = {k: to_numpy(v, f"{EMA_KEY}[{k}]") for k, v in dict(ema_raw).items()}
      ema = blocks_from_fairseq(ema_arrays, config, "")
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"data2vec 2.0 state dict does not match the config: {e}") from None
  return {"encoder": encoder, "head": decoder_from_fairseq(arrays)}, ema


def params_to_fairseq_v2(
  params: Mapping[str, Any], config: EncoderConfig, ema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
  """Inverse of `params_from_fairseq_v2`: numpy arrays in fairseq's layout (and `_ema`)."""
  flat = {k: np.asarray(v) for k, v in layout.flatten(params["encoder"]).items()}
  out = {LOCAL + fs: flat[ours] for fs, ours in _EMBEDDINGS.items()}
  out.update(blocks_to_fairseq({"layers": params["encoder"]["layers"]}, config, "blocks."))
  out.update(decoder_to_fairseq(params["head"]))
  if ema is not None:
    out[EMA_KEY] = blocks_to_fairseq(ema, config, "")
  return out


def load_fairseq_v2(
  path: str | os.PathLike[str], *, num_heads: int | None = None
) -> tuple[EncoderConfig, dict[str, Any], dict[str, Any] | None]:
  """Reads a data2vec 2.0 `.pt` (without executing code from it): (config, params, EMA).

  The head count comes from `num_heads`, else the checkpoint's `cfg.model.num_heads`, else D/64;
  LayerNorm eps from `cfg.model.norm_eps` (the text yaml's 1e-5 when absent).
  """
  return from_checkpoint(load_torch_pickle(path), path, num_heads=num_heads)


def is_v2_checkpoint(checkpoint: Any) -> bool:
  """Whether an unpickled fairseq checkpoint is data2vec 2.0's layout (`modality_encoders.*`)."""
  model = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
  return isinstance(model, Mapping) and any(str(k).startswith(TEXT) for k in model)


def from_checkpoint(
  checkpoint: Any, path: str | os.PathLike[str], *, num_heads: int | None = None
) -> tuple[EncoderConfig, dict[str, Any], dict[str, Any] | None]:
  """`load_fairseq_v2` of a checkpoint already unpickled from `path` (named in errors)."""
  if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
    raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
  model_cfg = plain_data(checkpoint.get("cfg") or {})
  model_cfg = model_cfg.get("model", {}) if isinstance(model_cfg, Mapping) else {}
  sd = checkpoint["model"]
  try:
    config = config_from_state_dict(
      {k: to_numpy(v, k) for k, v in sd.items() if k != EMA_KEY},
      num_heads=num_heads or model_cfg.get("num_heads"),
      layer_norm_eps=float(model_cfg.get("norm_eps", 1e-5) or 1e-5),
    )
    params, ema = params_from_fairseq_v2(sd, config)
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from None
  return config, params, ema


def converted(
  config: EncoderConfig, params: Mapping[str, Any], ema: Mapping[str, Any] | None, *, use_ema: bool
) -> layout.Converted:
  """The converter CLI's view of a v2 checkpoint: the encoder (the EMA teacher's blocks with
  `use_ema`; the embeddings are the student's, which the teacher shares), the decoder as head
  'decoder'."""
  encoder = dict(params["encoder"])
  if use_ema:
    if ema is None:
      raise CheckpointError("--ema: the data2vec 2.0 checkpoint has no '_ema' teacher")
    encoder["layers"] = ema["layers"]
  return layout.Converted(
    config=config,
    params=encoder,
    heads={"decoder": params["head"]},
    metadata={"source_format": "fairseq_v2", "teacher": bool(use_ema)},
    source="fairseq data2vec 2.0 (" + ("EMA teacher" if use_ema else "student") + ")",
    num_source_tensors=len(layout.flatten(params)) + (len(layout.flatten(ema)) if ema else 0),
  )


def export_hf_dir(
  directory: str | os.PathLike[str], config: EncoderConfig, encoder_params: Any
) -> list[str]:
  """The encoder as a Hugging Face `Data2VecTextModel` directory (config.json + safetensors)."""
  from data2vec_jax.weights.hf import save_hf_dir  # pylint: disable=import-outside-toplevel

  return save_hf_dir(directory, config, encoder_params, metadata={"source_format": "fairseq_v2"})
