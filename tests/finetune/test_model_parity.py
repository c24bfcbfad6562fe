"""One fine-tuning step of the sentence classifier equals `transformers`'
`Data2VecTextForSequenceClassification` (float32, dropout off): logits, loss and every gradient,
for classification (cross-entropy) and regression (STS-B's one output, MSE). Weights come through
the HF importer (`weights.hf.convert_hf_state_dict`), which maps `classifier.*` too. The same for
the token classifier against `Data2VecTextForTokenClassification` (labels -100 ignored)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from data2vec_jax.finetune.model import (
  IGNORE_INDEX,
  SequenceClassifier,
  TokenClassifier,
  sentence_loss,
  token_loss,
)
from data2vec_jax.model.config import tiny_config
from data2vec_jax.weights import layout
from data2vec_jax.weights.hf import convert_hf_state_dict
from data2vec_jax.weights.parity import padded_batch, reference_model
from data2vec_jax.weights.torch_io import to_numpy

CONFIG = tiny_config(hidden_size=48, num_heads=3, intermediate_size=100, num_layers=2)
PREFIX = "data2vec_text."


def close(ours, ref, what: str) -> None:
  """Normwise: max |ours - torch| <= 1e-5 * max(1, max |torch|) (float32 sums in another order,
  a few layers deep; a wrong tensor or a missed term is orders of magnitude above)."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
  bound = 1e-5 * max(1.0, float(np.max(np.abs(ref))))
  assert float(np.max(np.abs(ours - ref))) <= bound, what


def torch_grads_as_params(model) -> dict:
  """The torch gradients in our parameter tree (what the importer does to the weights)."""
  grads = {name: p.grad.numpy() for name, p in model.named_parameters() if p.grad is not None}
  encoder = {
    k[len(PREFIX) :]: v
    for k, v in grads.items()
    if k.startswith(PREFIX) and "token_type" not in k and "pooler" not in k
  }
  return {
    "encoder": layout.params_from_reference(encoder, CONFIG),
    "classifier": {
      m: layout.linear_from_torch(grads[f"classifier.{m}.weight"], grads[f"classifier.{m}.bias"])
      for m in ("dense", "out_proj")
    },
  }


