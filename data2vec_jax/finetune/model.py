"""Fine-tuning models: the encoder with a sentence- or token-level classification head, and losses.

`ClassificationHead` is fairseq's `RobertaClassificationHead`, which is HF's
`Data2VecTextClassificationHead` (docs/reference/finetuning_reference.md): the `<s>` feature ->
dropout -> dense(D, D) -> tanh -> dropout -> out_proj(D, num_labels). Parameter names follow HF's
`classifier.{dense,out_proj}` (the HF importer's `heads['classifier']` tree), with logical axes.

`sentence_loss`: cross-entropy over `num_labels` classes, or with `num_labels == 1` (STS-B) the
mean squared error of the single output, as `Data2VecTextForSequenceClassification` computes
them (mean over the batch).

`TokenClassifier` is HF's `Data2VecTextForTokenClassification` (reference §2.3): encoder ->
dropout -> `classifier` Linear(D, num_labels) at every position. Its parameters are
{'encoder', 'classifier': {kernel [D, C], bias [C]}}; the HF importer stores that head as
`heads['token_classifier']` (the name `classifier` is the sentence head's there).
`token_loss`: mean cross-entropy over the positions whose label is not `IGNORE_INDEX` (-100, the
default `ignore_index` of torch's CrossEntropyLoss that HF uses).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.encoder import Encoder
from data2vec_jax.speed.contraction import Projection

# Label of a position that takes no part in `token_loss` (pads, special tokens, non-first
# sub-words): torch's CrossEntropyLoss default, so HF-prepared labels work unchanged.
IGNORE_INDEX = -100


class ClassificationHead(nn.Module):
  """<s> feature [B, T, D] -> logits [B, num_labels] float32. Params: dense, out_proj."""

  config: EncoderConfig
  num_labels: int
  dropout: float = 0.1  # fairseq pooler_dropout / HF classifier_dropout

  @nn.compact
  def __call__(self, features: jax.Array, *, deterministic: bool = True) -> jax.Array:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    drop = nn.Dropout(self.dropout, deterministic=deterministic)
    x = drop(features[:, 0])
    x = Projection(
      (cfg.hidden_size, cfg.hidden_size), ("embed", "mlp"), dtype, param_dtype, name="dense"
    )(x)
    x = drop(jnp.tanh(x.astype(jnp.float32)).astype(dtype))
    logits = Projection(
      (cfg.hidden_size, self.num_labels), ("mlp", None), dtype, param_dtype, name="out_proj"
    )(x)
    return logits.astype(jnp.float32)


class SequenceClassifier(nn.Module):
  """Encoder + `ClassificationHead`. Params: {'encoder': Encoder tree, 'classifier': head}."""

  config: EncoderConfig
  num_labels: int
  classifier_dropout: float = 0.1

  def setup(self):
    self.encoder = Encoder(self.config)
    self.classifier = ClassificationHead(self.config, self.num_labels, self.classifier_dropout)

  def __call__(self, input_ids: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """input_ids: [B, T] int32 (`<s>` first, pads = pad_id). Dropout needs the 'dropout' rng."""
    features = self.encoder(input_ids, deterministic=deterministic).last_hidden_state
    return self.classifier(features, deterministic=deterministic)


def sentence_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
  """Mean loss over the batch and its metrics.

  logits: [B, C] float32. labels: [B] int class ids (C > 1) or float targets (C == 1, MSE).
  """
  if logits.shape[-1] == 1:
    error = logits[:, 0] - labels.astype(jnp.float32)
    return jnp.mean(error * error), {}
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return jnp.mean(nll), {"accuracy": accuracy}


class TokenClassifier(nn.Module):
  """Encoder -> dropout -> `classifier` Linear(D, num_labels) at every position.

  Params: {'encoder': Encoder tree, 'classifier': {'kernel': [D, C] ('embed', None),
  'bias': [C]}}. Numerically HF's `Data2VecTextForTokenClassification` at non-pad positions
  (pad positions are unspecified: the encoder zeroes their embeddings, HF does not).
  """

  config: EncoderConfig
  num_labels: int
  classifier_dropout: float = 0.1  # HF classifier_dropout (None there = hidden_dropout_prob)

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg)
    self.dropout = nn.Dropout(self.classifier_dropout)
    self.classifier = Projection(
      (cfg.hidden_size, self.num_labels),
      ("embed", None),
      jnp.dtype(cfg.dtype),
      jnp.dtype(cfg.param_dtype),
    )

  def __call__(self, input_ids: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """input_ids: [B, T] int32 (pads = pad_id) -> logits [B, T, num_labels] float32.

    Dropout needs the 'dropout' rng when `deterministic` is False.
    """
    features = self.encoder(input_ids, deterministic=deterministic).last_hidden_state
    features = self.dropout(features, deterministic=deterministic)
    return self.classifier(features).astype(jnp.float32)


def token_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
  """Mean cross-entropy over the labelled positions, and metrics.

  logits: [B, T, C] float. labels: [B, T] int class ids in [0, C), or `IGNORE_INDEX` (-100) for
  positions that do not count (pads, special tokens, ...).
  Returns (loss [] float32, {'accuracy': [] float32 over labelled positions, 'num_labelled': []
  int32}). With no labelled position the loss and accuracy are 0 (torch would give NaN).
  """
  labels = labels.astype(jnp.int32)
  valid = labels != IGNORE_INDEX
  count = jnp.sum(valid)
  denominator = jnp.maximum(count, 1).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # Ignored labels are out of range for take_along_axis: read class 0 there, then mask it out.
  safe = jnp.where(valid, labels, 0)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  loss = jnp.sum(jnp.where(valid, nll, 0.0)) / denominator
  correct = (jnp.argmax(logits, axis=-1) == labels) & valid
  accuracy = jnp.sum(correct).astype(jnp.float32) / denominator
  return loss, {"accuracy": accuracy, "num_labelled": count.astype(jnp.int32)}
