"""Hugging Face `Data2VecText*` / `Roberta*` directories <-> data2vec-jax parameters.

Import (`load_hf_dir`) reads `config.json` + `model.safetensors` (or sharded safetensors, or
`pytorch_model.bin`, read weights-only) of `Data2VecTextModel`, `Data2VecTextForMaskedLM`,
`Data2VecTextForSequenceClassification`, `Data2VecTextForTokenClassification` and the same four
`Roberta*` classes. Hyper-parameters come from `config.json` only (the `transformers` library
defaults differ from the released model: eps 1e-12, 2 token types), and anything the Flax encoder
cannot compute is refused.

Decisions:
- **Token types.** HF adds `token_type_embeddings[token_type_ids]` to every token; with the
  default all-zero `token_type_ids` that is row 0. The Flax encoder has no token types, so row 0
  is folded into the word embeddings on import (exactly what HF computes; the released model's
  row is zero, so nothing changes there). Rows >= 1 are only reached with non-zero
  `token_type_ids`, which data2vec/RoBERTa never use; if any of them is non-zero the import is
  refused (`drop_token_type_rows=True` drops them knowingly). Export writes a single zero row
  (`type_vocab_size: 1`, as in the released config). Hence HF -> jax -> HF is bit-exact when row 0
  is zero, and hidden-state-exact otherwise.
- **Pooler.** Not part of the encoder, but kept as head `pooler` so a round trip is exact. On
  export to `Data2VecTextModel` (which always builds a pooler), a missing pooler is written as
  zeros, so `from_pretrained` reports no missing keys; its `pooler_output` is then meaningless
  (tanh(0) = 0), and the export report says so.
- **Heads.** `lm_head.*` -> head `lm_head`; the sentence classifier's
  `classifier.{dense,out_proj}.*` -> head `classifier`; the token classifier's
  `classifier.{weight,bias}` -> head `token_classifier` ({kernel [D, C], bias [C]}). Both HF
  heads are called `classifier`, so the keys decide which one a checkpoint holds, and the token
  head gets its own name so one heads dict (and a data2vec-jax directory) can never confuse the
  two. Flax layout, see `layout.py`. A decoder tied to the word embeddings is not stored.
- Non-persistent buffers some old checkpoints carry (`position_ids`, `token_type_ids`) are
  ignored and listed.

Export (`save_hf_dir`) writes `config.json` + `model.safetensors` (+ the tokenizer files when a
tokenizer is given, `hf_tokenizer`) for `Data2VecTextModel`,
`Data2VecTextForMaskedLM` (needs an `lm_head` with vocabulary-sized output),
`Data2VecTextForSequenceClassification` (needs a `classifier` head) or
`Data2VecTextForTokenClassification` (needs a `token_classifier` head). For the two classifiers
it can write a fine-tuned config: `id2label`/`label2id` from label names (in the order of the
output rows), `problem_type`, `classifier_dropout`, `finetuning_task`
(docs/reference/finetuning_reference.md §2.2).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from data2vec_jax.data.tokenizer import Tokenizer
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.weights import layout, model_tokenizer
from data2vec_jax.weights.hf_tokenizer import save_hf_tokenizer
from data2vec_jax.weights.layout import Converted
from data2vec_jax.weights.torch_io import CheckpointError, load_hf_state_dict, save_safetensors

# architecture -> (model_type, key prefix of the encoder inside the model).
SUPPORTED_ARCHITECTURES = {
  "Data2VecTextModel": ("data2vec-text", ""),
  "Data2VecTextForMaskedLM": ("data2vec-text", "data2vec_text."),
  "Data2VecTextForSequenceClassification": ("data2vec-text", "data2vec_text."),
  "Data2VecTextForTokenClassification": ("data2vec-text", "data2vec_text."),
  "RobertaModel": ("roberta", ""),
  "RobertaForMaskedLM": ("roberta", "roberta."),
  "RobertaForSequenceClassification": ("roberta", "roberta."),
  "RobertaForTokenClassification": ("roberta", "roberta."),
}
EXPORT_ARCHITECTURES = (
  "Data2VecTextModel",
  "Data2VecTextForMaskedLM",
  "Data2VecTextForSequenceClassification",
  "Data2VecTextForTokenClassification",
)
# Architectures with a label-sized output, and the head each one exports.
CLASSIFIER_HEADS = {
  "Data2VecTextForSequenceClassification": "classifier",
  "Data2VecTextForTokenClassification": "token_classifier",
}
# What each head looks like (for error messages).
CLASSIFIER_HINT = {
  "classifier": "a sentence classifier head is {'dense', 'out_proj'} (finetune.SequenceClassifier)",
  "token_classifier": "a token classifier head is {'kernel', 'bias'} (finetune.TokenClassifier; "
  "the HF importer names it 'token_classifier')",
}
# transformers' `problem_type` values (the sequence classifier's loss; §2.2).
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
_TOKEN_TYPE = "embeddings.token_type_embeddings.weight"
_IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# config.json values that do not shape the encoder but are worth carrying through a round trip.
_CARRIED_CONFIG_KEYS = (
  "bos_token_id",
  "eos_token_id",
  "mask_token_id",
  "initializer_range",
  "tokenizer_class",
  "id2label",
  "label2id",
  "classifier_dropout",
  "problem_type",
  "finetuning_task",
)


def config_from_hf(hf: Mapping[str, Any]) -> EncoderConfig:
  """`config.json` of a supported HF model -> EncoderConfig, refusing what the encoder can't do.

  Raises:
    CheckpointError: unsupported model type/activation/positions/decoder, or a missing value
      (library defaults are never used: they differ from the released model).
  """
  model_type = hf.get("model_type")
  if model_type not in ("data2vec-text", "roberta"):
    raise CheckpointError(
      f"unsupported model_type {model_type!r}: expected 'data2vec-text' or 'roberta'"
    )
  if hf.get("hidden_act", "gelu") != "gelu":
    raise CheckpointError(
      f"unsupported hidden_act {hf.get('hidden_act')!r}: the encoder uses exact (erf) 'gelu'"
    )
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise CheckpointError(
      f"unsupported position_embedding_type {hf.get('position_embedding_type')!r}: "
      "only 'absolute' learned positions are implemented"
    )
  if hf.get("is_decoder", False) or hf.get("add_cross_attention", False):
    raise CheckpointError(
      "decoder / cross-attention models are not supported (is_decoder or "
      "add_cross_attention is true)"
    )
  required = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "layer_norm_eps",
    "pad_token_id",
  )
  missing = [k for k in required if hf.get(k) is None]
  if missing:
    raise CheckpointError(f"config.json lacks {missing}; refusing to guess library defaults")
  defaults = EncoderConfig()
  try:
    return EncoderConfig(
      vocab_size=int(hf["vocab_size"]),
      hidden_size=int(hf["hidden_size"]),
      num_layers=int(hf["num_hidden_layers"]),
      num_heads=int(hf["num_attention_heads"]),
      intermediate_size=int(hf["intermediate_size"]),
      max_positions=int(hf["max_position_embeddings"]),
      pad_id=int(hf["pad_token_id"]),
      layer_norm_eps=float(hf["layer_norm_eps"]),
      dropout=float(hf.get("hidden_dropout_prob", defaults.dropout)),
      attention_dropout=float(hf.get("attention_probs_dropout_prob", defaults.attention_dropout)),
    )
  except ValueError as e:
    raise CheckpointError(f"config.json values are inconsistent: {e}") from None


def architecture_of(hf: Mapping[str, Any]) -> str:
  archs = hf.get("architectures") or []
  if len(archs) != 1:
    raise CheckpointError(
      f"config.json 'architectures' is {archs!r}; expected exactly one of "
      f"{sorted(SUPPORTED_ARCHITECTURES)}"
    )
  if archs[0] not in SUPPORTED_ARCHITECTURES:
    raise CheckpointError(
      f"unsupported architecture {archs[0]!r}; supported: {sorted(SUPPORTED_ARCHITECTURES)}"
    )
  if SUPPORTED_ARCHITECTURES[archs[0]][0] != hf.get("model_type"):
    raise CheckpointError(
      f"architecture {archs[0]!r} does not match model_type {hf.get('model_type')!r}"
    )
  return archs[0]


def convert_hf_state_dict(
  state: Mapping[str, np.ndarray],
  hf_config: Mapping[str, Any],
  *,
  drop_token_type_rows: bool = False,
) -> Converted:
  """An HF state dict (numpy) + its config.json dict -> encoder params and heads.

  Every key of `state` is either converted, listed in `Converted.ignored` (buffers), or an error.

  Raises:
    CheckpointError: unsupported architecture/config, missing/unexpected keys, shape mismatches
      (all listed), or non-zero token-type rows >= 1.
  """
  config = config_from_hf(hf_config)
  arch = architecture_of(hf_config)
  prefix = _encoder_prefix(state, SUPPORTED_ARCHITECTURES[arch][1])
  remaining = dict(state)
  ignored = [k for k in remaining if k[len(prefix) :] in _IGNORED_BUFFERS and k.startswith(prefix)]
  for k in ignored:
    del remaining[k]

  type_vocab = int(hf_config.get("type_vocab_size", 1))
  expected = {prefix + k: v for k, v in layout.reference_shapes(config).items()}
  expected[prefix + _TOKEN_TYPE] = (type_vocab, config.hidden_size)
  encoder = {k: remaining.pop(k) for k in list(remaining) if k in expected}
  word = np.asarray(encoder.get(prefix + "embeddings.word_embeddings.weight"))
  heads, head_problems = _heads_from_hf(remaining, prefix, word, hf_config, config)
  problems = layout.tree_problems(encoder, expected, extra_unexpected=remaining)
  problems.extend(head_problems)
  if problems:
    raise CheckpointError(
      f"{arch} state dict does not match its config.json: " + "; ".join(problems)
    )

  token_types = np.asarray(encoder.pop(prefix + _TOKEN_TYPE))
  reference = {k[len(prefix) :]: v for k, v in encoder.items()}
  notes = _fold_token_types(reference, token_types, heads, word, drop_token_type_rows)
  params = layout.params_from_reference(reference, config)
  metadata = {
    "source_format": "hf",
    "source_architecture": arch,
    "hf_config": {k: hf_config[k] for k in _CARRIED_CONFIG_KEYS if k in hf_config},
  }
  return Converted(
    config,
    params,
    heads,
    metadata,
    sorted(ignored),
    notes,
    source=f"hf:{arch}",
    num_source_tensors=len(state),
  )


def _encoder_prefix(state: Mapping[str, np.ndarray], architecture_prefix: str) -> str:
  """The key prefix of the encoder's tensors in `state`.

  Checkpoints of base models saved from a task model (and vice versa) occur in the wild; the
  encoder keys decide the prefix, the architecture only which heads are expected.
  """
  for candidate in ("data2vec_text.", "roberta.", ""):
    if candidate + "embeddings.word_embeddings.weight" in state:
      return candidate
  return architecture_prefix


def _heads_from_hf(
  remaining: dict[str, np.ndarray],
  prefix: str,
  word: np.ndarray,
  hf_config: Mapping[str, Any],
  config: EncoderConfig,
) -> tuple[dict[str, Any], list[str]]:
  """Pops the pooler, `lm_head.*` and `classifier.*` tensors from `remaining` into head params.

  Returns (heads, problems); `word` [V, D] is the (unfolded) token embedding a tied LM decoder
  equals.
  """
  heads: dict[str, Any] = {}
  problems: list[str] = []
  pooler: dict[str, np.ndarray] = {}
  for p in dict.fromkeys(("", prefix)):  # base models: `pooler.`; task models never have one
    for leaf in ("weight", "bias"):
      if f"{p}pooler.dense.{leaf}" in remaining:
        pooler[f"pooler.dense.{leaf}"] = remaining.pop(f"{p}pooler.dense.{leaf}")
  if pooler:
    heads["pooler"] = _linear_head(
      pooler, {"dense": "pooler.dense"}, config.hidden_size, config.hidden_size, problems
    )
  lm_keys = layout.pop_prefixed(remaining, "lm_head.")
  if lm_keys:
    heads["lm_head"] = _lm_head_from_hf(lm_keys, word, hf_config, config, problems)
  cls_keys = layout.pop_prefixed(remaining, "classifier.")
  if set(cls_keys) == _TOKEN_CLASSIFIER_KEYS:
    heads["token_classifier"] = _token_classifier_from_hf(cls_keys, config, problems)
  elif cls_keys:
    heads["classifier"] = _classifier_from_hf(cls_keys, config, problems)
  return heads, problems


def _fold_token_types(
  reference: dict[str, np.ndarray],
  token_types: np.ndarray,
  heads: dict[str, Any],
  word: np.ndarray,
  drop_token_type_rows: bool,
) -> list[str]:
  """Folds token-type row 0 of `token_types` [T, D] into `reference`'s word embeddings, in place.

  Rows >= 1 are refused when non-zero unless `drop_token_type_rows`. An LM head without its own
  decoder gets the unfolded `word` [V, D] as one (HF ties it to the unfolded embeddings).
  Returns the notes.
  """
  notes = []
  type_vocab = token_types.shape[0]
  if type_vocab > 1 and np.any(token_types[1:] != 0):
    if not drop_token_type_rows:
      raise CheckpointError(
        f"token_type_embeddings has {type_vocab} rows and rows >= 1 are non-zero; the "
        "encoder has no token types (data2vec/RoBERTa feed all-zero token_type_ids). Pass "
        "drop_token_type_rows=True to drop them knowingly."
      )
    notes.append(f"dropped non-zero token_type_embeddings rows 1..{type_vocab - 1}")
  if np.any(token_types[0] != 0):
    # What HF computes with token_type_ids == 0: word + type[0] (before position and LN).
    reference["embeddings.word_embeddings.weight"] = (
      reference["embeddings.word_embeddings.weight"] + token_types[0][None, :]
    )
    notes.append(
      "folded token_type_embeddings row 0 (non-zero) into the word embeddings; "
      "export will write a zero row, so tensors (not outputs) differ after a round trip"
    )
    lm_head = heads.get("lm_head")
    if lm_head is not None and "decoder" not in lm_head:
      # HF ties the decoder to the *unfolded* word embeddings: keep them for the LM head.
      lm_head["decoder"] = {"kernel": np.ascontiguousarray(word.T)}
      notes.append("lm_head decoder stored untied (the token embedding now includes row 0)")
  return notes


def _linear_head(
  tensors: Mapping[str, np.ndarray],
  modules: Mapping[str, str],
  d_in: int,
  d_out: int,
  problems: list[str],
) -> dict[str, Any]:
  out = {}
  for leaf, torch_name in modules.items():
    w, b = tensors.get(f"{torch_name}.weight"), tensors.get(f"{torch_name}.bias")
    if w is None or b is None:
      problems.append(f"head {torch_name}: missing weight or bias")
      continue
    if tuple(w.shape) != (d_out, d_in) or tuple(b.shape) != (d_out,):
      problems.append(
        f"head {torch_name}: got weight {tuple(w.shape)}, bias {tuple(b.shape)}, "
        f"expected ({d_out}, {d_in}), ({d_out},)"
      )
      continue
    out[leaf] = layout.linear_from_torch(w, b)
  return out


def _lm_head_from_hf(
  t: dict[str, np.ndarray],
  word: np.ndarray,
  hf_config: Mapping[str, Any],
  config: EncoderConfig,
  problems: list[str],
) -> dict[str, Any]:
  d, v = config.hidden_size, config.vocab_size
  known = {
    "lm_head.dense.weight",
    "lm_head.dense.bias",
    "lm_head.layer_norm.weight",
    "lm_head.layer_norm.bias",
    "lm_head.decoder.weight",
    "lm_head.decoder.bias",
    "lm_head.bias",
  }
  unknown = sorted(set(t) - known)
  if unknown:
    problems.append(f"unexpected keys {unknown}")
  head = _linear_head(t, {"dense": "lm_head.dense"}, d, d, problems)
  ln_w, ln_b = t.get("lm_head.layer_norm.weight"), t.get("lm_head.layer_norm.bias")
  if ln_w is None or ln_b is None or ln_w.shape != (d,) or ln_b.shape != (d,):
    problems.append("lm_head.layer_norm: missing or not of shape (D,)")
  else:
    head["layer_norm"] = layout.layer_norm_from_torch(ln_w, ln_b)
  bias = t.get("lm_head.bias", t.get("lm_head.decoder.bias"))
  if bias is None or bias.shape != (v,):
    problems.append(f"lm_head.bias: missing or not of shape ({v},)")
  else:
    head["bias"] = np.asarray(bias)
  dec = t.get("lm_head.decoder.weight")
  if dec is None:
    if not hf_config.get("tie_word_embeddings", True):
      problems.append("lm_head.decoder.weight missing and tie_word_embeddings is false")
  elif dec.shape != (v, d):
    problems.append(f"lm_head.decoder.weight: got {tuple(dec.shape)}, expected {(v, d)}")
  elif not np.array_equal(dec, word):
    head["decoder"] = {"kernel": np.ascontiguousarray(np.asarray(dec).T)}
  return head


def _classifier_from_hf(
  t: dict[str, np.ndarray], config: EncoderConfig, problems: list[str]
) -> dict[str, Any]:
  known = {f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")}
  if set(t) != known:
    problems.append(
      f"classifier keys {sorted(t)}; expected {sorted(known)} (sequence classifier) or "
      f"{sorted(_TOKEN_CLASSIFIER_KEYS)} (token classifier)"
    )
    return {}
  d = config.hidden_size
  n_labels = t["classifier.out_proj.weight"].shape[0]
  return {
    **_linear_head(t, {"dense": "classifier.dense"}, d, d, problems),
    **_linear_head(t, {"out_proj": "classifier.out_proj"}, d, n_labels, problems),
  }


_TOKEN_CLASSIFIER_KEYS = {"classifier.weight", "classifier.bias"}


def _token_classifier_from_hf(
  t: dict[str, np.ndarray], config: EncoderConfig, problems: list[str]
) -> dict[str, Any]:
  """`classifier.{weight [C, D], bias [C]}` -> {kernel [D, C], bias [C]}."""
  shape = np.shape(t["classifier.weight"])
  n_labels = shape[0] if shape else 0  # a misshapen weight is reported by _linear_head
  return _linear_head(t, {"classifier": "classifier"}, config.hidden_size, n_labels, problems).get(
    "classifier", {}
  )


def read_hf_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
  path = os.path.join(os.fspath(directory), "config.json")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError as e:
    raise CheckpointError(f"{path}: cannot read: {e}") from None
  except ValueError as e:
    raise CheckpointError(f"{path}: not valid JSON: {e}") from None


def load_hf_dir(
  directory: str | os.PathLike[str], *, drop_token_type_rows: bool = False
) -> Converted:
  """Imports an HF model directory (config.json + weights). See the module docstring."""
  hf_config = read_hf_config(directory)
  state, source = load_hf_state_dict(directory)
  converted = convert_hf_state_dict(state, hf_config, drop_token_type_rows=drop_token_type_rows)
  converted.metadata["source_file"] = os.path.basename(source)
  return converted


# ----------------------------------------------------------------------------------------------
# Export.


def hf_config_from(
  config: EncoderConfig,
  architecture: str,
  *,
  tied: bool = True,
  num_labels: int | None = None,
  carried: Mapping[str, Any] | None = None,
  label_names: Sequence[str] | None = None,
  problem_type: str | None = None,
  classifier_dropout: float | None = None,
  finetuning_task: str | None = None,
) -> dict[str, Any]:
  """The `config.json` dict of an exported model (released-model values where we have no other).

  Args:
    config: the encoder config.
    architecture: the transformers class name written to `architectures`.
    tied: whether the LM decoder is tied to the word embeddings.
    num_labels: size of the classifier output (None: no label output).
    carried: config.json values of the source (only `_CARRIED_CONFIG_KEYS` are kept); the
      arguments below override them.
    label_names: the name of each output row, in row order -> `id2label`/`label2id`. None keeps
      carried labels of the right length, else writes `LABEL_{i}` (transformers' default).
    problem_type: one of `PROBLEM_TYPES` (sequence classification only; None: carried or unset,
      and transformers infers it from the labels at the first loss).
    classifier_dropout: the head's dropout probability (None: carried or unset, and
      transformers then uses `hidden_dropout_prob`).
    finetuning_task: free-form task name (e.g. 'mnli'), None: carried or unset.
  Raises:
    CheckpointError: label names of the wrong count, duplicated or given without a label
      output; an unknown or inapplicable problem_type; a dropout outside [0, 1).
  """
  hf = _released_config(config, architecture, tied)
  hf.update({k: v for k, v in (carried or {}).items() if k in _CARRIED_CONFIG_KEYS})
  _set_labels(hf, architecture, num_labels, label_names)
  if problem_type is not None:
    hf["problem_type"] = _checked_problem_type(problem_type, architecture, num_labels)
  if classifier_dropout is not None:
    if not 0.0 <= float(classifier_dropout) < 1.0:
      raise CheckpointError(f"classifier_dropout {classifier_dropout!r} is not in [0, 1)")
    hf["classifier_dropout"] = float(classifier_dropout)
  if finetuning_task is not None:
    hf["finetuning_task"] = str(finetuning_task)
  return hf


def _released_config(config: EncoderConfig, architecture: str, tied: bool) -> dict[str, Any]:
  """The encoder's `config.json` fields, with the released model's values for the rest."""
  return {
    "architectures": [architecture],
    "model_type": "data2vec-text",
    "vocab_size": config.vocab_size,
    "hidden_size": config.hidden_size,
    "num_hidden_layers": config.num_layers,
    "num_attention_heads": config.num_heads,
    "intermediate_size": config.intermediate_size,
    "hidden_act": "gelu",
    "hidden_dropout_prob": config.dropout,
    "attention_probs_dropout_prob": config.attention_dropout,
    "max_position_embeddings": config.max_positions,
    "type_vocab_size": 1,
    "initializer_range": 0.02,
    "layer_norm_eps": config.layer_norm_eps,
    "pad_token_id": config.pad_id,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": tied,
    "dtype": "float32",
  }


def _set_labels(
  hf: dict[str, Any], architecture: str, num_labels: int | None, label_names: Sequence[str] | None
) -> None:
  """`id2label`/`label2id` of `hf` from `label_names`, else the carried ones of the right length,
  else `LABEL_{i}`; label names without a label output are refused."""
  if num_labels is not None:
    labels = hf.get("id2label")
    if label_names is not None:
      names = _checked_label_names(label_names, num_labels, architecture)
      hf["id2label"] = {str(i): name for i, name in enumerate(names)}
      hf["label2id"] = {name: i for i, name in enumerate(names)}
    elif not isinstance(labels, Mapping) or len(labels) != num_labels:
      hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
      hf["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
  elif label_names is not None:
    raise CheckpointError(f"label_names given, but {architecture} has no label output")


def _checked_problem_type(problem_type: str, architecture: str, num_labels: int | None) -> str:
  if architecture != "Data2VecTextForSequenceClassification":
    raise CheckpointError(
      f"problem_type applies to Data2VecTextForSequenceClassification only, not "
      f"{architecture} (its loss does not read it)"
    )
  if problem_type not in PROBLEM_TYPES:
    raise CheckpointError(f"unknown problem_type {problem_type!r}; expected one of {PROBLEM_TYPES}")
  if problem_type != "regression" and num_labels == 1:
    raise CheckpointError(
      f"problem_type {problem_type!r} with a single output; one output is 'regression' (STS-B)"
    )
  return problem_type


def _checked_label_names(names: Sequence[str], num_labels: int, architecture: str) -> list[str]:
  if isinstance(names, str):  # list('abc') would silently give three labels
    raise CheckpointError(f"label names must be a sequence of strings, got the string {names!r}")
  names = list(names)
  if len(names) != num_labels:
    raise CheckpointError(
      f"{len(names)} label names {names} for a {architecture} with {num_labels} outputs; "
      "give one name per output row, in row order"
    )
  if not all(isinstance(n, str) and n for n in names):
    raise CheckpointError(f"label names must be non-empty strings, got {names}")
  if len(set(names)) != len(names):
    raise CheckpointError(f"label names {names} are not unique (label2id would lose rows)")
  return names


def hf_state_dict_from(
  config: EncoderConfig, params: Any, heads: Mapping[str, Any] | None, architecture: str
) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
  """Encoder params (+ heads) -> (HF state dict, export facts, notes).

  Export facts: `tied` (LM decoder tied to the word embeddings), `num_labels`.

  Raises:
    CheckpointError: unsupported architecture, or the head it needs is missing/misshapen.
  """
  if architecture not in EXPORT_ARCHITECTURES:
    raise CheckpointError(
      f"cannot export to {architecture!r}; supported: {list(EXPORT_ARCHITECTURES)}"
    )
  heads = dict(heads or {})
  reference = layout.params_to_reference(params, config)
  reference[_TOKEN_TYPE] = np.zeros((1, config.hidden_size), np.float32)
  notes = []
  facts: dict[str, Any] = {"tied": True, "num_labels": None}
  if architecture == "Data2VecTextModel":
    state = dict(reference)
    state.update(_pooler_to_hf(heads, config.hidden_size, notes))
  else:
    state = {"data2vec_text." + k: v for k, v in reference.items()}
    if architecture == "Data2VecTextForMaskedLM":
      lm_state = _lm_head_to_hf(heads, config)
      facts["tied"] = "lm_head.decoder.weight" not in lm_state
      state.update(lm_state)
    else:  # Data2VecTextFor{Sequence,Token}Classification
      facts["num_labels"], classifier_state = _classifier_to_hf(heads, config, architecture)
      state.update(classifier_state)
  if heads:
    notes.append(f"heads not part of {architecture}, not exported: {sorted(heads)}")
  state = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in state.items()}
  return state, facts, notes


def _pooler_to_hf(heads: dict[str, Any], d: int, notes: list[str]) -> dict[str, np.ndarray]:
  """Pops head `pooler` from `heads` as `pooler.dense.*`; zeros (and a note) without one."""
  if "pooler" in heads:
    return layout.linear_to_torch(heads.pop("pooler")["dense"], "pooler.dense")
  notes.append(
    "no pooler in the source: wrote a zero pooler so from_pretrained finds every "
    "key; pooler_output is all zeros and meaningless"
  )
  return {
    "pooler.dense.weight": np.zeros((d, d), np.float32),
    "pooler.dense.bias": np.zeros((d,), np.float32),
  }


def _lm_head_to_hf(heads: dict[str, Any], config: EncoderConfig) -> dict[str, np.ndarray]:
  """Pops head `lm_head` from `heads` as `lm_head.*` (with `decoder.*` only when untied)."""
  lm = heads.pop("lm_head", None)
  v, d = config.vocab_size, config.hidden_size
  if lm is None or np.shape(lm.get("bias")) != (v,):
    raise CheckpointError(
      "cannot export Data2VecTextForMaskedLM: no LM head with a vocabulary-sized output "
      f"(have heads {sorted(heads) + (['lm_head'] if lm is not None else [])}; a data2vec "
      "regression head predicts features, not tokens)"
    )
  state = layout.linear_to_torch(lm["dense"], "lm_head.dense")
  state.update(layout.layer_norm_to_torch(lm["layer_norm"], "lm_head.layer_norm"))
  state["lm_head.bias"] = np.asarray(lm["bias"])
  if "decoder" in lm:
    kernel = np.asarray(lm["decoder"]["kernel"])
    if kernel.shape != (d, v):
      raise CheckpointError(f"lm_head decoder kernel {kernel.shape}, expected {(d, v)}")
    state["lm_head.decoder.weight"] = np.ascontiguousarray(kernel.T)
    # Untied (tie_word_embeddings false), transformers also stops tying decoder.bias to
    # lm_head.bias, so both are written.
    state["lm_head.decoder.bias"] = np.asarray(lm["bias"])
  return state


def _classifier_to_hf(
  heads: dict[str, Any], config: EncoderConfig, architecture: str
) -> tuple[int, dict[str, np.ndarray]]:
  """Pops `architecture`'s classifier head from `heads`: (number of labels, `classifier.*`)."""
  name = CLASSIFIER_HEADS[architecture]
  cls = heads.pop(name, None)
  if cls is None:
    raise CheckpointError(
      f"cannot export {architecture}: no {name!r} head (have {sorted(heads)}); "
      + CLASSIFIER_HINT[name]
    )
  num_labels = _check_classifier_head(cls, name, config.hidden_size, architecture)
  if name == "classifier":
    state = layout.linear_to_torch(cls["dense"], "classifier.dense")
    state.update(layout.linear_to_torch(cls["out_proj"], "classifier.out_proj"))
  else:
    state = layout.linear_to_torch(cls, "classifier")
  return num_labels, state