@pytest.mark.parametrize("num_labels", [3, 1])  # MNLI-like classification; STS-B regression
def test_one_step_matches_transformers(num_labels):
  model = reference_model(
    CONFIG, seed=7, architecture="Data2VecTextForSequenceClassification", num_labels=num_labels
  )
  state = {k: to_numpy(v, k) for k, v in model.state_dict().items()}
  converted = convert_hf_state_dict(state, model.config.to_dict())
  params = {"encoder": converted.params, "classifier": converted.heads["classifier"]}
  ids, mask = padded_batch(CONFIG, (11, 7, 4, 11), seed=3)
  rng = np.random.default_rng(0)
  labels = (
    rng.uniform(0, 5, len(ids)).astype(np.float32)
    if num_labels == 1
    else rng.integers(0, num_labels, len(ids))
  )

  out = model(
    input_ids=torch.tensor(ids, dtype=torch.long),
    attention_mask=torch.tensor(mask),
    labels=torch.tensor(labels),
  )
  out.loss.backward()

  classifier = SequenceClassifier(CONFIG, num_labels)

  def loss(p):
    logits = classifier.apply({"params": p}, jnp.asarray(ids))
    return sentence_loss(logits, jnp.asarray(labels))[0], logits

  with jax.default_matmul_precision("highest"):
    (ours, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  close(logits, out.logits.detach().numpy(), "logits")
  close(ours, out.loss.item(), "loss")
  reference = torch_grads_as_params(model)
  for (path, g), r in zip(
    jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(reference), strict=True
  ):
    close(g, r, f"grad {jax.tree_util.keystr(path)}")
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(reference)


def test_parameters_carry_logical_axes_and_dropout_is_keyed():
  import flax.linen as nn

  classifier = SequenceClassifier(CONFIG, 2, classifier_dropout=0.3)
  ids = jnp.asarray(padded_batch(CONFIG, (6, 4))[0])
  boxed = classifier.init(jax.random.key(0), ids)["params"]
  assert nn.get_partition_spec(boxed)["classifier"]["dense"][
    "kernel"
  ] == jax.sharding.PartitionSpec("embed", "mlp")
  params = nn.meta.unbox(boxed)
  run = lambda key: classifier.apply(
    {"params": params}, ids, deterministic=False, rngs={"dropout": key}
  )
  a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
  assert np.array_equal(a, b) and not np.array_equal(a, c)
  assert not np.array_equal(a, classifier.apply({"params": params}, ids))  # dropout really ran


def torch_token_grads_as_params(model) -> dict:
  """The torch gradients of a token classifier in our tree (head `classifier` {kernel, bias})."""
  grads = {name: p.grad.numpy() for name, p in model.named_parameters() if p.grad is not None}
  encoder = {
    k[len(PREFIX) :]: v for k, v in grads.items() if k.startswith(PREFIX) and "token_type" not in k
  }
  return {
    "encoder": layout.params_from_reference(encoder, CONFIG),
    "classifier": layout.linear_from_torch(grads["classifier.weight"], grads["classifier.bias"]),
  }


def test_token_classifier_one_step_matches_transformers():
  """`TokenClassifier` + `token_loss` vs `Data2VecTextForTokenClassification`: pads and a quarter
  of the real tokens carry label -100 (ignored), one row entirely; logits compared at real
  tokens only (pad outputs are unspecified, see `weights.parity`)."""
  num_labels = 5
  model = reference_model(
    CONFIG, seed=11, architecture="Data2VecTextForTokenClassification", num_labels=num_labels
  )
  state = {k: to_numpy(v, k) for k, v in model.state_dict().items()}
  converted = convert_hf_state_dict(state, model.config.to_dict())
  assert "classifier" not in converted.heads  # the token head has its own name
  params = {"encoder": converted.params, "classifier": converted.heads["token_classifier"]}
  ids, mask = padded_batch(CONFIG, (11, 7, 4, 11), seed=5)
  rng = np.random.default_rng(1)
  labels = rng.integers(0, num_labels, ids.shape)
  labels[(mask == 0) | (rng.random(ids.shape) < 0.25)] = IGNORE_INDEX
  labels[2] = IGNORE_INDEX
  assert (labels != IGNORE_INDEX).sum() > 10

  out = model(
    input_ids=torch.tensor(ids, dtype=torch.long),
    attention_mask=torch.tensor(mask),
    labels=torch.tensor(labels, dtype=torch.long),
  )
  out.loss.backward()

  classifier = TokenClassifier(CONFIG, num_labels)

  def loss(p):
    logits = classifier.apply({"params": p}, jnp.asarray(ids))
    return token_loss(logits, jnp.asarray(labels))[0], logits

  with jax.default_matmul_precision("highest"):
    (ours, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  real = mask != 0
  close(np.asarray(logits)[real], out.logits.detach().numpy()[real], "logits")
  close(ours, out.loss.item(), "loss")
  reference = torch_token_grads_as_params(model)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(reference)
  for (path, g), r in zip(
    jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(reference), strict=True
  ):
    close(g, r, f"grad {jax.tree_util.keystr(path)}")


def test_token_loss_ignores_labels_and_counts_accuracy():
  logits = jnp.asarray([[[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]]])
  labels = jnp.asarray([[0, 0, IGNORE_INDEX]])
  loss, metrics = token_loss(logits, labels)
  expected = (-jax.nn.log_softmax(logits[0, 0])[0] - jax.nn.log_softmax(logits[0, 1])[0]) / 2
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert float(metrics["accuracy"]) == 0.5 and int(metrics["num_labelled"]) == 2
  none, metrics = token_loss(logits, jnp.full((1, 3), IGNORE_INDEX))
  assert float(none) == 0.0 and float(metrics["accuracy"]) == 0.0  # torch: NaN
