"""Corpus sources and the token store every block layout is computed from.

Everything is reduced to fairseq's binarized layout, a `TokenSource`:

* `tokens`: one flat integer array with every sentence line back to back (np.ndarray or a
  read-only np.memmap of a `.bin` file);
* `sizes`: int64 [num_lines], the length of each line. Every line ends with `</s>`; a document
  boundary is an empty line, i.e. a line of size 1 holding only `</s>` -- exactly what
  `fairseq-preprocess` produces from raw text with blank lines between documents, and what
  `TokenBlockDataset(break_mode='complete_doc')` looks for (`document_sep_len=1`).

Sources of documents (a document = a list of sentence strings):
* plain text files in fairseq's raw layout (one sentence per line, blank line between documents);
* TFDS through `tfds.data_source` (ArrayRecord, no TensorFlow needed);
and of tokens:
* fairseq `MMapIndexedDataset` `.bin`/`.idx` pairs, read with np.memmap (`MMapIndexedDataset`),
  written by `MMapIndexedDatasetBuilder`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import struct
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

Document = list[str]  # one sentence (or paragraph) per item

# Written by `python -m data2vec_jax.data.prepare` next to its `.bin/.idx` outputs; read back by
# `check_prepare_stats` when the data is loaded.
PREPARE_STATS_FILE = "prepare_stats.json"


class DataError(ValueError):
  """A problem with the user's corpus, files or data settings that the user can fix.

  The message is one line naming the problem and the fix, so command-line tools print it as is
  instead of a traceback. A ValueError, so callers that catch ValueError keep working.
  """


# ----------------------------------------------------------------------------------------------
# Text documents
# ----------------------------------------------------------------------------------------------


def expand_paths(path: str | Sequence[str]) -> list[str]:
  """Files named by `path`: a path, a glob, a comma-separated list, or a sequence of those."""
  items = [path] if isinstance(path, str) else list(path)
  out: list[str] = []
  for item in items:
    for part in str(item).split(","):
      part = part.strip()
      if not part:
        continue
      matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
      if not matches:
        raise FileNotFoundError(f"no file matches {part!r}")
      for m in matches:
        if not os.path.isfile(m):
          raise FileNotFoundError(f"text corpus file not found: {m}")
        out.append(m)
  if not out:
    raise DataError(
      f"no text files given (path={path!r}); name at least one file, glob or comma list"
    )
  return out


# A lone carriage return ends a line too (old Mac files), as in the universal-newline text mode
# the corpus used to be read with: decoding from bytes must not merge such lines.
_LONE_CR = re.compile(r"\r(?!\n)")


def _text_lines(fname: str) -> Iterator[str]:
  """The lines of a UTF-8 text file, decoded one at a time so an error can name its exact place."""
  offset = 0  # byte offset of the current line in the file
  with open(fname, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      # A NUL never occurs in text; without this check a UTF-16 file (ASCII + NULs is valid
      # UTF-8) or a binary file would be tokenized into garbage without any error.
      nul = raw.find(b"\0")
      if nul >= 0:
        raise DataError(
          f"{fname}: line {lineno} has a NUL byte at byte offset {offset + nul}: a binary "
          f"or UTF-16 file is not a text corpus; convert it to UTF-8 text (e.g. "
          f"`iconv -f UTF-16 -t UTF-8`)"
        )
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(
          f"{fname}: line {lineno} is not valid UTF-8 ({e.reason}: "
          f"{raw[e.start : e.end]!r} at byte offset {offset + e.start}); re-encode the "
          f"file as UTF-8 (e.g. `iconv -f latin1 -t UTF-8`)"
        ) from None
      yield from _LONE_CR.split(text) if "\r" in text else (text,)
      offset += len(raw)


def read_text_documents(path: str | Sequence[str]) -> Iterator[Document]:
  """Documents of fairseq-raw text files: one sentence per line, blank line(s) between documents.

  Lines are stripped of surrounding whitespace; runs of blank lines count as one boundary, and
  each file ends a document (files never share a document). Streams: one document in memory.
  Files must be UTF-8 text: a `DataError` names the file, line and byte offset of invalid
  UTF-8 or of a NUL byte (a binary or UTF-16 file).
  """
  for fname in expand_paths(path):
    doc: Document = []
    for line in _text_lines(fname):
      line = line.strip()
      if line:
        doc.append(line)
      elif doc:
        yield doc
        doc = []
    if doc:
      yield doc


# A deliberately simple splitter: break after . ! ? (optionally followed by a closing quote or
# bracket) when whitespace and an upper-case letter, digit or opening quote follow. Good enough for
# prose; it is only used to make sentence lines, and a missed split just makes a longer line.
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|Mr|Mrs|Dr|St|cf|Fig|No|al)\.|\b[A-Z]\.)$")


def split_sentences(text: str) -> list[str]:
  """Split a paragraph into sentences (whitespace collapsed; abbreviations like 'e.g.' kept)."""
  text = " ".join(text.split())
  if not text:
    return []
  out: list[str] = []
  start = 0
  for m in _SENT_END.finditer(text):
    if _ABBREV.search(text[: m.start()]):  # "e.g. Foo" is not a sentence end
      continue
    if text[start : m.start()].strip():
      out.append(text[start : m.end()].strip())
      start = m.end()
  if text[start:].strip():
    out.append(text[start:].strip())
  return out


def text_to_document(text: str | bytes, *, sentence_split: bool = False) -> Document:
  """A TFDS-style text field -> a document: one item per non-empty line (paragraph), optionally
  split further into sentences."""
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  lines = [ln.strip() for ln in text.split("\n")]
  lines = [ln for ln in lines if ln]
  if not sentence_split:
    return lines
  return [s for ln in lines for s in split_sentences(ln)]


def tfds_documents(
  name: str,
  *,
  split: str = "train",
  data_dir: str | None = None,
  text_feature: str = "text",
  sentence_split: bool = False,
  max_documents: int | None = None,
  shard_index: int = 0,
  shard_count: int = 1,
) -> Iterator[Document]:
  """Documents of a TFDS dataset via `tfds.data_source` (ArrayRecord; TensorFlow not needed).

  Each example's `text_feature` (str or bytes) is one document; its lines become sentence lines.
  `shard_index/shard_count` take every shard_count-th example (for parallel preparation).
  """
  import tensorflow_datasets as tfds

  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, try_gcs=False)
  except Exception as e:  # noqa: BLE001 -- tfds raises many types; re-raise with the context
    raise RuntimeError(
      f"could not open TFDS dataset {name!r} split {split!r} (data_dir={data_dir!r}) with "
      f"tfds.data_source; it must already be prepared in ArrayRecord format "
      f"(file_format='array_record'); nothing is downloaded at run time"
    ) from e
  n = len(source)
  if max_documents is not None:
    n = min(n, max_documents)
  for i in range(shard_index, n, shard_count):
    example = source[i]
    if text_feature not in example:
      raise KeyError(f"TFDS {name}: feature {text_feature!r} not in example keys {sorted(example)}")
    doc = text_to_document(example[text_feature], sentence_split=sentence_split)
    if doc:
      yield doc


# ----------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TokenSource:
  """fairseq-binarized tokens: `tokens` (flat int array, any integer dtype, possibly a memmap,
  or the memmaps of several shards as one `shards.ConcatenatedTokens`) and `sizes` (int64
  [num_lines]); line i is tokens[offsets[i]:offsets[i]+sizes[i]].

  Lines end with `</s>`; a size-1 line is a document separator.
  """

  tokens: np.ndarray
  sizes: np.ndarray

  def __post_init__(self) -> None:
    self.sizes = np.asarray(self.sizes, dtype=np.int64)
    if self.sizes.ndim != 1 or (self.sizes < 0).any():
      raise ValueError("sizes must be a 1-D array of non-negative lengths")
    if int(self.sizes.sum()) != len(self.tokens):
      raise ValueError(
        f"sizes sum to {int(self.sizes.sum())} but there are {len(self.tokens)} tokens"
      )

  def __reduce__(self):
    """A memory-mapped corpus pickles as its file, not its bytes (input workers, workers.py)."""
    tokens = self.tokens
    if not isinstance(tokens, np.ndarray):  # shards.ConcatenatedTokens pickles itself
      return (TokenSource, (tokens, self.sizes))
    if isinstance(tokens, np.memmap) and tokens.filename and tokens.base is not None:
      where = (tokens.filename, tokens.dtype.str, tokens.offset, tokens.shape)
      return (_token_source_from_file, (*where, self.sizes))
    return (TokenSource, (np.asarray(tokens), self.sizes))

  @property
  def num_tokens(self) -> int:
    return len(self.tokens)

  def __len__(self) -> int:
    return len(self.sizes)


def _token_source_from_file(
  filename: str, dtype: str, offset: int, shape: tuple[int, ...], sizes: np.ndarray
) -> TokenSource:
  tokens = np.memmap(filename, mode="r", dtype=np.dtype(dtype), offset=offset, shape=shape)
  return TokenSource(tokens, sizes)


def tokenize_documents(
  documents: Iterable[Document],
  encode_lines: Callable[[list[str]], list[np.ndarray]],
  *,
  eos_id: int,
  max_documents: int | None = None,
) -> TokenSource:
  """Tokenize documents into an in-memory TokenSource (for small corpora; use `prepare` to
  binarize big ones). `encode_lines` maps sentences -> id arrays without `</s>`; `</s>` is added
  to every line and an `[</s>]` line separates documents, as fairseq-preprocess does for raw text."""
  chunks: list[np.ndarray] = []
  sizes: list[int] = []
  eos = np.array([eos_id], dtype=np.int32)
  for d, doc in enumerate(documents):
    if max_documents is not None and d >= max_documents:
      break
    if d > 0:
      chunks.append(eos)  # blank line between documents -> a line holding only </s>
      sizes.append(1)
    for ids in encode_lines(doc):
      chunks.append(np.asarray(ids, dtype=np.int32))
      chunks.append(eos)
      sizes.append(len(ids) + 1)
  if not sizes:
    raise DataError(
      "the corpus is empty: no non-blank lines were found; check data.path and the files"
    )
  return TokenSource(tokens=np.concatenate(chunks).astype(np.int32), sizes=np.asarray(sizes))


# ----------------------------------------------------------------------------------------------
# fairseq MMapIndexedDataset (.bin + .idx)
# ----------------------------------------------------------------------------------------------

_HDR_MAGIC = b"MMIDIDX\x00\x00"
_VERSION = 1
# fairseq's `_code_to_dtype` (fairseq/data/indexed_dataset.py); codes 6/7 are floats and are
# rejected for token data.
_CODE_TO_DTYPE: dict[int, Any] = {
  1: np.uint8,
  2: np.int8,
  3: np.int16,
  4: np.int32,
  5: np.int64,
  6: np.float64,
  7: np.float64,
  8: np.uint16,
  9: np.uint32,
  10: np.uint64,
}
_DTYPE_TO_CODE = {
  np.dtype(np.uint8): 1,
  np.dtype(np.int8): 2,
  np.dtype(np.int16): 3,
  np.dtype(np.int32): 4,
  np.dtype(np.int64): 5,
  np.dtype(np.uint16): 8,
  np.dtype(np.uint32): 9,
  np.dtype(np.uint64): 10,
}
_HEADER_LEN = len(_HDR_MAGIC) + 8 + 1 + 8  # magic, version <Q, dtype code <B, length <Q


def best_fitting_dtype(vocab_size: int) -> np.dtype:
  """fairseq's `best_fitting_int_dtype`: uint16 below 65500 ids, else int32."""
  return (
    np.dtype(np.uint16) if vocab_size is not None and vocab_size < 65500 else np.dtype(np.int32)
  )