def classifier_head_problems(head: Any, name: str, hidden_size: int) -> tuple[int, list[str]]:
  """(C, problems): the number of outputs of a classifier head and what is wrong with its tree.

  `name` 'classifier' (sentence head): dense {kernel [D, D], bias [D]}, out_proj {kernel [D, C],
  bias [C]}; 'token_classifier': {kernel [D, C], bias [C]}. C is read from the output bias (0 if
  there is none); problems lists missing/unexpected leaves and shape mismatches, empty if fine.
  """
  d = hidden_size
  flat = layout.flatten(head) if isinstance(head, Mapping) else {}
  prefix = "out_proj/" if name == "classifier" else ""
  bias = flat.get(f"{prefix}bias")
  num_labels = int(np.shape(bias)[0]) if np.ndim(bias) == 1 else 0
  expected = {f"{prefix}kernel": (d, num_labels), f"{prefix}bias": (num_labels,)}
  if name == "classifier":
    expected.update({"dense/kernel": (d, d), "dense/bias": (d,)})
  problems = layout.tree_problems(flat, expected)
  if not problems and num_labels < 1:
    problems.append("the output has no units")
  return num_labels, problems


def _check_classifier_head(head: Any, name: str, d: int, architecture: str) -> int:
  """The head's number of outputs, or CheckpointError listing every problem of its tree."""
  num_labels, problems = classifier_head_problems(head, name, d)
  if problems:
    raise CheckpointError(
      f"cannot export {architecture}: its {name!r} head does not fit hidden size {d}: "
      + "; ".join(problems)
      + "; "
      + CLASSIFIER_HINT[name]
    )
  return num_labels


