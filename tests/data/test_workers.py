"""Worker processes build the batches (data2vec_jax/data/workers.py): bit-identical to the
single-threaded pipeline for any worker count, over epoch boundaries; exact resume from a
checkpointed position; a memory-mapped corpus travels to the workers by file name; a worker's
error reaches the consumer."""

from __future__ import annotations

import functools
import os
import pickle

import numpy as np
import pytest

from data2vec_jax.data import sources
from data2vec_jax.data.blocks import BlockDataset
from data2vec_jax.data.pipeline import BatchIterator, PipelineConfig
from data2vec_jax.data.workers import WorkerPoolIterator
from data2vec_jax.objective.masking import MaskingConfig, mask_tokens

BOS, PAD, EOS = 0, 1, 2
VOCAB = 60


def mmap_blocks(directory: str, lines: int = 300, seed: int = 0) -> BlockDataset:
  """A fairseq-binarized corpus of random sentences, memory-mapped, in 32-token blocks."""
  rng = np.random.default_rng(seed)
  sizes = rng.integers(2, 20, lines)
  tokens = np.concatenate([np.append(rng.integers(4, VOCAB, n - 1), EOS) for n in sizes])
  prefix = os.path.join(directory, "train")
  sources.write_token_source(sources.TokenSource(tokens.astype(np.int32), sizes), prefix, np.uint16)
  source = sources.MMapIndexedDataset(prefix).token_source()
  return BlockDataset(source, tokens_per_sample=32, break_mode="complete_doc", bos_id=BOS)


def pipeline(blocks: BlockDataset, **options) -> BatchIterator:
  mask_fn = functools.partial(
    mask_tokens, config=MaskingConfig(), seed=3, mask_id=VOCAB, vocab_size=VOCAB + 1
  )
  config = PipelineConfig(tokens_per_sample=32, global_batch_size=8, **options)
  return BatchIterator(blocks, config, mask_fn=mask_fn, pad_id=PAD, bos_id=BOS)


def assert_same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(scope="module")
def blocks(tmp_path_factory) -> BlockDataset:
  return mmap_blocks(str(tmp_path_factory.mktemp("corpus")))


@pytest.mark.parametrize("workers", [1, 2])
def test_batches_equal_the_single_threaded_pipeline(blocks, workers):
  serial = pipeline(blocks, pad_to="bucket", pad_multiple=8)
  count = serial.batches_per_epoch + 3  # into the second epoch
  expected = [next(serial) for _ in range(count)]
  with WorkerPoolIterator(pipeline(blocks, pad_to="bucket", pad_multiple=8), workers) as it:
    got = [next(it) for _ in range(count)]
    assert it.get_state() == serial.get_state()
  assert_same(got, expected)


def test_resume_from_a_saved_position(blocks):
  reference = pipeline(blocks)
  batches = [next(reference) for _ in range(7)]
  with WorkerPoolIterator(pipeline(blocks), 2) as it:
    for _ in range(4):
      next(it)
    state = it.get_state()  # a checkpoint after 4 batches, while more were built ahead
  with WorkerPoolIterator(pipeline(blocks), 2) as resumed:
    resumed.set_state(state)
    assert_same([next(resumed) for _ in range(3)], batches[4:])
  with pytest.raises(ValueError, match="different dataset or pipeline config"):
    WorkerPoolIterator(pipeline(blocks, seed=2), 1).set_state(state)


def test_a_memory_mapped_corpus_pickles_by_file_name(blocks):
  assert isinstance(blocks.source.tokens, np.memmap)
  data = pickle.dumps(blocks.source)
  assert len(data) < blocks.source.tokens.nbytes  # not the tokens themselves
  copy = pickle.loads(data)
  assert isinstance(copy.tokens, np.memmap)
  np.testing.assert_array_equal(copy.tokens, blocks.source.tokens)
  np.testing.assert_array_equal(copy.sizes, blocks.source.sizes)


def _failing_mask(tokens, *, epoch, index):
  raise ValueError(f"mask failed at epoch {epoch} index {index}")


def test_a_workers_error_reaches_the_consumer(blocks):
  config = PipelineConfig(tokens_per_sample=32, global_batch_size=8)
  it = BatchIterator(blocks, config, mask_fn=_failing_mask, pad_id=PAD, bos_id=BOS)
  with WorkerPoolIterator(it, 1) as workers:
    with pytest.raises(ValueError, match="mask failed at epoch 0"):
      next(workers)
