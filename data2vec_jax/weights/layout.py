"""The exact mapping between the PyTorch reference's encoder tensors and the Flax parameter tree.

Both PyTorch references (HF `Data2VecTextModel`/`RobertaModel` and fairseq's
`TransformerEncoder`) hold the same tensors under different names. This module speaks the HF
names without a model prefix ("reference names", e.g. `encoder.layer.0.intermediate.dense.weight`);
`hf.py` adds/strips prefixes and `fairseq.py` renames fairseq keys to these names first.

Every conversion is a transpose, reshape or stack of float arrays: no arithmetic, so a round
trip reproduces every tensor bit for bit.

Shapes (D = hidden, H = heads, Dh = D / H, F = intermediate, L = layers, V = vocab, P = positions):
  torch Linear weight is [out, in]; Flax Dense kernel is [in, out].
  query/key/value.weight [D, D] x3  <->  layers/attention/qkv/kernel [L, D, 3, H, Dh]
  query/key/value.bias   [D] x3     <->  layers/attention/qkv/bias   [L, 3, H, Dh]
  attention.output.dense.weight [D, D] <-> layers/attention/out/kernel [L, H, Dh, D]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from data2vec_jax import tree_diff
from data2vec_jax.model.config import EncoderConfig

PyTree = Any
SEP = "/"

# Token-type embeddings exist in HF only; they are handled by hf.py, not here.
EMBEDDING_NAMES = {
  "embeddings.word_embeddings.weight": "embeddings/token_embedding/embedding",
  "embeddings.position_embeddings.weight": "embeddings/position_embedding/embedding",
  "embeddings.LayerNorm.weight": "embeddings/layer_norm/scale",
  "embeddings.LayerNorm.bias": "embeddings/layer_norm/bias",
}
# Per-layer tensors that map one-to-one (up to a transpose) onto a stacked Flax leaf.
_LAYER_SIMPLE = {
  "attention.output.dense.bias": "layers/attention/out/bias",
  "attention.output.LayerNorm.weight": "layers/attention_layer_norm/scale",
  "attention.output.LayerNorm.bias": "layers/attention_layer_norm/bias",
  "intermediate.dense.weight": "layers/fc1/kernel",
  "intermediate.dense.bias": "layers/fc1/bias",
  "output.dense.weight": "layers/fc2/kernel",
  "output.dense.bias": "layers/fc2/bias",
  "output.LayerNorm.weight": "layers/ffn_layer_norm/scale",
  "output.LayerNorm.bias": "layers/ffn_layer_norm/bias",
}
_QKV = ("query", "key", "value")


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}; leaves are whatever is not a dict."""
  return traverse_util.flatten_dict(dict(tree), sep=SEP)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `flatten`."""
  return traverse_util.unflatten_dict(dict(flat), sep=SEP)


def pop_prefixed(state: dict[str, Any], prefix: str, *, strip: bool = False) -> dict[str, Any]:
  """Removes the entries whose key starts with `prefix` from `state` and returns them, keyed
  without the prefix when `strip`."""
  start = len(prefix) if strip else 0
  return {k[start:]: state.pop(k) for k in list(state) if k.startswith(prefix)}


def param_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
  """Flat name -> shape of every encoder parameter, derived from the model itself (no FLOPs)."""
  from data2vec_jax.model.encoder import init_params  # pylint: disable=import-outside-toplevel

  shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def tree_problems(
  flat: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], extra_unexpected: Any = ()
) -> list[str]:
  """Missing keys, unexpected keys (plus `extra_unexpected` leftovers) and shape mismatches."""
  return tree_diff.shape_problems(
    {k: np.shape(v) for k, v in flat.items()}, expected, extra_unexpected=extra_unexpected
  )


def check_tree(flat: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
  """Raises ValueError listing missing keys, unexpected keys and shape mismatches (all at once)."""
  problems = tree_problems(flat, expected)
  if problems:
    raise ValueError(f"{what} does not match the config: " + "; ".join(problems))


def reference_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
  """Reference name -> torch shape of every encoder tensor (no token types, no pooler)."""
  d, f = config.hidden_size, config.intermediate_size
  shapes = {
    "embeddings.word_embeddings.weight": (config.vocab_size, d),
    "embeddings.position_embeddings.weight": (config.max_positions, d),
    "embeddings.LayerNorm.weight": (d,),
    "embeddings.LayerNorm.bias": (d,),
  }
  per_layer = {
    **{f"attention.self.{n}.weight": (d, d) for n in _QKV},
    **{f"attention.self.{n}.bias": (d,) for n in _QKV},
    "attention.output.dense.weight": (d, d),
    "attention.output.dense.bias": (d,),
    "attention.output.LayerNorm.weight": (d,),
    "attention.output.LayerNorm.bias": (d,),
    "intermediate.dense.weight": (f, d),
    "intermediate.dense.bias": (f,),
    "output.dense.weight": (d, f),
    "output.dense.bias": (d,),
    "output.LayerNorm.weight": (d,),
    "output.LayerNorm.bias": (d,),
  }
  for i in range(config.num_layers):
    shapes.update({f"encoder.layer.{i}.{k}": v for k, v in per_layer.items()})
  return shapes


def params_from_reference(tensors: Mapping[str, np.ndarray], config: EncoderConfig) -> PyTree:
  """Reference tensors (exactly `reference_shapes(config)`) -> nested Flax params (numpy).

  Raises ValueError listing every missing/unexpected key and shape mismatch.
  """
  check_tree(tensors, reference_shapes(config), "reference state dict")
  d, h, dh, n = config.hidden_size, config.num_heads, config.head_dim, config.num_layers
  layer = lambda i, name: np.asarray(tensors[f"encoder.layer.{i}.{name}"])
  flat: dict[str, np.ndarray] = {v: np.asarray(tensors[k]) for k, v in EMBEDDING_NAMES.items()}
  for name, target in _LAYER_SIMPLE.items():
    per = [layer(i, name) for i in range(n)]
    flat[target] = np.stack([w.T for w in per] if name.endswith("dense.weight") else per)
  # torch: y = x @ W.T + b with W [out=D, in=D]; Flax: y = einsum('btd,dkhe', x, K) + B.
  flat["layers/attention/qkv/kernel"] = np.stack(
    [
      np.stack([layer(i, f"attention.self.{q}.weight").T.reshape(d, h, dh) for q in _QKV], axis=1)
      for i in range(n)
    ]
  )
  flat["layers/attention/qkv/bias"] = np.stack(
    [
      np.stack([layer(i, f"attention.self.{q}.bias").reshape(h, dh) for q in _QKV])
      for i in range(n)
    ]
  )
  flat["layers/attention/out/kernel"] = np.stack(
    [layer(i, "attention.output.dense.weight").T.reshape(h, dh, d) for i in range(n)]
  )
  out = {k: np.ascontiguousarray(v) for k, v in flat.items()}
  check_tree(out, param_shapes(config), "converted params")
  return unflatten(out)


def params_to_reference(params: PyTree, config: EncoderConfig) -> dict[str, np.ndarray]:
  """Nested Flax params -> reference tensors (numpy, torch layout); exact inverse of the above."""
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  check_tree(flat, param_shapes(config), "params")
  d, n = config.hidden_size, config.num_layers
  out = {k: flat[v] for k, v in EMBEDDING_NAMES.items()}
  for name, source in _LAYER_SIMPLE.items():
    for i in range(n):
      w = flat[source][i]
      out[f"encoder.layer.{i}.{name}"] = w.T if name.endswith("dense.weight") else w
  for i in range(n):
    for j, q in enumerate(_QKV):
      out[f"encoder.layer.{i}.attention.self.{q}.weight"] = (
        flat["layers/attention/qkv/kernel"][i, :, j].reshape(d, d).T
      )
      out[f"encoder.layer.{i}.attention.self.{q}.bias"] = flat["layers/attention/qkv/bias"][
        i, j
      ].reshape(d)
    out[f"encoder.layer.{i}.attention.output.dense.weight"] = (
      flat["layers/attention/out/kernel"][i].reshape(d, d).T
    )
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Heads. Stored as nested dicts of Flax-layout arrays, one top-level entry per head:
#   pooler/dense/{kernel [D, D], bias [D]}                      (HF pooler; unused by the encoder)
#   lm_head/dense/{kernel [D, D], bias}, lm_head/layer_norm/{scale, bias}, lm_head/bias [O],
#   lm_head/decoder/kernel [D, O]   (only when not tied to the token embedding)
#   classifier/dense/{kernel, bias}, classifier/out_proj/{kernel [D, C], bias [C]}
#   regression_head/{dense_0, dense_1, ...}/{kernel, bias}      (fairseq data2vec head)
# `lm_head` and `regression_head` use the parameter names of `heads.MaskedLMHead` and
# `heads.RegressionHead`.
# A torch module prefix `a.b` with `.weight`/`.bias` maps to `a/b/kernel` / `a/b/bias` for
# Linear layers and `scale`/`bias` for LayerNorms (the caller says which).


def linear_from_torch(weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
  return {"kernel": np.ascontiguousarray(np.asarray(weight).T), "bias": np.asarray(bias)}


def linear_to_torch(leaf: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
  return {
    f"{name}.weight": np.ascontiguousarray(np.asarray(leaf["kernel"]).T),
    f"{name}.bias": np.asarray(leaf["bias"]),
  }


def layer_norm_from_torch(weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
  return {"scale": np.asarray(weight), "bias": np.asarray(bias)}


def layer_norm_to_torch(leaf: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
  return {f"{name}.weight": np.asarray(leaf["scale"]), f"{name}.bias": np.asarray(leaf["bias"])}


@dataclasses.dataclass
class Converted:
  """What an importer returns.

  Attributes:
    config: the encoder's hyper-parameters (read from the source's config, checked against shapes).
    params: nested Flax params (numpy float32), exactly the tree `Encoder(config)` expects.
    heads: nested dict of head params (see above); empty when the source has none.
    metadata: JSON-able facts worth keeping (source format, original config values, ...).
    ignored: source keys deliberately not converted (buffers, unused tensors), for the report.
    notes: human-readable decisions taken during conversion (folds, assumptions).
    source: what was read, e.g. 'hf:Data2VecTextModel', 'fairseq (student)', 'data2vec-jax'.
    num_source_tensors: how many tensors the source held (converted + ignored).
  """

  config: EncoderConfig
  params: PyTree
  heads: dict[str, Any] = dataclasses.field(default_factory=dict)
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
  ignored: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  source: str = "unknown"
  num_source_tensors: int = 0

  def summary(self) -> str:
    """A few lines for a CLI: tensor counts, shapes, heads, ignored keys, notes."""
    flat = flatten(self.params)
    n_params = sum(int(np.prod(np.shape(v))) for v in flat.values())
    lines = [
      f"source: {self.source}, {self.num_source_tensors} tensors",
      f"encoder: {len(flat)} arrays, {n_params:,} parameters "
      f"(L={self.config.num_layers}, D={self.config.hidden_size}, "
      f"H={self.config.num_heads}, F={self.config.intermediate_size}, "
      f"V={self.config.vocab_size}, P={self.config.max_positions})",
    ]
    for name, head in sorted(self.heads.items()):
      leaves = flatten(head)
      shapes = ", ".join(f"{k}{list(np.shape(v))}" for k, v in sorted(leaves.items()))
      lines.append(f"head {name!r}: {shapes}")
    if self.ignored:
      lines.append(f"ignored {len(self.ignored)} source keys: {sorted(self.ignored)}")
    lines.extend(f"note: {n}" for n in self.notes)
    return "\n".join(lines)
