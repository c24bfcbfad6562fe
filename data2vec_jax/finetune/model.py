"""Sentence-level fine-tuning: the encoder with the reference's classification head, and its loss.

`ClassificationHead` is fairseq's `RobertaClassificationHead`, which is HF's
`Data2VecTextClassificationHead` (docs/reference/finetuning_reference.md): the `<s>` feature ->
dropout -> dense(D, D) -> tanh -> dropout -> out_proj(D, num_labels). Parameter names follow HF's
`classifier.{dense,out_proj}` (the HF importer's `heads['classifier']` tree), with logical axes.

`sentence_loss`: cross-entropy over `num_labels` classes, or with `num_labels == 1` (STS-B) the
mean squared error of the single output, as `Data2VecTextForSequenceClassification` computes
them (mean over the batch).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.encoder import Encoder
from data2vec_jax.speed.contraction import Projection


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
