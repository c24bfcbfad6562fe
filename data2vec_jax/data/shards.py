"""A binarized corpus prepared in shards and read as one corpus.

`python -m data2vec_jax.data.prepare --shard i --num_shards n --output_dir D` writes shard i into
`D/shard-0000i-of-0000n/` (a complete preparation of its own: `train.bin/.idx`, `dict.txt`,
`prepare_stats.json`), so every host of a pod can prepare its part. Training reads
`data.path='D/train'`: when `D/train.bin` does not exist but shard folders do, the prefix
stands for `D/shard-*-of-n/train`, all n of them, read as ONE corpus -- the lines of shard 0,
a document separator (a line holding only `</s>`), the lines of shard 1, ... -- which is exactly
the corpus an unsharded `prepare` writes from the documents in that order. Nothing is copied:
each shard's `.bin` stays memory-mapped (`ConcatenatedTokens`).

Refused, each with one line naming the fix: a missing or unfinished shard, shards of two
preparations (different n) in one folder, shards whose tokenizers or dictionaries differ, and a
folder holding both an unsharded `D/train.bin` and shard folders.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

from data2vec_jax.data.dictionary import Dictionary
from data2vec_jax.data.sources import (
  PREPARE_STATS_FILE,
  DataError,
  MMapIndexedDataset,
  TokenSource,
  check_prepare_stats,
  data_file_path,
  index_file_path,
)

_SHARD_DIR = re.compile(r"^shard-(\d{5,})-of-(\d{5,})$")


def shard_dir_name(index: int, count: int) -> str:
  """The folder of shard `index` of `count` inside an output folder: 'shard-00002-of-00004'."""
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"bad shard {index} of {count}: need 0 <= shard < num_shards")
  return f"shard-{index:05d}-of-{count:05d}"


def shard_prefixes(prefix: str) -> list[str] | None:
  """The shard prefixes `prefix` stands for, in shard order, or None for a plain prefix.

  `prefix` = `D/name`; None when `D` holds no `shard-*-of-*` folder (an unsharded corpus, or
  nothing: the caller's reader names the missing file). Raises DataError when the shards are
  incomplete, of two different counts, or sit next to an unsharded `D/name.bin`.
  """
  folder, name = os.path.split(os.path.abspath(prefix))
  try:
    entries = os.listdir(folder)
  except OSError:
    return None
  found: dict[int, set[int]] = {}  # num_shards -> shard indices present
  for entry in entries:
    m = _SHARD_DIR.match(entry)
    if m and os.path.isdir(os.path.join(folder, entry)):
      found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
  if not found:
    return None
  if os.path.exists(data_file_path(prefix)) or os.path.exists(index_file_path(prefix)):
    raise DataError(
      f"{folder} holds both {name}.bin/.idx and shard folders (shard-*-of-*): delete the "
      f"preparation you do not want to train on"
    )
  if len(found) > 1:
    raise DataError(
      f"{folder} holds shards of {len(found)} preparations (num_shards "
      f"{', '.join(map(str, sorted(found)))}): delete the folders of the one you do not want"
    )
  (count,) = found
  prefixes = [os.path.join(folder, shard_dir_name(i, count), name) for i in range(count)]
  missing = [
    i
    for i, p in enumerate(prefixes)
    if not (os.path.isfile(data_file_path(p)) and os.path.isfile(index_file_path(p)))
  ]
  if missing:
    listed = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
    raise DataError(
      f"{folder}: shard(s) {listed} of {count} have no finished {name}.bin/.idx; run "
      f"`python -m data2vec_jax.data.prepare ... --shard I --num_shards {count} --output_dir "
      f"{folder}` for each (a shard without '{name}' needs the same --valid_every as the others)"
    )
  return prefixes


def _stats(prefix: str) -> dict:
  path = os.path.join(os.path.dirname(prefix), PREPARE_STATS_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def shards_dictionary(prefixes: Sequence[str]) -> str:
  """The dict.txt of a sharded corpus, after checking that every shard has the same tokenizer.

  The folder's own `dict.txt` (written by `prepare --train_tokenizer_only`) when there is one,
  else shard 0's. Every shard's dictionary must list the same symbols, and the tokenizer hashes
  recorded in their `prepare_stats.json` (and the folder's own, from --train_tokenizer_only) must
  agree: ids from two tokenizers would mean different words in one corpus.
  """
  dicts = [os.path.join(os.path.dirname(p), "dict.txt") for p in prefixes]
  top = os.path.join(os.path.dirname(os.path.dirname(prefixes[0])), "dict.txt")
  chosen = top if os.path.isfile(top) else dicts[0]
  reference = Dictionary.load(chosen).symbols
  # `prepare --train_tokenizer_only` records the tokenizer of the whole folder there.
  hashes: dict[str, str] = {}
  top_digest = _stats(os.path.join(os.path.dirname(top), "train")).get("tokenizer_sha256")
  if top_digest:
    hashes[os.path.join(os.path.dirname(top), "spm.model")] = top_digest
  for prefix, path in zip(prefixes, dicts):
    if os.path.isfile(path) and Dictionary.load(path).symbols != reference:
      raise DataError(
        f"{path} lists other symbols than {chosen}: the shards were prepared with different "
        f"tokenizers; prepare every shard with the same --sentencepiece_model (or BPE files)"
      )
    digest = _stats(prefix).get("tokenizer_sha256")
    if digest:
      hashes[prefix] = digest
  distinct = sorted(set(hashes.values()))
  if len(distinct) > 1:
    a, b = (next(p for p, h in hashes.items() if h == d) for d in distinct[:2])
    raise DataError(
      f"{os.path.dirname(a)} and {os.path.dirname(b)} record different tokenizer files "
      f"(sha256 {hashes[a][:12]} vs {hashes[b][:12]}); prepare every shard with the same "
      f"--sentencepiece_model (or BPE files)"
    )
  return chosen


def _open_memmap(filename: str, dtype: str, offset: int, shape: tuple[int, ...]) -> np.ndarray:
  return np.memmap(filename, mode="r", dtype=np.dtype(dtype), offset=offset, shape=shape)


class ConcatenatedTokens:
  """Several 1-D token arrays read as one, without copying: `len()`, `dtype` and contiguous
  slices `tokens[a:b]` (-> a new ndarray), which is all `BlockDataset` asks of its tokens.

  Pickles memory-mapped parts by file name (the input pipeline's worker processes).
  """

  def __init__(self, parts: Sequence[np.ndarray]) -> None:
    dtypes = {np.dtype(p.dtype) for p in parts}
    if len(dtypes) != 1:
      raise DataError(
        f"the shards store tokens as {sorted(map(str, dtypes))}: prepared with vocabularies "
        f"of different sizes; prepare every shard with the same tokenizer"
      )
    self.parts = list(parts)
    self.dtype = dtypes.pop()
    self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)

  def __len__(self) -> int:
    return int(self.starts[-1])

  def __getitem__(self, key: slice) -> np.ndarray:
    if not isinstance(key, slice):
      raise TypeError("ConcatenatedTokens supports contiguous slices only")
    start, stop, step = key.indices(len(self))
    if step != 1:
      raise TypeError("ConcatenatedTokens supports contiguous slices only")
    pieces = []
    part = int(np.searchsorted(self.starts, start, side="right")) - 1
    while start < stop:
      base, end = int(self.starts[part]), int(self.starts[part + 1])
      hi = min(stop, end)
      pieces.append(np.asarray(self.parts[part][start - base : hi - base]))
      start = hi
      part += 1
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)

  def __reduce__(self):
    parts = []
    for p in self.parts:
      if isinstance(p, np.memmap) and p.filename and p.base is not None:
        parts.append((_open_memmap, (p.filename, p.dtype.str, p.offset, p.shape)))
      else:
        parts.append((np.asarray, (np.array(p),)))
    return (_rebuild_concatenated, (parts,))


def _rebuild_concatenated(parts: list) -> ConcatenatedTokens:
  return ConcatenatedTokens([fn(*args) for fn, args in parts])


def sharded_token_source(prefixes: Sequence[str], *, eos_id: int) -> TokenSource:
  """The shards' lines as one TokenSource: shard 0, a `</s>` separator line, shard 1, ...

  Each shard is checked against its `prepare_stats.json`; shards with no lines in this split
  add nothing (no separator either).
  """
  parts: list[np.ndarray] = []
  sizes: list[np.ndarray] = []
  for prefix in prefixes:
    ds = MMapIndexedDataset(prefix)
    check_prepare_stats(ds)
    source = ds.token_source()
    if not len(source):
      continue
    if parts:
      parts.append(np.array([eos_id], dtype=source.tokens.dtype))
      sizes.append(np.ones(1, dtype=np.int64))
    parts.append(source.tokens)
    sizes.append(source.sizes)
  if not parts:
    raise DataError(f"the shards {prefixes[0]} ... hold no lines; check the preparation")
  return TokenSource(tokens=ConcatenatedTokens(parts), sizes=np.concatenate(sizes))