def save_hf_dir(
  directory: str | os.PathLike[str],
  config: EncoderConfig,
  params: Any,
  *,
  heads: Mapping[str, Any] | None = None,
  metadata: Mapping[str, Any] | None = None,
  architecture: str = "Data2VecTextModel",
  label_names: Sequence[str] | None = None,
  problem_type: str | None = None,
  classifier_dropout: float | None = None,
  finetuning_task: str | None = None,
  tokenizer: Tokenizer | None = None,
) -> list[str]:
  """Writes `config.json` + `model.safetensors` that `transformers` loads with no missing keys.

  Args:
    directory: created if needed; existing files are replaced.
    config, params: the encoder.
    heads: head params by name (`lm_head`, `pooler`, `classifier`, `token_classifier`, ...);
      the ones `architecture` has no place for are listed in the notes.
    metadata: `Converted.metadata`; its `hf_config` values (labels, dropout, ...) are carried.
    architecture: one of `EXPORT_ARCHITECTURES`.
    label_names, problem_type, classifier_dropout, finetuning_task: fine-tuned config fields
      for the classifier architectures, overriding carried values (see `hf_config_from`; None
      keeps the carried value or leaves the field out).
    tokenizer: the model's tokenizer, written as HF tokenizer files (`hf_tokenizer`); None
      writes weights only (`AutoTokenizer` then has nothing to load).
  Returns the notes (what was dropped or synthesised).
  Raises:
    CheckpointError: the architecture's head is missing or misshapen, a config field is
      invalid, or the tokenizer cannot be represented in HF (checked before the weights are
      written).
  """
  state, facts, notes = hf_state_dict_from(config, params, heads, architecture)
  own_names = (metadata or {}).get("label_names")  # a data2vec-jax fine-tuned directory's
  if label_names is None and isinstance(own_names, (list, tuple)) and facts["num_labels"]:
    label_names = own_names
  hf = hf_config_from(
    config,
    architecture,
    tied=facts["tied"],
    num_labels=facts["num_labels"],
    carried=dict((metadata or {}).get("hf_config", {})),
    label_names=label_names,
    problem_type=problem_type,
    classifier_dropout=classifier_dropout,
    finetuning_task=finetuning_task,
  )
  directory = os.fspath(directory)
  _remove_stale_tokenizer_files(directory, tokenizer)
  if tokenizer is not None:
    notes = notes + _save_fingerprinted_tokenizer(directory, tokenizer, config, hf)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  # transformers refuses safetensors files without format metadata.
  save_safetensors(os.path.join(directory, "model.safetensors"), state, "pt")
  return notes + [f"wrote {len(state)} tensors to model.safetensors"]


def _save_fingerprinted_tokenizer(
  directory: str, tokenizer: Tokenizer, config: EncoderConfig, hf: dict[str, Any]
) -> list[str]:
  """Writes the HF tokenizer files and records their sha256 in `hf` (the fingerprint that
  `model_tokenizer.check_hf_tokenizer_files` checks on loading). Returns the notes."""
  notes = save_hf_tokenizer(directory, tokenizer, config)
  written = [
    n for n in model_tokenizer.HF_TOKENIZER_FILES if os.path.isfile(os.path.join(directory, n))
  ]
  hf[model_tokenizer.HF_FINGERPRINT_KEY] = model_tokenizer.file_hashes(directory, written)
  return notes


def _remove_stale_tokenizer_files(directory: str, tokenizer: Tokenizer | None) -> None:
  """Tokenizer files of an earlier export into `directory` go (they would disagree with the
  new ones); the files the new tokenizer is read from stay."""
  keep = {os.path.abspath(p) for p in (tokenizer.files.values() if tokenizer else ()) if p}
  for name in model_tokenizer.HF_TOKENIZER_FILES:
    path = os.path.abspath(os.path.join(directory, name))
    if os.path.isfile(path) and path not in keep:
      os.remove(path)