def index_file_path(prefix: str) -> str:
  return prefix + ".idx"


def data_file_path(prefix: str) -> str:
  return prefix + ".bin"


class MMapIndexedDatasetBuilder:
  """Writes fairseq's MMapIndexedDataset: `<prefix>.bin` (raw tokens) + `<prefix>.idx`.

  `.idx` layout (little endian), as fairseq's `MMapIndexedDataset.Index.writer`:
      magic b'MMIDIDX\\x00\\x00' | version <Q =1 | dtype code <B | N <Q |
      sizes int32[N] | pointers int64[N] (byte offset of each item in .bin)
  Items are streamed to `.bin` one at a time; only the sizes are kept in memory.
  Use as a context manager or call `finalize()`.
  """

  def __init__(self, prefix: str, dtype: np.dtype | type = np.uint16) -> None:
    self.prefix = prefix
    self.dtype = np.dtype(dtype)
    if self.dtype not in _DTYPE_TO_CODE:
      raise ValueError(f"unsupported token dtype {self.dtype}")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    self._bin = open(data_file_path(prefix), "wb")
    self._sizes: list[int] = []
    self._max_id = np.iinfo(self.dtype).max

  def add_item(self, ids: np.ndarray | Sequence[int]) -> None:
    arr = np.asarray(ids)
    if arr.size and (int(arr.max()) > self._max_id or int(arr.min()) < 0):
      raise ValueError(f"token id out of range for {self.dtype}: [{arr.min()}, {arr.max()}]")
    self._bin.write(arr.astype(self.dtype).tobytes(order="C"))
    self._sizes.append(int(arr.size))

  def add_items(self, tokens: np.ndarray, sizes: np.ndarray) -> None:
    """Add len(sizes) items at once: `tokens` holds them back to back (sizes sum to its length).
    One range check and one write for all of them (`prepare` adds a chunk of lines at a time)."""
    tokens, sizes = np.asarray(tokens), np.asarray(sizes, dtype=np.int64)
    if int(sizes.sum()) != tokens.size:
      raise ValueError(f"sizes sum to {int(sizes.sum())} but {tokens.size} tokens were given")
    if tokens.size and (int(tokens.max()) > self._max_id or int(tokens.min()) < 0):
      raise ValueError(f"token id out of range for {self.dtype}: [{tokens.min()}, {tokens.max()}]")
    self._bin.write(tokens.astype(self.dtype).tobytes(order="C"))
    self._sizes.extend(sizes.tolist())

  def finalize(self) -> None:
    self._bin.close()
    sizes = np.asarray(self._sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
      pointers[1:] = np.cumsum(sizes[:-1].astype(np.int64)) * self.dtype.itemsize
    with open(index_file_path(self.prefix), "wb") as f:
      f.write(_HDR_MAGIC)
      f.write(struct.pack("<Q", _VERSION))
      f.write(struct.pack("<B", _DTYPE_TO_CODE[self.dtype]))
      f.write(struct.pack("<Q", len(sizes)))
      f.write(sizes.tobytes(order="C"))
      f.write(pointers.tobytes(order="C"))

  def __enter__(self) -> "MMapIndexedDatasetBuilder":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.finalize()
    else:
      self._bin.close()


class MMapIndexedDataset:
  """Reader for fairseq's MMapIndexedDataset (`.bin` memory-mapped, nothing loaded eagerly).

  `ds[i]` -> int64 array of item i (fairseq returns int64 tensors); `ds.sizes` int32 [N];
  `ds.token_source()` -> a TokenSource over the whole `.bin` (requires contiguous items, which
  every fairseq/our writer produces).
  """

  def __init__(self, prefix: str) -> None:
    idx_path, bin_path = index_file_path(prefix), data_file_path(prefix)
    for p in (idx_path, bin_path):
      if not os.path.isfile(p):
        raise FileNotFoundError(
          f"fairseq binarized dataset file not found: {p} "
          f"(data.path must be the prefix without .bin/.idx)"
        )
    with open(idx_path, "rb") as f:
      header = f.read(_HEADER_LEN)
    if len(header) < _HEADER_LEN or header[: len(_HDR_MAGIC)] != _HDR_MAGIC:
      raise ValueError(
        f"{idx_path}: not a fairseq MMapIndexedDataset index (magic "
        f"{header[: len(_HDR_MAGIC)]!r}, expected {_HDR_MAGIC!r}); legacy "
        f"'cached'/'lazy' indexed datasets are not supported"
      )
    (version,) = struct.unpack("<Q", header[9:17])
    if version != _VERSION:
      raise ValueError(f"{idx_path}: unsupported index version {version} (expected {_VERSION})")
    (code,) = struct.unpack("<B", header[17:18])
    if code not in _CODE_TO_DTYPE or code in (6, 7):
      raise ValueError(f"{idx_path}: dtype code {code} is not an integer token dtype")
    self.dtype = np.dtype(_CODE_TO_DTYPE[code])
    (n,) = struct.unpack("<Q", header[18:26])
    expected = _HEADER_LEN + n * (4 + 8)
    actual = os.path.getsize(idx_path)
    if actual != expected:
      hint = (
        " (it looks like a Megatron-LM index with a doc_idx array, which this reader "
        "does not support)"
        if actual > expected
        else ""
      )
      raise ValueError(f"{idx_path}: size {actual} bytes, expected {expected} for {n} items{hint}")
    idx = np.memmap(idx_path, mode="r", dtype=np.uint8)
    self.sizes = np.frombuffer(idx, dtype=np.int32, count=n, offset=_HEADER_LEN)
    self.pointers = np.frombuffer(idx, dtype=np.int64, count=n, offset=_HEADER_LEN + 4 * n)
    total = int(self.sizes.astype(np.int64).sum())
    bin_bytes = os.path.getsize(bin_path)
    if bin_bytes < total * self.dtype.itemsize:
      raise ValueError(
        f"{bin_path}: {bin_bytes} bytes, but the index describes {total * self.dtype.itemsize}"
      )
    # np.memmap of an empty file fails; an empty dataset has no tokens to map anyway.
    self._bin = (
      np.memmap(bin_path, mode="r", dtype=self.dtype, shape=(total,))
      if total
      else np.zeros(0, dtype=self.dtype)
    )
    self.prefix = prefix

  def __len__(self) -> int:
    return len(self.sizes)

  def __getitem__(self, i: int) -> np.ndarray:
    start = int(self.pointers[i]) // self.dtype.itemsize
    return np.asarray(self._bin[start : start + int(self.sizes[i])], dtype=np.int64)

  def token_source(self) -> TokenSource:
    sizes = self.sizes.astype(np.int64)
    expected = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
      expected[1:] = np.cumsum(sizes[:-1]) * self.dtype.itemsize
    if not np.array_equal(expected, self.pointers):
      raise ValueError(
        f"{self.prefix}: items are not stored contiguously in .bin; "
        f"re-binarize it with `python -m data2vec_jax.data.prepare`"
      )
    return TokenSource(tokens=self._bin, sizes=sizes)


def check_prepare_stats(ds: MMapIndexedDataset) -> None:
  """Check `ds` against the `prepare_stats.json` written next to it, when that file describes it.

  A partial `.bin/.idx` (an interrupted copy, or outputs of two preparations mixed in one folder)
  is otherwise a valid dataset: training would run on a fraction of the corpus without any error.
  The split is found by the basename of its recorded "prefix" or by its split name; a folder
  without stats (data binarized by fairseq-preprocess) or stats not naming this split pass.
  """
  stats_path = os.path.join(os.path.dirname(os.path.abspath(ds.prefix)), PREPARE_STATS_FILE)
  if not os.path.isfile(stats_path):
    return
  try:
    with open(stats_path, encoding="utf-8") as f:
      splits = json.load(f)["splits"]
    name = os.path.basename(ds.prefix)
    recorded = next(
      (
        s
        for split, s in splits.items()
        if split == name or os.path.basename(s.get("prefix", "")) == name
      ),
      None,
    )
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise DataError(
      f"{stats_path} is not a readable prepare_stats.json ({e!r}); re-run "
      f"`python -m data2vec_jax.data.prepare` or delete it"
    ) from None
  if recorded is None:
    return
  found = {
    "lines": len(ds.sizes),
    "tokens": int(ds.sizes.astype(np.int64).sum()),
    "bin_bytes": os.path.getsize(data_file_path(ds.prefix)),
  }
  # Stats written before "bin_bytes" was recorded are checked on lines and tokens only.
  keys = [k for k in found if k in recorded]
  if any(found[k] != recorded[k] for k in keys):
    show = lambda d: ", ".join(f"{d[k]} {k.replace('_', ' ')}" for k in keys)  # noqa: E731
    raise DataError(
      f"{ds.prefix}: the dataset has {show(found)} but {stats_path} records "
      f"{show(recorded)} (a partial or mixed preparation); re-run "
      f"`python -m data2vec_jax.data.prepare` into {os.path.dirname(stats_path)}"
    )


def write_token_source(
  source: TokenSource, prefix: str, dtype: np.dtype | type = np.uint16
) -> None:
  """Binarize an in-memory TokenSource (used by tests and small corpora)."""
  offsets = np.concatenate([[0], np.cumsum(source.sizes)])
  with MMapIndexedDatasetBuilder(prefix, dtype) as b:
    for i in range(len(source.sizes)):
      b.add_item(source.tokens[offsets[i] : offsets[i + 1]])
