"""Numerical parity of the Flax encoder against `transformers` (PyTorch), layer by layer.

Needs torch and transformers (test/notebook extras). Used by `tests/weights/test_parity.py` and
`notebooks/parity.ipynb`:

  model = reference_model(tiny_config(), seed=0)           # random, non-trivial HF weights
  report = compare_with_reference(model, input_ids, attention_mask)
  print(report.table()); report.plot()

Comparisons are made at non-pad positions only: fairseq (and this encoder) zero the embedding
output at pads, HF does not, so pad-position outputs differ and are unspecified.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.weights.hf import convert_hf_state_dict, hf_config_from


def reference_model(
  config: EncoderConfig,
  *,
  seed: int = 0,
  std: float = 0.05,
  attn_implementation: str = "eager",
  architecture: str = "Data2VecTextModel",
  **hf_overrides: Any,
) -> Any:
  """A `transformers` model of `config`'s shape with random, non-trivial weights, in eval mode.

  Every parameter (weights, biases, LayerNorm scales and offsets, embeddings) is redrawn from
  N(0, std) — LayerNorm scales from N(1, std) — so a transposed or swapped tensor would show.
  The token-type row is zero, as in the released model. No download happens. `hf_overrides`
  set further `Data2VecTextConfig` fields (e.g. num_labels for a classifier).
  """
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  hf = hf_config_from(config, architecture)
  hf.pop("architectures"), hf.pop("model_type"), hf.pop("dtype")
  hf_config = transformers.Data2VecTextConfig(
    **{**hf, **hf_overrides},
    architectures=[architecture],
    attn_implementation=attn_implementation,
  )
  torch.manual_seed(seed)
  model = getattr(transformers, architecture)(hf_config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "token_type_embeddings" in name:
        p.zero_()
      elif "LayerNorm.weight" in name or "layer_norm.weight" in name:
        p.normal_(1.0, std)
      else:
        p.normal_(0.0, std)
  return model.eval()


def padded_batch(
  config: EncoderConfig, lengths: tuple[int, ...] = (9, 5, 2), *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """A right-padded batch: ([B, max(lengths)] int32 ids, [B, T] int32 mask).

  Each row is `<s>=0`, random ids in [pad_id + 2, vocab), `</s>=2`, then `pad_id` padding; the
  mask is 1 on real tokens. Lengths include `<s>` and `</s>` (>= 2).
  """
  rng = np.random.default_rng(seed)
  t = max(lengths)
  ids = np.full((len(lengths), t), config.pad_id, np.int32)
  for row, n in enumerate(lengths):
    ids[row, 0], ids[row, n - 1] = 0, 2
    ids[row, 1 : n - 1] = rng.integers(config.pad_id + 2, config.vocab_size, n - 2)
  return ids, (ids != config.pad_id).astype(np.int32)


def reference_features(
  model: Any, input_ids: np.ndarray, attention_mask: np.ndarray, device: str | None = None
) -> dict[str, Any]:
  """Runs an HF Data2VecText/Roberta model; returns numpy float32 features.

  `device`: the torch device the inputs go to (the model must already be there; default CPU).

  Returns:
    {'last_hidden_state': [B,T,D], 'hidden_states': L+1 x [B,T,D],
     'ffn_outputs': L x [B,T,D] (outputs of `encoder.layer[i].output.dense`, captured with
     forward hooks: fc2 before dropout/residual/LayerNorm, the data2vec target)}.
  """
  import torch  # pylint: disable=import-outside-toplevel

  base = getattr(model, "base_model", model)
  captured: list[np.ndarray] = []
  hooks = [
    layer.output.dense.register_forward_hook(
      lambda _m, _i, out: captured.append(out.detach().float().cpu().numpy())
    )
    for layer in base.encoder.layer
  ]
  try:
    with torch.no_grad():
      out = base(
        input_ids=torch.as_tensor(np.asarray(input_ids), dtype=torch.long, device=device),
        attention_mask=torch.as_tensor(np.asarray(attention_mask), dtype=torch.long, device=device),
        output_hidden_states=True,
      )
  finally:
    for h in hooks:
      h.remove()
  return {
    "last_hidden_state": out.last_hidden_state.float().cpu().numpy(),
    "hidden_states": [h.float().cpu().numpy() for h in out.hidden_states],
    "ffn_outputs": captured,
  }


@dataclasses.dataclass
class ParityReport:
  """Max |ours - reference| over non-pad positions.

  Attributes:
    last_hidden_state: scalar.
    hidden_states: L+1 values (index 0 = embedding output).
    ffn_outputs: L values.
  """

  last_hidden_state: float
  hidden_states: list[float]
  ffn_outputs: list[float]
  scale: float = 1.0  # max |reference| over the compared positions and arrays

  @property
  def max_diff(self) -> float:
    return max([self.last_hidden_state, *self.hidden_states, *self.ffn_outputs])

  def bound(self, tolerance: float) -> float:
    """`tolerance` as an absolute bound at the outputs' scale: float32 rounding grows with the
    magnitude of the values compared (max(1, scale): hidden states are LayerNorm'd, O(1))."""
    return tolerance * max(1.0, self.scale)

  def table(self) -> str:
    rows = ["layer  hidden_state  ffn_output"]
    for i, h in enumerate(self.hidden_states):
      ffn = f"{self.ffn_outputs[i - 1]:.3e}" if i else "-"
      rows.append(f"{'emb' if i == 0 else i:>5}  {h:12.3e}  {ffn:>10}")
    rows.append(f"last_hidden_state {self.last_hidden_state:.3e}")
    return "\n".join(rows)

  def plot(self, ax: Any = None) -> Any:
    """Per-layer max |diff| on a log scale; returns the matplotlib Axes."""
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    if ax is None:
      _, ax = plt.subplots(figsize=(6, 3.5))
    layers = np.arange(len(self.hidden_states))
    floor = 1e-12  # exact zeros would vanish from a log plot
    ax.semilogy(layers, np.maximum(self.hidden_states, floor), "o-", label="hidden_states")
    ax.semilogy(layers[1:], np.maximum(self.ffn_outputs, floor), "s-", label="ffn_outputs")
    ax.set_xticks(layers)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("max |jax - torch|")
    ax.legend()
    return ax


def diff_report(ours: Any, reference: dict[str, Any], attention_mask: np.ndarray) -> ParityReport:
  """Compares `pretrained.Features` with `reference_features` output at non-pad positions."""
  keep = np.asarray(attention_mask) != 0
  diff = lambda a, b: float(
    np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))[keep].max()
  )
  return ParityReport(
    last_hidden_state=diff(ours.last_hidden_state, reference["last_hidden_state"]),
    hidden_states=[
      diff(a, b) for a, b in zip(ours.hidden_states, reference["hidden_states"], strict=True)
    ],
    ffn_outputs=[
      diff(a, b) for a, b in zip(ours.ffn_outputs, reference["ffn_outputs"], strict=True)
    ],
    scale=max(
      float(np.abs(np.asarray(r, np.float64))[keep].max())
      for r in (
        reference["last_hidden_state"],
        *reference["hidden_states"],
        *reference["ffn_outputs"],
      )
    ),
  )


def compare_with_reference(
  model: Any, input_ids: np.ndarray, attention_mask: np.ndarray
) -> ParityReport:
  """Converts `model`'s weights with the library's HF importer, runs both, reports differences."""
  from data2vec_jax.weights.pretrained import encode  # pylint: disable=import-outside-toplevel
  from data2vec_jax.weights.torch_io import to_numpy  # pylint: disable=import-outside-toplevel

  state = {k: to_numpy(v, k) for k, v in model.state_dict().items()}
  hf = model.config.to_dict()
  hf.setdefault("architectures", [type(model).__name__])
  converted = convert_hf_state_dict(state, hf)
  ours = encode(converted.config, converted.params, input_ids, attention_mask)
  return diff_report(ours, reference_features(model, input_ids, attention_mask), attention_mask)
