"""fairseq data2vec-text checkpoints (`nlp_base.pt` and newer) -> data2vec-jax parameters.

A fairseq checkpoint is a pickled dict: `model` (the state dict), `cfg` (an omegaconf
`DictConfig`, or a plain dict in newer fairseq) or legacy `args` (an `argparse.Namespace`), plus
optimizer/trainer state we do not read. It is loaded with `torch_io.load_torch_pickle`, which
executes nothing from the file.

State-dict keys (prefix `encoder.sentence_encoder.`; legacy `decoder.` and `emb_layer_norm`
names are renamed first, as fairseq's own upgrade does):
  embed_tokens.weight [V, D], embed_positions.weight [P, D], layernorm_embedding.{weight,bias},
  layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}, layers.{i}.self_attn_layer_norm.*,
  layers.{i}.fc1.*, layers.{i}.fc2.*, layers.{i}.final_layer_norm.*, version (buffer, ignored).
Heads: `encoder.regression_head.{j}.{weight,bias}` (current code; -> head `regression_head`
with `dense_0, dense_1, ...` in order, the parameter names of `heads.RegressionHead`) or the
legacy `encoder.lm_head.{dense,layer_norm}.*`,
`encoder.lm_head.{weight,bias}` of the released `nlp_base.pt` (-> head `lm_head`: `dense`,
`layer_norm`, `bias`, the names of `heads.MaskedLMHead` and of HF's `lm_head`; the decoder is
stored as `decoder/kernel` only when it is not tied to `embed_tokens`).

Teacher (`use_ema=True`): `encoder._ema` holds fp32 copies keyed like `layers.0.fc1.weight`.

A data2vec 2.0 checkpoint (`modality_encoders.TEXT.*`, `blocks.*`) is recognised by its keys and
converted by `fairseq_v2.py` (encoder, decoder as head `decoder`, `_ema` blocks with use_ema).
With `ema_transformer_layers_only` (the text default) the teacher's embeddings are *not* averaged
but copied from the student before every teacher forward, so `_ema`'s embedding entries may be
stale or absent. The teacher is therefore built as: blocks from `_ema`, token/position
embeddings and embedding LayerNorm from the student, exactly what fairseq's teacher computes.

Hyper-parameters come from `cfg['model']` (nested `transformer.encoder.embed_dim` etc., or the
flat legacy names `encoder_embed_dim`, ...) or from `args`, never guessed; they are then checked
against the tensor shapes. Exceptions, documented: the vocabulary size is the row count of
`embed_tokens` (fairseq stores the dictionary, not its size, outside the checkpoint), the pad id
is 1 (fairseq's `Dictionary` always puts `<s> <pad> </s> <unk>` first), and LayerNorm eps is
fairseq's fixed 1e-5.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import numpy as np

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.weights import fairseq_v2, layout
from data2vec_jax.weights.layout import Converted
from data2vec_jax.weights.torch_io import CheckpointError, load_torch_pickle, plain_data, to_numpy

ENCODER_PREFIX = "encoder.sentence_encoder."
EMA_KEY = "encoder._ema"
FAIRSEQ_PAD_ID = 1  # fairseq Dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3
FAIRSEQ_LAYER_NORM_EPS = 1e-5  # fairseq.modules.LayerNorm default; not configurable there

_EMBEDDING_RENAMES = {
  "embed_tokens.weight": "embeddings.word_embeddings.weight",
  "embed_positions.weight": "embeddings.position_embeddings.weight",
  "layernorm_embedding.weight": "embeddings.LayerNorm.weight",
  "layernorm_embedding.bias": "embeddings.LayerNorm.bias",
}
_LAYER_RENAMES = {
  "self_attn.q_proj": "attention.self.query",
  "self_attn.k_proj": "attention.self.key",
  "self_attn.v_proj": "attention.self.value",
  "self_attn.out_proj": "attention.output.dense",
  "self_attn_layer_norm": "attention.output.LayerNorm",
  "fc1": "intermediate.dense",
  "fc2": "output.dense",
  "final_layer_norm": "output.LayerNorm",
}
_IGNORED_ENCODER_KEYS = ("version",)


def fairseq_names(config: EncoderConfig) -> dict[str, str]:
  """fairseq encoder-local name (e.g. `layers.0.fc1.weight`) -> reference (HF) name."""
  names = dict(_EMBEDDING_RENAMES)
  for i in range(config.num_layers):
    for fs, ref in _LAYER_RENAMES.items():
      for leaf in ("weight", "bias"):
        names[f"layers.{i}.{fs}.{leaf}"] = f"encoder.layer.{i}.{ref}.{leaf}"
  return names


# ----------------------------------------------------------------------------------------------
# Hyper-parameters.

_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def _lookup(tree: Any, dotted: str) -> Any:
  node = tree
  for part in dotted.split("."):
    if not isinstance(node, Mapping) or part not in node:
      return None
    node = node[part]
  return node


def _resolve(value: Any, root: Any) -> Any:
  """Resolves an unresolved omegaconf interpolation `${a.b}` against the root cfg."""
  for _ in range(8):  # chains of interpolations are short; avoid cycles
    match = _INTERPOLATION.match(value) if isinstance(value, str) else None
    if not match:
      return value
    value = _lookup(root, match.group(1))
  return value


def _first(model_cfg: Any, root: Any, *paths: str) -> Any:
  for path in paths:
    value = _resolve(_lookup(model_cfg, path), root)
    if value is not None and value != "???":
      return value
  return None


def config_from_fairseq(
  checkpoint: Mapping[str, Any], state: Mapping[str, np.ndarray]
) -> tuple[EncoderConfig, list[str]]:
  """Reads the encoder hyper-parameters from `cfg['model']` or `args`; checks them vs shapes.

  Args:
    checkpoint: the unpickled checkpoint dict (cfg/args as plain data, see `plain_data`).
    state: the renamed student state dict (fairseq encoder-local names -> arrays).
  Returns:
    (config, notes about assumptions).
  Raises:
    CheckpointError: no cfg/args, a required value missing, an unsupported setting, or a
      value that disagrees with the tensor shapes.
  """
  get, source = _cfg_reader(checkpoint)
  values = {
    "hidden_size": get("transformer.encoder.embed_dim", "encoder_embed_dim"),
    "num_layers": get("transformer.encoder.layers", "encoder_layers"),
    "num_heads": get("transformer.encoder.attention_heads", "encoder_attention_heads"),
    "intermediate_size": get("transformer.encoder.ffn_embed_dim", "encoder_ffn_embed_dim"),
  }
  missing = [k for k, v in values.items() if v is None]
  if missing:
    raise CheckpointError(f"{source} lacks the encoder's {missing}")
  notes = _refuse_unsupported(get)
  vocab_size, max_positions = _shapes_agreeing_with_cfg(state, values, get, source)
  defaults = EncoderConfig()
  dropouts = {
    "dropout": get("transformer.dropout", "dropout"),
    "attention_dropout": get("transformer.attention_dropout", "attention_dropout"),
    "activation_dropout": get("transformer.activation_dropout", "activation_dropout"),
  }
  try:
    config = EncoderConfig(
      vocab_size=vocab_size,
      max_positions=max_positions,
      pad_id=FAIRSEQ_PAD_ID,
      layer_norm_eps=FAIRSEQ_LAYER_NORM_EPS,
      **{k: int(v) for k, v in values.items()},
      **{k: float(v) if v is not None else getattr(defaults, k) for k, v in dropouts.items()},
    )
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{source} values are inconsistent: {e}") from None
  return config, notes


def _cfg_reader(checkpoint: Mapping[str, Any]) -> tuple[Callable[..., Any], str]:
  """(get, source): `get(*paths)` is the first set value of `cfg['model']` (else `args`) among
  the dotted `paths`, interpolations resolved; `source` names what is read, for errors."""
  root = plain_data(checkpoint.get("cfg"))
  model_cfg = root.get("model") if isinstance(root, Mapping) else None
  source = "cfg['model']"
  if not isinstance(model_cfg, Mapping):
    model_cfg = plain_data(checkpoint.get("args"))
    root, source = model_cfg, "args"
  if not isinstance(model_cfg, Mapping):
    raise CheckpointError(
      "checkpoint has neither cfg['model'] nor args: cannot read the "
      "encoder hyper-parameters (they are never guessed)"
    )
  return (lambda *paths: _first(model_cfg, root, *paths)), source


def _refuse_unsupported(get: Callable[..., Any]) -> list[str]:
  """CheckpointError for an encoder the Flax one cannot compute; notes about assumptions."""
  notes: list[str] = []
  activation = get("transformer.activation_fn", "activation_fn")
  if activation is not None and activation != "gelu":
    raise CheckpointError(f"unsupported activation_fn {activation!r} (only exact 'gelu')")
  if get("transformer.encoder.normalize_before", "encoder_normalize_before"):
    raise CheckpointError("pre-LN encoders (normalize_before=True) are not supported")
  if get("transformer.layernorm_embedding", "layernorm_embedding") is False:
    raise CheckpointError("encoders without an embedding LayerNorm are not supported")
  if get("transformer.encoder.learned_pos", "encoder_learned_pos") is False:
    raise CheckpointError("sinusoidal positions (learned_pos=False) are not supported")
  no_scale = get("transformer.no_scale_embedding", "no_scale_embedding")
  if no_scale is False:
    raise CheckpointError("scaled token embeddings (no_scale_embedding=False) are not supported")
  if no_scale is None:
    notes.append("cfg does not say no_scale_embedding; assumed true (data2vec/RoBERTa)")
  return notes


def _shapes_agreeing_with_cfg(
  state: Mapping[str, np.ndarray],
  values: Mapping[str, Any],
  get: Callable[..., Any],
  source: str,
) -> tuple[int, int]:
  """(vocab size, max positions) read from the embedding shapes, after checking that they, and
  the layer count, agree with what the cfg says: shapes decide what cfg cannot say."""
  tok = state.get("embed_tokens.weight")
  pos = state.get("embed_positions.weight")
  if tok is None or pos is None:
    raise CheckpointError(
      "checkpoint lacks encoder.sentence_encoder.embed_tokens.weight or embed_positions.weight"
    )
  max_positions = int(pos.shape[0])
  cfg_max = get(
    "max_positions", "transformer.max_source_positions", "max_source_positions", "tokens_per_sample"
  )
  if cfg_max is not None and int(cfg_max) + FAIRSEQ_PAD_ID + 1 != max_positions:
    raise CheckpointError(
      f"{source} says max_positions={cfg_max}, so embed_positions should have "
      f"{int(cfg_max) + FAIRSEQ_PAD_ID + 1} rows; it has {max_positions}"
    )
  if int(tok.shape[1]) != int(values["hidden_size"]):
    raise CheckpointError(
      f"{source} says embed_dim={values['hidden_size']} but embed_tokens is {tuple(tok.shape)}"
    )
  found_layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
  if found_layers and max(found_layers) + 1 != int(values["num_layers"]):
    raise CheckpointError(
      f"{source} says {values['num_layers']} layers but the state dict has {max(found_layers) + 1}"
    )
  return int(tok.shape[0]), max_positions


# ----------------------------------------------------------------------------------------------
# State dict.


def _rename_legacy(key: str) -> str:
  if key.startswith("decoder."):
    key = "encoder." + key[len("decoder.") :]
  return key.replace(".emb_layer_norm.", ".layernorm_embedding.")


def _head_from_fairseq(
  state: dict[str, np.ndarray], embed_tokens: np.ndarray, problems: list[str]
) -> dict[str, Any]:
  """Pops `encoder.regression_head.*` / `encoder.lm_head.*` from `state` into head params."""
  heads: dict[str, Any] = {}
  reg = layout.pop_prefixed(state, "encoder.regression_head.", strip=True)
  if reg:
    heads["regression_head"] = _regression_head(reg, problems)
  lm = layout.pop_prefixed(state, "encoder.lm_head.", strip=True)
  if lm:
    head = _lm_head(lm, embed_tokens, problems)
    if head is not None:
      heads["lm_head"] = head
  return heads


def _regression_head(reg: dict[str, np.ndarray], problems: list[str]) -> dict[str, Any]:
  """`encoder.regression_head.*` (prefix stripped) -> {dense_0, dense_1, ...}."""
  head = {}
  # nn.Sequential(Linear, GELU, Linear, ...): the k-th Linear becomes `dense_k`, the names of
  # `heads.RegressionHead`.
  indices = sorted({int(k.split(".")[0]) for k in reg if k.split(".")[0].isdigit()})
  for k, idx in enumerate(indices):
    w, b = reg.pop(f"{idx}.weight", None), reg.pop(f"{idx}.bias", None)
    if w is None or b is None or w.ndim != 2 or b.shape != (w.shape[0],):
      problems.append(f"encoder.regression_head.{idx}: bad or missing weight/bias")
      continue
    head[f"dense_{k}"] = layout.linear_from_torch(w, b)
  if reg:
    problems.append(f"unexpected keys {sorted('encoder.regression_head.' + k for k in reg)}")
  return head


_LM_HEAD_KEYS = {
  "dense.weight",
  "dense.bias",
  "layer_norm.weight",
  "layer_norm.bias",
  "weight",
  "bias",
}


def _lm_head(
  lm: dict[str, np.ndarray], embed_tokens: np.ndarray, problems: list[str]
) -> dict[str, Any] | None:
  """`encoder.lm_head.*` (prefix stripped) -> {dense, layer_norm, bias[, decoder]}; None (and a
  problem) when keys or shapes are wrong. The decoder is kept only when not tied."""
  if set(lm) != _LM_HEAD_KEYS:
    problems.append(f"encoder.lm_head keys {sorted(lm)}; expected {sorted(_LM_HEAD_KEYS)}")
    return None
  d = embed_tokens.shape[1]
  if (
    lm["dense.weight"].shape != (d, d)
    or lm["weight"].ndim != 2
    or lm["weight"].shape[1] != d
    or lm["bias"].shape != (lm["weight"].shape[0],)
  ):
    problems.append(
      f"encoder.lm_head shapes: dense {lm['dense.weight'].shape}, weight "
      f"{lm['weight'].shape}, bias {lm['bias'].shape} (D={d})"
    )
    return None
  head = {
    "dense": layout.linear_from_torch(lm["dense.weight"], lm["dense.bias"]),
    "layer_norm": layout.layer_norm_from_torch(lm["layer_norm.weight"], lm["layer_norm.bias"]),
    "bias": np.asarray(lm["bias"]),
  }
  if not (lm["weight"].shape == embed_tokens.shape and np.array_equal(lm["weight"], embed_tokens)):
    head["decoder"] = {"kernel": np.ascontiguousarray(lm["weight"].T)}
  return head


def convert_fairseq_checkpoint(
  checkpoint: Mapping[str, Any], *, use_ema: bool = False
) -> Converted:
  """An unpickled fairseq checkpoint dict -> encoder params (student, or teacher with use_ema).

  Raises:
    CheckpointError: no `model`, missing/unexpected keys or shape mismatches (listed),
      unsupported hyper-parameters, or `use_ema` without (complete) `encoder._ema`.
  """
  if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
    raise CheckpointError("not a fairseq checkpoint: expected a dict with a 'model' state dict")
  raw = dict(checkpoint["model"])
  ema_raw = raw.pop(EMA_KEY, None)
  state = {_rename_legacy(k): to_numpy(v, k) for k, v in raw.items()}
  student = layout.pop_prefixed(state, ENCODER_PREFIX, strip=True)
  ignored = [ENCODER_PREFIX + k for k in _IGNORED_ENCODER_KEYS if k in student]
  for k in _IGNORED_ENCODER_KEYS:
    student.pop(k, None)
  config, notes = config_from_fairseq(checkpoint, student)
  names = fairseq_names(config)

  problems: list[str] = []
  heads = _head_from_fairseq(state, student["embed_tokens.weight"], problems)
  if state:  # everything outside the encoder and its head
    problems.append(f"unexpected keys {sorted(state)}")
  expected = layout.reference_shapes(config)
  fs_shapes = {fs: expected[ref] for fs, ref in names.items()}
  try:
    layout.check_tree(student, fs_shapes, f"{ENCODER_PREFIX}* (vs the checkpoint's cfg)")
  except ValueError as e:
    problems.append(str(e))
  if use_ema:
    student = _with_teacher_blocks(student, ema_raw, fs_shapes, problems, notes)
  elif ema_raw is not None:
    ignored.append(f"{EMA_KEY} ({len(ema_raw)} teacher tensors; use_ema=True selects them)")
  if problems:
    raise CheckpointError("fairseq checkpoint cannot be converted: " + "; ".join(problems))

  params = layout.params_from_reference({names[k]: v for k, v in student.items()}, config)
  metadata = {
    "source_format": "fairseq",
    "teacher": bool(use_ema),
    "hf_config": {"bos_token_id": 0, "eos_token_id": 2},
  }
  n_ema = len(ema_raw) if isinstance(ema_raw, Mapping) else 0
  return Converted(
    config=config,
    params=params,
    heads=heads,
    metadata=metadata,
    ignored=sorted(ignored),
    notes=notes,
    source=f"fairseq ({'EMA teacher' if use_ema else 'student'})",
    num_source_tensors=len(raw) + n_ema,
  )


def _with_teacher_blocks(
  student: dict[str, np.ndarray],
  ema_raw: Any,
  fs_shapes: Mapping[str, tuple[int, ...]],
  problems: list[str],
  notes: list[str],
) -> dict[str, np.ndarray]:
  """The teacher: `student` with its transformer blocks from `encoder._ema` (`ema_raw`).

  The embeddings and embedding LayerNorm stay the student's (ema_transformer_layers_only);
  `_ema`'s differing embedding entries are named in the note. `fs_shapes`: fairseq name ->
  shape of every encoder tensor. Appends to `problems` (and returns `student` unchanged) when
  `_ema` lacks, adds or misshapes a block tensor.
  """
  if not isinstance(ema_raw, Mapping):
    raise CheckpointError("use_ema=True but the checkpoint has no encoder._ema teacher weights")
  ema = {k: to_numpy(v, f"{EMA_KEY}[{k}]") for k, v in ema_raw.items()}
  block_names = [fs for fs in fs_shapes if fs.startswith("layers.")]
  missing = [k for k in block_names if k not in ema]
  unknown = sorted(set(ema) - set(fs_shapes) - set(_IGNORED_ENCODER_KEYS))
  bad = [
    f"{k}: got {tuple(ema[k].shape)}, expected {tuple(fs_shapes[k])}"
    for k in block_names
    if k in ema and tuple(ema[k].shape) != tuple(fs_shapes[k])
  ]
  if missing or unknown or bad:
    problems.append(
      f"{EMA_KEY}: missing keys {missing}, unexpected keys {unknown}, shape mismatches {bad}"
    )
    return student
  stale = [
    k
    for k in _EMBEDDING_RENAMES
    if k in ema
    and not (
      ema[k].shape == student.get(k, np.empty(0)).shape and np.array_equal(ema[k], student[k])
    )
  ]
  notes.append(
    "teacher: transformer blocks from encoder._ema, embeddings and embedding "
    "LayerNorm from the student (ema_transformer_layers_only)"
    + (f"; _ema's differing embedding entries ignored: {stale}" if stale else "")
  )
  return {**student, **{k: ema[k] for k in block_names}}


def load_fairseq(path: str | os.PathLike[str], *, use_ema: bool = False) -> Converted:
  """Reads and converts a fairseq `.pt` (see the module docstring).

  Raises:
    CheckpointError: as `load_torch_pickle` and `convert_fairseq_checkpoint`, naming the file.
  """
  path = os.fspath(path)
  checkpoint = load_torch_pickle(path)
  if fairseq_v2.is_v2_checkpoint(checkpoint):  # data2vec 2.0's layout: its own converter
    config, params, ema = fairseq_v2.from_checkpoint(checkpoint, path)
    converted = fairseq_v2.converted(config, params, ema, use_ema=use_ema)
    converted.metadata["source_file"] = os.path.basename(path)
    return converted
  try:
    converted = convert_fairseq_checkpoint(checkpoint, use_ema=use_ema)
  except CheckpointError as e:  # e.g. a tensor with NaN/Inf: say which file holds it
    raise CheckpointError(f"{path}: {e}") from None
  converted.metadata["source_file"] = os.path.basename(path)
  return converted
