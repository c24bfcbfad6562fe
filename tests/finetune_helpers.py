"""Tiny, offline fine-tuning fixtures: a sentencepiece vocabulary, a model directory that carries
it, and a learnable sentiment-like GLUE task written in every data format the tests read."""

from __future__ import annotations

import os

import numpy as np

from data2vec_jax.model.config import tiny_config

POSITIVE = ("good", "great", "fine", "lovely", "superb", "nice")
NEGATIVE = ("bad", "awful", "poor", "dull", "boring", "weak")
NOUNS = ("film", "plot", "cast", "music", "ending", "story", "script", "acting")
FILLERS = ("really", "quite", "very", "rather", "truly", "so")


def sentiment_examples(n: int, seed: int) -> tuple[list[str], np.ndarray]:
  """Sentences whose label (1 positive, 0 negative) is the polarity of their one adjective."""
  rng = np.random.default_rng(seed)
  texts, labels = [], []
  for _ in range(n):
    label = int(rng.integers(2))
    adjective = rng.choice(POSITIVE if label else NEGATIVE)
    words = ["the", rng.choice(NOUNS), "was", rng.choice(FILLERS), adjective]
    if rng.random() < 0.5:
      words += ["and", "the", rng.choice(NOUNS), "was", rng.choice(FILLERS)]
    texts.append(" ".join(words))
    labels.append(label)
  return texts, np.asarray(labels)


def tiny_model_dir(directory: str, *, vocab_size: int = 56, seed: int = 0) -> str:
  """A data2vec-jax model dir (random 2 x 32 encoder) holding its sentencepiece model."""
  import jax

  from data2vec_jax.data.tokenizer import train_sentencepiece
  from data2vec_jax.model.encoder import Encoder
  from data2vec_jax.weights.pretrained import save_pretrained

  os.makedirs(directory, exist_ok=True)
  texts, _ = sentiment_examples(400, seed=123)
  train_sentencepiece(texts, os.path.join(directory, "spm.model"), vocab_size=vocab_size)
  config = tiny_config(
    vocab_size=vocab_size, hidden_size=32, num_heads=2, intermediate_size=64, max_positions=66
  )
  import jax.numpy as jnp

  params = Encoder(config).init(jax.random.PRNGKey(seed), jnp.full((1, 8), 5, jnp.int32))
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(params["params"]))
  from flax.linen import meta

  save_pretrained(directory, config, meta.unbox(params))
  return directory


def write_sst2_tsv(directory: str, *, n_train: int, n_dev: int, shuffle_labels: bool = False):
  """glue_data/SST-2/{train,dev}.tsv of the sentiment task (header `sentence\\tlabel`)."""
  task_dir = os.path.join(directory, "SST-2")
  os.makedirs(task_dir, exist_ok=True)
  for name, n, seed in (("train.tsv", n_train, 1), ("dev.tsv", n_dev, 2)):
    texts, labels = sentiment_examples(n, seed)
    if shuffle_labels and name == "train.tsv":
      labels = np.random.default_rng(7).permutation(labels)
    with open(os.path.join(task_dir, name), "w") as f:
      f.write("sentence\tlabel\n")
      f.writelines(f"{t}\t{y}\n" for t, y in zip(texts, labels))
  return directory
