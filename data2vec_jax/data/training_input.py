"""From the `data` / `masking` config sections to a resumable iterator of host batches.

Thin glue over `data2vec_jax.data` (sources, tokenizers, blocks, batching) and
`data2vec_jax.objective.masking`. The extra source 'python_docs' is the offline demo corpus: English prose
from the Python reference manual (`pydoc_data`, shipped with CPython), written to
`<workdir>/data/` together with a sentencepiece vocabulary trained on it, so the demo needs no
network and no files beyond Python itself.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import ml_collections

from data2vec_jax.data.dictionary import VocabInfo
from data2vec_jax.data.pipeline import (
  SOURCE_KEYS,
  PipelineConfig,
  build_block_dataset,
  make_iterator,
)
from data2vec_jax.objective.masking import MaskingConfig, mask_tokens

_PIPELINE_KEYS = {f.name for f in dataclasses.fields(PipelineConfig)}
_LOCAL_KEYS = {"prefetch", "sentencepiece_vocab_size"}
SOURCES = ("fairseq_bin", "text", "tfds", "python_docs")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Validates the `data` and `masking` sections without reading any data (ValueError)."""
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
  PipelineConfig.from_dict({k: v for k, v in data_cfg.items() if k in _PIPELINE_KEYS})
  MaskingConfig.from_dict(dict(config.masking))


@dataclasses.dataclass
class TrainingData:
  """iterator yields this process's rows: {'source','target': int32 [B_local,T], 'selected': bool}."""

  iterator: Any
  vocab: VocabInfo
  seq_len: int

  @property
  def vocab_size(self) -> int:
    return self.vocab.vocab_size

  @property
  def mask_id(self) -> int:
    return self.vocab.mask_id


def prepare_python_docs(data_dir: str, vocab_size: int) -> tuple[str, str]:
  """Writes the offline corpus and trains its sentencepiece model once; returns (text, model).

  Each file is written under a temporary name and renamed into place, so a run killed half-way
  never leaves a truncated corpus or model for the next run to pick up.
  """
  from data2vec_jax.data.offline_corpus import write_offline_corpus
  from data2vec_jax.data.tokenizer import train_sentencepiece

  text_path = os.path.join(data_dir, "python_docs.txt")
  model_path = os.path.join(data_dir, f"spm{vocab_size}.model")
  suffix = f".tmp{os.getpid()}"
  if not os.path.exists(text_path):
    stats = write_offline_corpus(text_path + suffix)
    os.replace(text_path + suffix, text_path)
    logging.info("offline corpus: %s", stats)
  if not os.path.exists(model_path):
    with open(text_path, encoding="utf-8") as f:
      sentences = [line.strip() for line in f if line.strip()]
    logging.info(
      "training a %d-piece sentencepiece vocabulary on %d sentences", vocab_size, len(sentences)
    )
    train_sentencepiece(sentences, model_path + suffix, vocab_size=vocab_size)
    os.replace(model_path + suffix, model_path)
  return text_path, model_path


def _prepare_python_docs_once(
  data_dir: str, vocab_size: int, process_index: int, process_count: int
) -> tuple[str, str]:
  """Process 0 prepares first and the others wait, so that on a shared workdir every process
  reads the same files (two concurrent sentencepiece trainings need not agree)."""
  if process_count == 1:
    return prepare_python_docs(data_dir, vocab_size)
  from jax.experimental import multihost_utils

  if process_index == 0:
    prepare_python_docs(data_dir, vocab_size)
  multihost_utils.sync_global_devices("data2vec_jax: python_docs prepared")
  return prepare_python_docs(data_dir, vocab_size)  # no-op where the files are already there


def build(
  config: ml_collections.ConfigDict, workdir: str, *, process_index: int = 0, process_count: int = 1
) -> TrainingData:
  data_cfg = dict(config.data)
  source_cfg = {k: v for k, v in data_cfg.items() if k not in _PIPELINE_KEYS | _LOCAL_KEYS}
  if data_cfg["source"] == "python_docs":
    text_path, model_path = _prepare_python_docs_once(
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
  mask_fn = functools.partial(
    mask_tokens,
    config=MaskingConfig.from_dict(dict(config.masking)),
    seed=pipeline_cfg.seed,
    mask_id=vocab.mask_id,
    vocab_size=vocab.vocab_size,
  )
  iterator = make_iterator(
    blocks,
    pipeline_cfg,
    vocab,
    mask_fn=mask_fn,
    process_index=process_index,
    process_count=process_count,
    prefetch=int(data_cfg.get("prefetch", 2)),
  )
  return TrainingData(iterator=iterator, vocab=vocab, seq_len=pipeline_cfg.tokens_per_sample)
