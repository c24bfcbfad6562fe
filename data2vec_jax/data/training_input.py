"""From the `data` / `masking` / `validation` config sections to a resumable iterator of host
batches and the fixed held-out batches.

Thin glue over `data2vec_jax.data` (sources, tokenizers, blocks, batching) and
`data2vec_jax.objective.masking`. The extra source 'python_docs' is the offline demo corpus: English prose
from the Python reference manual (`pydoc_data`, shipped with CPython), written to
`<workdir>/data/` together with a sentencepiece vocabulary trained on it, so the demo needs no
network and no files beyond Python itself. Every `PYTHON_DOCS_VALID_EVERY`-th distinct document
of it is held out (never trained on, not in the vocabulary's training text either): the demo's
validation split.

The `validation` section (fairseq's `valid_subset`): the held-out split is read like the
training data (same tokenizer, blocks and masking config), in file order, its masks drawn once
from `validation.seed`, and materialised on the host as at most `validation.max_batches` global
batches (`ValidationData`), the same at every evaluation (`data2vec_jax/train/validation.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import ml_collections

from data2vec_jax import strict_config
from data2vec_jax.data.blocks import BlockDataset
from data2vec_jax.data.dictionary import VocabInfo
from data2vec_jax.data.pipeline import (
  GLOBAL_ROW_TOKENS,
  SOURCE_KEYS,
  Batch,
  PipelineConfig,
  build_block_dataset,
  make_iterator,
)
from data2vec_jax.data.workers import WorkerPoolIterator
from data2vec_jax.objective.masking import MaskingConfig, mask_tokens

_PIPELINE_KEYS = {f.name for f in dataclasses.fields(PipelineConfig)}
_LOCAL_KEYS = {"prefetch", "workers", "sentencepiece_vocab_size"}
SOURCES = ("fairseq_bin", "text", "tfds", "python_docs")
# Document i of the offline corpus (its distinct documents) is held out when
# i % PYTHON_DOCS_VALID_EVERY == the last residue: 8 of 166 with Python 3.11's topics, spread
# over the (alphabetically sorted) topics rather than the last few only (the same rule as
# `prepare --valid_every`).
PYTHON_DOCS_VALID_EVERY = 20


@dataclasses.dataclass(frozen=True)
class ValidationConfig(strict_config.StrictConfig):
  """The `validation` config section: a held-out loss logged during pretraining.

  Attributes:
    path: the held-out split for data.source 'fairseq_bin' (the binarized valid prefix, e.g.
      data/bin/valid: fairseq's `valid_subset`) or 'text' (text file(s), glob or comma list);
      for 'python_docs' empty = the corpus's held-out documents (or text file(s)). Read with the
      training data's tokenizer and vocabulary.
    tfds_split: the held-out split for data.source 'tfds' (e.g. 'validation').
    every: evaluate every N optimizer steps and at the last step; 0 = off.
    max_batches: at most this many global batches (data.global_batch_size sequences each) of
      the split, in file order; 0 = the whole split (all of it is held in host memory).
    seed: the masking seed of the held-out sequences (masks are drawn once: the same masks at
      every evaluation and in every run with the same masking config).
  """

  path: str = ""
  tfds_split: str = ""
  every: int = 0
  max_batches: int = 0
  seed: int = 1

  def __post_init__(self) -> None:
    for name in ("every", "max_batches"):
      if int(getattr(self, name)) < 0:
        raise ValueError(f"validation.{name} must be >= 0, got {getattr(self, name)}")

  @property
  def enabled(self) -> bool:
    return self.every > 0


@dataclasses.dataclass
class ValidationData:
  """The held-out batches, materialised once (host numpy, this process's rows).

  batches: [{'source','target': int32 [B_local, T], 'selected': bool [B_local, T]}], the same
  layout as the training batches (rows of a partial last batch are all padding, `selected`
  False: they add nothing to the loss). num_sequences: real sequences over all processes.
  """

  batches: list[Batch]
  num_sequences: int
  config: ValidationConfig


def validation_config(config: ml_collections.ConfigDict) -> ValidationConfig:
  """The config's `validation` section (off when the config has none); unknown keys raise."""
  section = config.get("validation")
  if section is None:
    return ValidationConfig()
  try:
    return ValidationConfig.from_dict(dict(section))
  except ValueError as e:
    raise ValueError(str(e).replace("ValidationConfig keys", "validation config keys")) from None


def check_config(config: ml_collections.ConfigDict) -> None:
  """Validates the `data`, `masking` and `validation` sections without reading any data
  (ValueError)."""
  data_cfg = dict(config.data)
  unknown = sorted(set(data_cfg) - SOURCE_KEYS - _PIPELINE_KEYS - _LOCAL_KEYS)
  if unknown:
    raise ValueError(f"unknown data config keys {unknown}")
  source = data_cfg.get("source")
  if source not in SOURCES:
    raise ValueError(f"unknown data.source {source!r}; expected one of {SOURCES}")
  if source in ("fairseq_bin", "text") and not data_cfg.get("path"):
    raise ValueError(
      f"data.path must be set for data.source={source!r} (the "
      f"{'binarized prefix' if source == 'fairseq_bin' else 'text file(s)'})"
    )
  if source == "tfds" and not data_cfg.get("tfds_name"):
    raise ValueError("data.tfds_name must be set for data.source='tfds'")
  if int(data_cfg.get("prefetch", 2)) < 0:
    raise ValueError(f"data.prefetch must be >= 0, got {data_cfg['prefetch']}")
  if int(data_cfg.get("workers", 0)) < -1:
    raise ValueError(f"data.workers must be -1 (auto), 0 or a count, got {data_cfg['workers']}")
  PipelineConfig.from_dict({k: v for k, v in data_cfg.items() if k in _PIPELINE_KEYS})
  MaskingConfig.from_dict(dict(config.masking))
  _check_validation(validation_config(config), source)


def _check_validation(validation: ValidationConfig, source: str) -> None:
  if validation.path and source == "tfds":
    raise ValueError(
      "validation.path is not read for data.source='tfds'; set validation.tfds_split"
    )
  if validation.tfds_split and source != "tfds":
    raise ValueError(
      f"validation.tfds_split is only read for data.source='tfds' (not {source!r}); "
      f"set validation.path"
    )
  if not validation.enabled:
    return
  if source in ("fairseq_bin", "text") and not validation.path:
    what = (
      "the binarized valid prefix, e.g. data/bin/valid"
      if source == "fairseq_bin"
      else "held-out text file(s)"
    )
    raise ValueError(
      f"validation.path must be set when validation.every > 0 and data.source={source!r} "
      f"({what}); validation.every=0 turns validation off"
    )
  if source == "tfds" and not validation.tfds_split:
    raise ValueError(
      "validation.tfds_split must be set when validation.every > 0 and data.source='tfds'"
    )


@dataclasses.dataclass
class TrainingData:
  """iterator yields this process's rows: {'source','target': int32 [B_local,T], 'selected': bool}."""

  iterator: Any
  vocab: VocabInfo
  seq_len: int
  validation: ValidationData | None = None  # None: validation.every == 0

  @property
  def vocab_size(self) -> int:
    return self.vocab.vocab_size

  @property
  def mask_id(self) -> int:
    return self.vocab.mask_id


def python_docs_sentencepiece_path(data_dir: str, vocab_size: int) -> str:
  """Where the demo source's sentencepiece model is (`<workdir>/data/...`): fine-tuning finds a
  demo model's tokenizer here."""
  return os.path.join(data_dir, f"python_docs_spm{vocab_size}.model")


def prepare_python_docs(data_dir: str, vocab_size: int) -> tuple[str, str, str]:
  """Writes the offline corpus, split, and trains its sentencepiece model once.

  Returns (train text, held-out text, sentencepiece model). Every `PYTHON_DOCS_VALID_EVERY`-th
  distinct document goes to the held-out file only, and the vocabulary is trained on the
  training text only, so the held-out loss measures text the model has not seen. The split does
  not depend on `validation.every`: a run trains on the same data with validation on or off.

  Each file is written under a temporary name and renamed into place (the training text last),
  so a run killed half-way never leaves a truncated corpus or model for the next run to pick up.
  """
  from data2vec_jax.data.offline_corpus import topic_documents
  from data2vec_jax.data.tokenizer import train_sentencepiece

  # New names (the corpus was one python_docs.txt before the split): a data dir of an older
  # run is never mistaken for a split one.
  train_path = os.path.join(data_dir, "python_docs_train.txt")
  valid_path = os.path.join(data_dir, "python_docs_valid.txt")
  model_path = python_docs_sentencepiece_path(data_dir, vocab_size)
  suffix = f".tmp{os.getpid()}"
  if not (os.path.exists(train_path) and os.path.exists(valid_path)):
    # Each distinct document once: some sections appear under several topics, and a copy in
    # the training text would leak a held-out document.
    docs = [list(d) for d in dict.fromkeys(tuple(d) for d in topic_documents())]
    if not docs:
      raise RuntimeError("pydoc_data.topics yielded no prose; is this a stripped Python build?")
    held_out = [
      i % PYTHON_DOCS_VALID_EVERY == PYTHON_DOCS_VALID_EVERY - 1 for i in range(len(docs))
    ]
    os.makedirs(data_dir, exist_ok=True)
    for path, keep in ((valid_path, True), (train_path, False)):
      # The layout of `offline_corpus.write_offline_corpus`: a sentence per line, a blank line
      # between documents.
      with open(path + suffix, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(d) for d, h in zip(docs, held_out) if h == keep) + "\n")
      os.replace(path + suffix, path)
    logging.info(
      "offline corpus: %d documents, %d held out for validation (%s)",
      len(docs),
      sum(held_out),
      valid_path,
    )
  if not os.path.exists(model_path):
    with open(train_path, encoding="utf-8") as f:
      sentences = [line.strip() for line in f if line.strip()]
    logging.info(
      "training a %d-piece sentencepiece vocabulary on %d sentences", vocab_size, len(sentences)
    )
    train_sentencepiece(sentences, model_path + suffix, vocab_size=vocab_size)
    os.replace(model_path + suffix, model_path)
  return train_path, valid_path, model_path


def _prepare_python_docs_once(
  data_dir: str, vocab_size: int, process_index: int, process_count: int
) -> tuple[str, str, str]:
  """Process 0 prepares first and the others wait, so that on a shared workdir every process
  reads the same files (two concurrent sentencepiece trainings need not agree)."""
  if process_count == 1:
    return prepare_python_docs(data_dir, vocab_size)
  from jax.experimental import multihost_utils

  if process_index == 0:
    prepare_python_docs(data_dir, vocab_size)
  multihost_utils.sync_global_devices("data2vec_jax: python_docs prepared")
  return prepare_python_docs(data_dir, vocab_size)  # no-op where the files are already there


def input_workers(setting: int) -> int:
  """data.workers: N worker processes build the batches (workers.py); 0 = one background thread
  in the trainer's process; -1 (auto) = none when JAX computes on the CPU (the workers would take
  its cores), else one per two host cores, at most 16."""
  if setting != -1:
    return setting
  import jax

  if jax.default_backend() == "cpu":
    return 0
  return max(1, min(16, (os.cpu_count() or 2) // 2))


def masking_fn(masking: MaskingConfig, seed: int, vocab: VocabInfo):
  """The pipeline's `mask_fn`: fairseq's masking of one sequence, keyed by `seed`."""
  return functools.partial(
    mask_tokens, config=masking, seed=seed, mask_id=vocab.mask_id, vocab_size=vocab.vocab_size
  )


def validation_batches(
  blocks: BlockDataset,
  vocab: VocabInfo,
  pipeline: PipelineConfig,
  masking: MaskingConfig,
  validation: ValidationConfig,
  *,
  process_index: int = 0,
  process_count: int = 1,
) -> list[Batch]:
  """The held-out batches: this process's rows of the first `validation.max_batches` global
  batches of `blocks` in file order (0 = all), each sequence masked once with `validation.seed`.

  A pure function of its arguments: the same batches at every evaluation, in every run, for
  any process layout of the same global batch. A partial last batch is filled with padding
  rows (`selected` False), so every batch has the training batches' shape. Returns
  [{'source','target': int32 [B_local, T], 'selected': bool [B_local, T]}].
  """
  config = dataclasses.replace(
    pipeline, shuffle=False, drop_remainder=False, seed=int(validation.seed)
  )
  iterator = make_iterator(
    blocks,
    config,
    vocab,
    mask_fn=masking_fn(masking, int(validation.seed), vocab),
    process_index=process_index,
    process_count=process_count,
    prefetch=0,  # built once, here: a BatchIterator, no prefetch thread
  )
  count = iterator.batches_per_epoch
  if validation.max_batches:
    count = min(count, int(validation.max_batches))
  batches = []
  for b in range(count):
    batch = iterator.make_batch(0, b)
    batch.pop(GLOBAL_ROW_TOKENS)  # chooses a packed shape; validation runs unpacked
    batches.append(batch)
  return batches


def _build_validation(
  config: ml_collections.ConfigDict,
  source_cfg: dict[str, Any],
  valid_text: str | None,
  vocab: VocabInfo,
  pipeline: PipelineConfig,
  process_index: int,
  process_count: int,
) -> ValidationData | None:
  """The held-out split read as the training source is (`source_cfg`, resolved), or None."""
  validation = validation_config(config)
  if not validation.enabled:
    return None
  source_cfg = dict(source_cfg)
  if config.data.source == "tfds":
    source_cfg["tfds_split"] = validation.tfds_split
  else:  # fairseq_bin, text, python_docs (already resolved to 'text')
    source_cfg["path"] = validation.path or valid_text
  where = source_cfg.get("tfds_split") if config.data.source == "tfds" else source_cfg["path"]
  try:
    blocks, valid_vocab = build_block_dataset(
      source_cfg,
      tokens_per_sample=pipeline.tokens_per_sample,
      break_mode=pipeline.break_mode,
      strict_keys=True,
    )
  except FileNotFoundError as e:
    raise FileNotFoundError(f"validation split {where}: {e}") from e
  except ValueError as e:
    raise ValueError(f"validation split {where}: {e}") from e
  if valid_vocab != vocab:
    raise ValueError(
      f"validation split {where}: its vocabulary ({valid_vocab}) is not the training data's "
      f"({vocab}); binarize both splits with the same dictionary"
    )
  batches = validation_batches(
    blocks,
    vocab,
    pipeline,
    MaskingConfig.from_dict(dict(config.masking)),
    validation,
    process_index=process_index,
    process_count=process_count,
  )
  num_sequences = min(len(blocks), len(batches) * pipeline.global_batch_size)
  logging.info(
    "validation: %d sequences of %d (%d global batches) from %s, every %d steps",
    num_sequences,
    len(blocks),
    len(batches),
    where,
    validation.every,
  )
  return ValidationData(batches=batches, num_sequences=num_sequences, config=validation)


def build(
  config: ml_collections.ConfigDict, workdir: str, *, process_index: int = 0, process_count: int = 1
) -> TrainingData:
  data_cfg = dict(config.data)
  source_cfg = {k: v for k, v in data_cfg.items() if k not in _PIPELINE_KEYS | _LOCAL_KEYS}
  valid_text = None
  if data_cfg["source"] == "python_docs":
    text_path, valid_text, model_path = _prepare_python_docs_once(
      os.path.join(workdir, "data"),
      int(data_cfg["sentencepiece_vocab_size"]),
      process_index,
      process_count,
    )
    source_cfg.update(
      source="text", path=text_path, tokenizer="sentencepiece", sentencepiece_model=model_path
    )
  # Empty strings in the config mean "not set".
  source_cfg = {k: (v if v != "" else None) for k, v in source_cfg.items()}
  pipeline_cfg = PipelineConfig.from_dict(
    {k: v for k, v in data_cfg.items() if k in _PIPELINE_KEYS}
  )
  blocks, vocab = build_block_dataset(
    source_cfg,
    tokens_per_sample=pipeline_cfg.tokens_per_sample,
    break_mode=pipeline_cfg.break_mode,
    strict_keys=True,
  )
  if vocab.mask_id < 0:
    raise ValueError("the vocabulary has no <mask> symbol; data2vec and MLM need one")
  # Before the training iterator starts its prefetch thread: a bad held-out split fails here.
  validation = _build_validation(
    config, source_cfg, valid_text, vocab, pipeline_cfg, process_index, process_count
  )
  mask_fn = masking_fn(MaskingConfig.from_dict(dict(config.masking)), pipeline_cfg.seed, vocab)
  prefetch = int(data_cfg.get("prefetch", 2))
  workers = input_workers(int(data_cfg.get("workers", 0)))
  iterator = make_iterator(
    blocks,
    pipeline_cfg,
    vocab,
    mask_fn=mask_fn,
    process_index=process_index,
    process_count=process_count,
    prefetch=0 if workers else prefetch,
  )
  if workers:
    logging.info("input pipeline: %d worker processes", workers)
    iterator = WorkerPoolIterator(iterator, workers, buffer_per_worker=max(prefetch, 1))
  return TrainingData(
    iterator=iterator,
    vocab=vocab,
    seq_len=pipeline_cfg.tokens_per_sample,
    validation=validation,
  )
