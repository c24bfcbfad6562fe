"""Input pipeline for data2vec text pretraining: tokenizers, corpora, fairseq blocks, batching.

Data flows one way: source (text / TFDS / fairseq .bin) -> TokenSource (flat ids + line sizes)
-> BlockDataset (fairseq TokenBlockDataset + BOS) -> BatchIterator (+ PrefetchIterator) -> trainer.
"""

from data2vec_jax.data.blocks import BREAK_MODES, BlockDataset, slice_indices
from data2vec_jax.data.dictionary import Dictionary, VocabInfo
from data2vec_jax.data.pipeline import (
  BatchIterator,
  PipelineConfig,
  PrefetchIterator,
  build_block_dataset,
  make_iterator,
)
from data2vec_jax.data.sources import (
  MMapIndexedDataset,
  MMapIndexedDatasetBuilder,
  TokenSource,
  read_text_documents,
  tfds_documents,
  tokenize_documents,
)
from data2vec_jax.data.tokenizer import (
  BPETokenizer,
  SentencePieceTokenizer,
  load_tokenizer,
  train_sentencepiece,
)

build_blocks = build_block_dataset  # the name used in the design brief

__all__ = [
  "BREAK_MODES",
  "BatchIterator",
  "BlockDataset",
  "BPETokenizer",
  "Dictionary",
  "MMapIndexedDataset",
  "MMapIndexedDatasetBuilder",
  "PipelineConfig",
  "PrefetchIterator",
  "SentencePieceTokenizer",
  "TokenSource",
  "VocabInfo",
  "build_block_dataset",
  "build_blocks",
  "load_tokenizer",
  "make_iterator",
  "read_text_documents",
  "slice_indices",
  "tfds_documents",
  "tokenize_documents",
  "train_sentencepiece",
]
