"""Tiny, offline fine-tuning fixtures: a sentencepiece vocabulary, a model directory that carries
it, and a learnable sentiment-like GLUE task written in every data format the tests read."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

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


def sentiment_splits(n_train: int, n_dev: int) -> dict[str, tuple[list[str], np.ndarray]]:
  """The rows `write_sst2_tsv` writes, by TFDS split name."""
  return {"train": sentiment_examples(n_train, 1), "validation": sentiment_examples(n_dev, 2)}


_TFDS_BUILDERS: dict = {}


def glue_sst2_tfds(data_dir: str, *, n_train: int, n_dev: int) -> str:
  """Prepares TFDS builder 'glue_sst2_for_d2v' (TFDS glue/sst2's features, config `sst2`)."""
  import tensorflow_datasets as tfds
  from etils import epath

  splits = sentiment_splits(n_train, n_dev)
  name = "glue_sst2_for_d2v"
  if name in _TFDS_BUILDERS:  # a builder name registers once per process
    _TFDS_BUILDERS[name].splits = splits
    _TFDS_BUILDERS[name](
      config="sst2", data_dir=data_dir, file_format="array_record"
    ).download_and_prepare()
    return name

  class GlueSst2ForD2v(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="sst2")]
    # This file, as TFDS found it when it was a top-level module: for a module of a package
    # (tests.finetune_helpers) TFDS looks up importlib_resources, which is not installed.
    code_path = epath.Path(__file__)

    def _info(self):
      features = {
        "sentence": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=["negative", "positive"]),
        "idx": np.int32,
      }
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split) for split in self.splits}

    def _generate_examples(self, split):
      texts, labels = self.splits[split]
      for i, (text, label) in enumerate(zip(texts, labels)):
        yield i, {"sentence": text, "label": int(label), "idx": i}

  GlueSst2ForD2v.splits = splits
  _TFDS_BUILDERS[name] = GlueSst2ForD2v
  GlueSst2ForD2v(
    config="sst2", data_dir=data_dir, file_format="array_record"
  ).download_and_prepare()
  return name


def glue_sst2_fairseq_bin(directory: str, spm_model: str, *, n_train: int, n_dev: int) -> str:
  """fairseq's SST-2-bin layout of the sentiment task, binarized with the model's dictionary.

  label/dict.txt lists '1' first when it is the more frequent train label (fairseq's order), so
  fairseq's class ids differ from TFDS's whenever that happens."""
  from data2vec_jax.data.dictionary import Dictionary
  from data2vec_jax.data.sources import MMapIndexedDatasetBuilder
  from data2vec_jax.data.tokenizer import SentencePieceTokenizer, sentencepiece_dictionary

  tokenizer = SentencePieceTokenizer(spm_model)
  root = os.path.join(directory, "SST-2-bin")
  for sub in ("input0", "label"):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  # input0/dict.txt without <mask> (fairseq's task adds it when it loads the dictionary).
  model_dict = sentencepiece_dictionary(tokenizer)
  Dictionary.from_symbols(model_dict.symbols[4 : model_dict.mask_index], add_mask=False).save(
    os.path.join(root, "input0", "dict.txt")
  )
  splits = sentiment_splits(n_train, n_dev)
  train_labels = splits["train"][1]
  order = sorted(("0", "1"), key=lambda s: (-int(np.sum(train_labels == int(s))), s))
  with open(os.path.join(root, "label", "dict.txt"), "w") as f:
    f.writelines(f"{s} {int(np.sum(train_labels == int(s)))}\n" for s in order)
  for split, prefix in (("train", "train"), ("validation", "valid")):
    texts, labels = splits[split]
    with MMapIndexedDatasetBuilder(os.path.join(root, "input0", prefix), np.uint16) as b:
      for text in texts:
        b.add_item(np.append(tokenizer.encode(text), 2).astype(np.int64))
    with MMapIndexedDatasetBuilder(os.path.join(root, "label", prefix), np.uint16) as b:
      for label in labels:
        b.add_item(np.asarray([4 + order.index(str(label)), 2], np.int64))
  return directory


@contextlib.contextmanager
def session_compile_cache() -> Iterator[None]:
  """In-process runs that build the same tiny model's programs again and again load them from
  the session's persistent compilation cache (tests/conftest.py) instead of compiling; JAX's
  cache settings are restored afterwards (the rest of the suite compiles as before)."""
  import jax

  from data2vec_jax.speed import compile_cache

  keys = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  before = {key: getattr(jax.config, key) for key in keys}
  compile_cache.enable(os.environ[compile_cache.ENV], "unused")
  try:
    yield
  finally:
    for key, value in before.items():
      jax.config.update(key, value)


def area_documents() -> list:
  """Held-out-task source documents: 20 per stdlib area (in its first module), each of three
  7-word sentences, every sentence unique (heldout_tasks' AREAS; data.stdlib_corpus documents)."""
  from data2vec_jax.data.stdlib_corpus import CorpusDocument
  from data2vec_jax.finetune.heldout_tasks import AREAS

  words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
  docs = []
  for a, (area, modules) in enumerate(sorted(AREAS.items())):
    for i in range(20):
      sentences = tuple(
        f"The {area} {words[i % 12]} {words[j]} thing number {a}{i}{j}." for j in range(3)
      )
      docs.append(CorpusDocument(f"{modules[0]}.sub:f{i}", f"{modules[0]}.sub", sentences))
  return docs
