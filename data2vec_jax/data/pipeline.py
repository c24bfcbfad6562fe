"""Deterministic, resumable, per-process batching of `BlockDataset` sequences, with masking.

Order. For epoch e the global order is a permutation of block indices drawn from
`np.random.default_rng((seed, e))` (identity when `shuffle=False`). Global batch b of epoch e is
`perm[b*GB:(b+1)*GB]`; process p of P takes the contiguous rows `[p*GB/P, (p+1)*GB/P)`. Every
process computes the same permutation, so shards are disjoint and cover the global batch without
any communication. After the last batch of an epoch the iterator moves to epoch e+1 by itself.

Masking is `mask_fn(tokens, epoch=e, index=i)` on each unpadded sequence, with i the block's index
in the BlockDataset, so a sequence's mask depends only on (seed, epoch, index) -- not on the
process layout, the batch size or where training resumed.

Shapes. `pad_to='max'` pads every batch to `tokens_per_sample` (one compiled shape).
`pad_to='bucket'` pads to the smallest multiple of `pad_multiple` covering the longest row of the
*global* batch (computed from the sizes array, so all processes agree on the shape without
talking to each other, as `jax.make_array_from_process_local_data` requires).

`drop_remainder=False` keeps the last, partial global batch of an epoch and fills its missing rows
with padding (`selected` all False), so shapes stay fixed and such rows add nothing to the loss.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import queue
import threading
from typing import Any, Callable, Mapping

import numpy as np

from data2vec_jax import strict_config
from data2vec_jax.data import shards, sources
from data2vec_jax.data.blocks import BREAK_MODES, BlockDataset
from data2vec_jax.data.dictionary import Dictionary, VocabInfo
from data2vec_jax.data.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
MaskFn = Callable[..., tuple[np.ndarray, np.ndarray]]

_STATE_VERSION = 1
# Batch key of the global batch's real tokens per row (host-side only; see BatchIterator).
GLOBAL_ROW_TOKENS = "global_row_tokens"


@dataclasses.dataclass(frozen=True)
class PipelineConfig(strict_config.StrictConfig):
  """Batching settings. `global_batch_size` counts sequences over all processes."""

  tokens_per_sample: int = 512
  break_mode: str = "complete_doc"
  global_batch_size: int = 256
  seed: int = 1
  pad_to: str = "max"  # 'max' | 'bucket'
  pad_multiple: int = 64
  shuffle: bool = True
  drop_remainder: bool = True

  def __post_init__(self) -> None:
    if self.tokens_per_sample < 2:
      raise ValueError(f"tokens_per_sample must be >= 2, got {self.tokens_per_sample}")
    if self.break_mode not in BREAK_MODES:
      raise ValueError(f"unknown break_mode {self.break_mode!r}; expected one of {BREAK_MODES}")
    if self.global_batch_size < 1:
      raise ValueError(f"global_batch_size must be >= 1, got {self.global_batch_size}")
    if self.pad_to not in ("max", "bucket"):
      raise ValueError(f"unknown pad_to {self.pad_to!r}; expected 'max' or 'bucket'")
    if self.pad_multiple < 1:
      raise ValueError(f"pad_multiple must be >= 1, got {self.pad_multiple}")


class BatchIterator:
  """Infinite iterator of this process's rows of each global batch.

  Each item is a dict of numpy arrays (B = global_batch_size // process_count, T = padded length):
    'source'   int32 [B, T]  masked input (mask_fn's output), pad_id after the sequence;
    'target'   int32 [B, T]  original tokens, pad_id after the sequence;
    'selected' bool  [B, T]  positions the loss is taken on (mask_fn's output), False at pads.
    'global_row_tokens' int32 [GB]  real tokens of every row of the *global* batch (all
               processes' rows, 0 for the missing rows of a partial batch), from the sizes
               array: the same on every process, so host-side choices that must agree across
               processes (the packed capacity, `packing.spec_for_batch`) need no communication.
               Not a device input: the trainer takes it out before the batch goes to devices.

  Args:
    blocks: the sequences.
    config: PipelineConfig.
    mask_fn: `mask_fn(tokens int32 [n], *, epoch, index) -> (source int32 [n], selected bool [n])`.
    pad_id, bos_id: vocabulary ids (bos_id is only checked against the blocks).
    process_index, process_count: this process's place (jax.process_index()/process_count()).
  """

  def __init__(
    self,
    blocks: BlockDataset,
    config: PipelineConfig,
    *,
    mask_fn: MaskFn,
    pad_id: int,
    bos_id: int,
    process_index: int = 0,
    process_count: int = 1,
  ) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"bad process_index={process_index} / process_count={process_count}")
    if config.global_batch_size % process_count:
      raise ValueError(
        f"global_batch_size={config.global_batch_size} is not divisible by "
        f"process_count={process_count}"
      )
    if (
      blocks.tokens_per_sample != config.tokens_per_sample or blocks.break_mode != config.break_mode
    ):
      raise ValueError(
        f"blocks were built with tokens_per_sample={blocks.tokens_per_sample}, "
        f"break_mode={blocks.break_mode!r} but the config says "
        f"{config.tokens_per_sample}, {config.break_mode!r}"
      )
    if blocks.bos_id != bos_id:
      raise ValueError(f"blocks start with bos_id={blocks.bos_id}, but bos_id={bos_id} was given")
    n = len(blocks)
    gb = config.global_batch_size
    if config.drop_remainder and n < gb:
      raise ValueError(
        f"the dataset has {n} sequences, fewer than one global batch of {gb} "
        f"(drop_remainder=True would yield nothing)"
      )
    self.blocks = blocks
    self.config = config
    self.mask_fn = mask_fn
    self.pad_id = int(pad_id)
    self.bos_id = int(bos_id)
    self.process_index = process_index
    self.process_count = process_count
    self.local_batch_size = gb // process_count
    self.batches_per_epoch = n // gb if config.drop_remainder else -(-n // gb)
    self._epoch = 0
    self._batch = 0
    self._perm_epoch = -1
    self._perm = np.empty(0, dtype=np.int64)
    self._fingerprint = self._make_fingerprint()

  # -- order ---------------------------------------------------------------------------------

  def _make_fingerprint(self) -> str:
    c = self.config
    # Only what changes the global order and content; the process layout and padding do not,
    # so a run may resume on a different number of hosts.
    return json.dumps(
      {
        "blocks": self.blocks.fingerprint(),
        "n": len(self.blocks),
        "tokens_per_sample": c.tokens_per_sample,
        "break_mode": c.break_mode,
        "global_batch_size": c.global_batch_size,
        "seed": c.seed,
        "shuffle": c.shuffle,
        "drop_remainder": c.drop_remainder,
      },
      sort_keys=True,
    )

  def epoch_order(self, epoch: int) -> np.ndarray:
    """int64 [len(blocks)]: the global order of block indices in `epoch`."""
    if self._perm_epoch != epoch:
      self._perm = self._order(epoch)
      self._perm_epoch = epoch
    return self._perm

  def _order(self, epoch: int) -> np.ndarray:
    n = len(self.blocks)
    if self.config.shuffle:
      return np.random.default_rng((self.config.seed, epoch)).permutation(n)
    return np.arange(n, dtype=np.int64)

  def row_tokens_ahead(self, epoch: int, batch: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The shapes of the `count` global batches from (epoch, batch) on, without building them:
    (T int [count]: each batch's padded length; row_tokens int32 [count, GB]: each batch's
    `global_row_tokens`). From the sizes array only, so a run can list the static shapes its
    steps will meet before the first one (and from any thread: it touches no cached state)."""
    gb = self.config.global_batch_size
    lengths, rows = [np.zeros(0, np.int64)], [np.zeros((0, gb), np.int32)]  # count may be 0
    while count > 0:
      order = self._order(epoch)
      take = min(count, self.batches_per_epoch - batch)
      idx = order[batch * gb : (batch + take) * gb]
      sizes = np.zeros(take * gb, dtype=np.int32)
      sizes[: len(idx)] = self.blocks.sizes[idx]  # a partial last batch: missing rows are 0
      sizes = sizes.reshape(take, gb)
      if self.config.pad_to == "max":
        lengths.append(np.full(take, self.config.tokens_per_sample))
      else:
        m, t = self.config.pad_multiple, self.config.tokens_per_sample
        lengths.append(np.minimum(t, -(-sizes.max(axis=1) // m) * m))
      rows.append(sizes)
      count -= take
      epoch, batch = epoch + 1, 0
    return np.concatenate(lengths), np.concatenate(rows)

  def global_batch_indices(self, epoch: int, batch: int) -> np.ndarray:
    """int64 [<= GB]: block indices of global batch `batch` of `epoch` (short only for the last
    batch when drop_remainder=False)."""
    gb = self.config.global_batch_size
    return self.epoch_order(epoch)[batch * gb : (batch + 1) * gb]

  # -- state ---------------------------------------------------------------------------------

  def get_state(self) -> dict[str, Any]:
    """Position of the NEXT batch; JSON-serialisable."""
    return {
      "version": _STATE_VERSION,
      "epoch": self._epoch,
      "batch": self._batch,
      "fingerprint": self._fingerprint,
    }

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Resume at a position from `get_state`; raises if it was taken on other data/config."""
    if state.get("version") != _STATE_VERSION:
      raise ValueError(f"unsupported iterator state version {state.get('version')!r}")
    if state.get("fingerprint") != self._fingerprint:
      raise ValueError(
        "iterator state was saved with a different dataset or pipeline config:\n"
        f"  saved:   {state.get('fingerprint')}\n  current: {self._fingerprint}"
      )
    epoch, batch = int(state["epoch"]), int(state["batch"])
    if epoch < 0 or not 0 <= batch < self.batches_per_epoch:
      raise ValueError(
        f"bad iterator position epoch={epoch} batch={batch} "
        f"({self.batches_per_epoch} batches per epoch)"
      )
    self._epoch, self._batch = epoch, batch

  @property
  def epoch(self) -> int:
    return self._epoch

  # -- batches -------------------------------------------------------------------------------

  def padded_length(self, indices: np.ndarray) -> int:
    """T for a global batch with these block indices."""
    t = self.config.tokens_per_sample
    if self.config.pad_to == "max" or len(indices) == 0:
      return t
    m = self.config.pad_multiple
    longest = int(self.blocks.sizes[indices].max())
    return min(t, -(-longest // m) * m) if longest < t else t

  def make_batch(self, epoch: int, batch: int) -> Batch:
    """This process's rows of global batch `batch` of `epoch` (pure function of its arguments)."""
    idx = self.global_batch_indices(epoch, batch)
    T = self.padded_length(idx)
    B = self.local_batch_size
    lo = self.process_index * B
    local = idx[lo : lo + B]  # may be short (or empty) in a partial last batch
    source = np.full((B, T), self.pad_id, dtype=np.int32)
    target = np.full((B, T), self.pad_id, dtype=np.int32)
    selected = np.zeros((B, T), dtype=bool)
    row_tokens = np.zeros(self.config.global_batch_size, dtype=np.int32)
    row_tokens[: len(idx)] = self.blocks.sizes[idx]
    for r, i in enumerate(local):
      tokens = self.blocks[int(i)]
      n = len(tokens)
      if n != row_tokens[lo + r]:
        raise ValueError(
          f"block {int(i)} has {n} tokens but the sizes array says "
          f"{row_tokens[lo + r]}: the dataset's index is inconsistent"
        )
      src, sel = self.mask_fn(tokens, epoch=epoch, index=int(i))
      if src.shape != (n,) or sel.shape != (n,):
        raise ValueError(f"mask_fn returned shapes {src.shape}, {sel.shape} for a sequence of {n}")
      source[r, :n] = src
      target[r, :n] = tokens
      selected[r, :n] = sel
    return {"source": source, "target": target, "selected": selected, GLOBAL_ROW_TOKENS: row_tokens}

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> Batch:
    out = self.make_batch(self._epoch, self._batch)
    self._batch += 1
    if self._batch >= self.batches_per_epoch:
      self._epoch, self._batch = self._epoch + 1, 0
    return out


_END = object()


class PrefetchIterator:
  """Runs an iterator with `get_state/set_state` in a background thread, `buffer_size` ahead.

  numpy releases the GIL in copies, and the device step runs asynchronously, so batch assembly
  overlaps with training. `get_state()` is the state after the last batch *returned to the
  caller*, not after what the thread has prefetched, so checkpoints resume exactly. Exceptions in
  the thread are re-raised by `__next__`. Call `close()` (or use `with`) to stop the thread.
  """

  def __init__(self, iterator: BatchIterator, buffer_size: int = 2) -> None:
    if buffer_size < 1:
      raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
    self.iterator = iterator
    self.buffer_size = buffer_size
    self._state = iterator.get_state()
    self._thread: threading.Thread | None = None
    self._stop = threading.Event()
    self._queue: queue.Queue = queue.Queue(maxsize=buffer_size)
    self._start()

  def _start(self) -> None:
    self._stop = threading.Event()
    self._queue = queue.Queue(maxsize=self.buffer_size)
    stop, q = self._stop, self._queue  # bind: a restarted thread never touches the old queue

    def work() -> None:
      try:
        while not stop.is_set():
          item = next(self.iterator)
          item = (item, self.iterator.get_state())
          while not stop.is_set():
            try:
              q.put(item, timeout=0.1)
              break
            except queue.Full:
              continue
      except BaseException as e:  # noqa: BLE001 -- delivered to the consumer
        while not stop.is_set():
          try:
            q.put((_END, e), timeout=0.1)
            break
          except queue.Full:
            continue

    self._thread = threading.Thread(target=work, name="data-prefetch", daemon=True)
    self._thread.start()

  def _halt(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None

  def __iter__(self) -> "PrefetchIterator":
    return self

  def __next__(self) -> Batch:
    if self._thread is None:
      raise RuntimeError("PrefetchIterator is closed")
    item, state = self._queue.get()
    if item is _END:
      self._thread = None
      raise state
    self._state = state
    return item

  def get_state(self) -> dict[str, Any]:
    return dict(self._state)

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Stop the thread, drop prefetched batches, reposition, restart."""
    self._halt()
    self.iterator.set_state(state)
    self._state = self.iterator.get_state()
    self._start()

  def close(self) -> None:
    self._halt()

  def __enter__(self) -> "PrefetchIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self) -> None:
    try:
      self._halt()
    except Exception:  # noqa: BLE001 -- interpreter shutdown
      pass


# ----------------------------------------------------------------------------------------------
# Building a BlockDataset from a config section
# ----------------------------------------------------------------------------------------------

# The keys of the `data` section that choose and read the source (the rest are batching keys).
SOURCE_KEYS = {
  "source",
  "path",
  "tfds_name",
  "tfds_split",
  "tfds_data_dir",
  "text_feature",
  "tokenizer",
  "vocab_json",
  "merges_txt",
  "dict_txt",
  "sentencepiece_model",
  "sentence_split",
  "max_documents",
}


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
  if isinstance(cfg, Mapping):
    return cfg.get(key, default)
  return getattr(cfg, key, default) if hasattr(cfg, key) else default


def build_block_dataset(
  data_cfg: Any, *, tokens_per_sample: int, break_mode: str, strict_keys: bool = False
) -> tuple[BlockDataset, VocabInfo]:
  """BlockDataset + vocabulary facts from a `data` config section (ConfigDict, dict, object).

  Keys:
    source: 'text' | 'tfds' | 'fairseq_bin'.
    path: text file(s) (glob / comma list) for 'text'; the binarized prefix (without .bin/.idx)
      for 'fairseq_bin'.
    tfds_name, tfds_split ('train'), tfds_data_dir (None), text_feature ('text') for 'tfds'.
    tokenizer: 'bpe' | 'sentencepiece' (for 'text'/'tfds'; for 'fairseq_bin' only to find the
      vocabulary when no dict.txt is given).
    vocab_json, merges_txt, dict_txt (optional), sentencepiece_model.
    sentence_split (False): split TFDS paragraphs into sentences; max_documents (None): cap.
  For 'fairseq_bin' the vocabulary comes from `dict_txt` (default `<dir of path>/dict.txt`) plus
  the appended `<mask>`, or from the tokenizer files if no dict.txt exists; the data is checked
  against the `prepare_stats.json` next to it, when there is one (`sources.check_prepare_stats`).
  A path `D/train` whose folder holds `prepare --num_shards n` shards instead of `D/train.bin`
  reads all n shards as one corpus (`shards.py`; dict.txt: `D/dict.txt` or shard 0's).
  'text' and 'tfds' are tokenized into memory; binarize large corpora with
  `python -m data2vec_jax.data.prepare` and use 'fairseq_bin' (memory-mapped).
  """
  if strict_keys and isinstance(data_cfg, Mapping):
    unknown = sorted(set(data_cfg) - SOURCE_KEYS)
    if unknown:
      raise ValueError(f"unknown data config keys {unknown}; known: {sorted(SOURCE_KEYS)}")
  kind = _cfg_get(data_cfg, "source")
  if kind == "fairseq_bin":
    token_source, vocab = _binarized_source(data_cfg)
  elif kind in ("text", "tfds"):
    token_source, vocab = _tokenized_source(data_cfg)
  else:
    raise ValueError(f"unknown data.source {kind!r}; expected 'text', 'tfds' or 'fairseq_bin'")
  blocks = BlockDataset(
    token_source, tokens_per_sample=tokens_per_sample, break_mode=break_mode, bos_id=vocab.bos_id
  )
  log.info(
    "data: %s, %d lines, %d tokens -> %d sequences (%d oversize dropped), vocab %d",
    kind,
    len(token_source),
    token_source.num_tokens,
    len(blocks),
    blocks.num_dropped,
    vocab.vocab_size,
  )
  return blocks, vocab


def _config_tokenizer(data_cfg: Any) -> Tokenizer:
  """The tokenizer the `data` section's files name (`tokenizer` defaults to 'bpe')."""
  get = functools.partial(_cfg_get, data_cfg)
  return load_tokenizer(
    get("tokenizer", "bpe"),
    vocab_json=get("vocab_json"),
    merges_txt=get("merges_txt"),
    dict_txt=get("dict_txt"),
    sentencepiece_model=get("sentencepiece_model"),
  )


def _binarized_source(data_cfg: Any) -> tuple[sources.TokenSource, VocabInfo]:
  """source='fairseq_bin': the memory-mapped corpus at `path` (one .bin/.idx or the shards of
  `prepare --num_shards`), checked against its prepare_stats.json, and its vocabulary."""
  get = functools.partial(_cfg_get, data_cfg)
  prefix = get("path")
  if not prefix:
    raise ValueError("data.path must be set to the binarized prefix for source='fairseq_bin'")
  shard_prefixes = shards.shard_prefixes(prefix)  # None: an unsharded corpus
  if shard_prefixes is None:
    ds = sources.MMapIndexedDataset(prefix)
    sources.check_prepare_stats(ds)  # a partial .bin/.idx would train on a fraction of it
    default_dict = os.path.join(os.path.dirname(os.path.abspath(prefix)), "dict.txt")
  else:
    default_dict = shards.shards_dictionary(shard_prefixes)
  dict_txt = get("dict_txt") or default_dict
  if os.path.isfile(dict_txt):
    vocab = Dictionary.load(dict_txt).vocab_info()
  elif get("vocab_json") or get("sentencepiece_model"):
    vocab = _config_tokenizer(data_cfg).vocab
  else:
    raise FileNotFoundError(
      f"no vocabulary for {prefix}: {dict_txt} does not exist and no tokenizer files are configured"
    )
  token_source = (
    ds.token_source()
    if shard_prefixes is None
    else shards.sharded_token_source(shard_prefixes, eos_id=vocab.eos_id)
  )
  return token_source, vocab


def _tokenized_source(data_cfg: Any) -> tuple[sources.TokenSource, VocabInfo]:
  """source='text' | 'tfds': the documents tokenized into memory, and the tokenizer's
  vocabulary."""
  get = functools.partial(_cfg_get, data_cfg)
  tok = _config_tokenizer(data_cfg)
  vocab = tok.vocab
  if get("source") == "text":
    if not get("path"):
      raise ValueError("data.path must name the text file(s) for source='text'")
    docs = sources.read_text_documents(get("path"))
  else:
    if not get("tfds_name"):
      raise ValueError("data.tfds_name must be set for source='tfds'")
    docs = sources.tfds_documents(
      get("tfds_name"),
      split=get("tfds_split", "train") or "train",
      data_dir=get("tfds_data_dir"),
      text_feature=get("text_feature", "text") or "text",
      sentence_split=bool(get("sentence_split", False)),
      max_documents=get("max_documents"),
    )
  token_source = sources.tokenize_documents(
    docs, tok.encode_batch, eos_id=vocab.eos_id, max_documents=get("max_documents")
  )
  return token_source, vocab


def make_iterator(
  blocks: BlockDataset,
  config: PipelineConfig,
  vocab: VocabInfo,
  *,
  mask_fn: MaskFn,
  process_index: int = 0,
  process_count: int = 1,
  prefetch: int = 2,
) -> BatchIterator | PrefetchIterator:
  """Convenience: a BatchIterator, wrapped in a PrefetchIterator when `prefetch > 0`."""
  it = BatchIterator(
    blocks,
    config,
    mask_fn=mask_fn,
    pad_id=vocab.pad_id,
    bos_id=vocab.bos_id,
    process_index=process_index,
    process_count=process_count,
  )
  return PrefetchIterator(it, buffer_size=prefetch) if prefetch > 0 else it
