"""Tokenizers that produce fairseq dictionary ids, from local files only (no hub downloads).

* `BPETokenizer`: the released model's GPT-2 byte-level BPE (`vocab.json` + `merges.txt`) run by
  the `tokenizers` library. Two id conventions are supported:
    - Hugging Face RoBERTa/data2vec `vocab.json` (ids already fairseq ids: <s>=0 <pad>=1 </s>=2
      <unk>=3 ... <mask>=50264): used directly;
    - the original GPT-2 `vocab.json` (GPT-2 ids) together with fairseq's `dict.txt`, whose symbols
      are GPT-2 ids written as decimal strings: ids are mapped through the dictionary, as
      `fairseq-preprocess` does after `multiprocessing_bpe_encoder`.
* `SentencePieceTokenizer`: a sentencepiece model trained by `train_sentencepiece` with the fairseq
  special ids fixed (<s>=0 <pad>=1 </s>=2 <unk>=3) and `<mask>` as the LAST id, so spm ids are the
  model's ids and `vocab_size` is the embedding-table size.
* `TokenizersJsonTokenizer`: a `tokenizers` `tokenizer.json` whose ids are the model's (what a
  Hugging Face directory without `vocab.json`/`merges.txt` carries).

Every tokenizer names its `kind` and its source `files` (role -> path), so a model directory can
carry a copy (`data2vec_jax.weights.model_tokenizer`).

`encode(text)` returns the ids of the text without specials; `encode_line(text)` appends `</s>`,
which is how every fairseq sentence line is stored.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from data2vec_jax.data.dictionary import (
  BOS,
  EOS,
  MASK,
  PAD,
  SPECIAL_SYMBOLS,
  UNK,
  Dictionary,
  VocabInfo,
)
from data2vec_jax.data.sources import DataError

log = logging.getLogger(__name__)

# sentencepiece's default `max_sentence_length` (UTF-8 bytes): it skips longer training sentences.
SPM_MAX_SENTENCE_BYTES = 4192


class Tokenizer(Protocol):
  """What the data pipeline needs from a tokenizer."""

  vocab: VocabInfo
  kind: str  # 'bpe' | 'sentencepiece' | 'tokenizers_json'
  files: dict[str, str]  # role (load_tokenizer's keyword) -> path of the file read

  def encode(self, text: str) -> np.ndarray:  # int32 [n]
    ...

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


def encode_line(tokenizer: Tokenizer, text: str) -> np.ndarray:
  """Ids of one sentence line with the trailing `</s>` (int32 [n+1]), fairseq's stored form."""
  ids = tokenizer.encode(text)
  return np.append(ids, np.int32(tokenizer.vocab.eos_id)).astype(np.int32)


def _require_file(path: str | os.PathLike | None, what: str) -> str:
  if not path:
    raise DataError(f"{what} path is not set; give the file")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} not found: {path}")
  return path


class BPETokenizer:
  """GPT-2 byte-level BPE from local `vocab.json` + `merges.txt`, producing fairseq ids.

  `gpt2_to_fairseq` (int32 [n_bpe], or None for a RoBERTa-style vocab.json) maps a BPE token's
  GPT-2 id to its fairseq id, `<unk>` (3) for tokens the dictionary lacks.

  Args:
    vocab_json: path to `vocab.json` (token -> id).
    merges_txt: path to `merges.txt`.
    dict_txt: optional fairseq `dict.txt`. Give it when `vocab.json` holds GPT-2 ids (the original
      GPT-2 files); leave it out for a RoBERTa-style `vocab.json` whose ids are fairseq ids.
  """

  def __init__(
    self,
    vocab_json: str | os.PathLike,
    merges_txt: str | os.PathLike,
    dict_txt: str | os.PathLike | None = None,
  ) -> None:
    from tokenizers import (
      ByteLevelBPETokenizer,
    )  # local import: keeps `import data2vec_jax.data` light

    vocab_json = _require_file(vocab_json, "BPE vocab.json")
    merges_txt = _require_file(merges_txt, "BPE merges.txt")
    self.kind = "bpe"
    self.files = {"vocab_json": vocab_json, "merges_txt": merges_txt}
    with open(vocab_json, encoding="utf-8") as f:
      vocab: dict[str, int] = json.load(f)
    self.bpe_vocab = vocab
    # add_prefix_space=False and the GPT-2 regex pre-tokenizer: identical to RobertaTokenizer,
    # which never adds a leading space. trim_offsets only affects offsets, not ids.
    self._tok = ByteLevelBPETokenizer(vocab_json, merges_txt, add_prefix_space=False)
    self._lut: np.ndarray | None = None
    if dict_txt is not None:
      self.files["dict_txt"] = _require_file(dict_txt, "fairseq dict.txt")
      self.dictionary = Dictionary.load(self.files["dict_txt"])
      # GPT-2 id -> fairseq id, through the decimal-string symbols of dict.txt.
      n = max(vocab.values()) + 1
      self._lut = np.array([self.dictionary.index(str(i)) for i in range(n)], dtype=np.int32)
      self.vocab = self.dictionary.vocab_info()
    else:
      self.vocab, self.dictionary = _roberta_vocabulary(vocab_json, vocab)

  @property
  def gpt2_to_fairseq(self) -> np.ndarray | None:
    return self._lut

  def _map(self, ids: Sequence[int]) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int32)
    return self._lut[arr] if self._lut is not None else arr

  def encode(self, text: str) -> np.ndarray:
    """Fairseq ids of `text` (int32 [n]), no `<s>`/`</s>`."""
    return self._map(self._tok.encode(text, add_special_tokens=False).ids)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """`encode` for many texts; the Rust side parallelises (TOKENIZERS_PARALLELISM)."""
    return [self._map(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    if self._lut is not None:
      inverse = {int(f): g for g, f in enumerate(self._lut)}
      ids = [inverse.get(int(i), 0) for i in ids]
    return self._tok.decode([int(i) for i in ids])


def _roberta_vocabulary(vocab_json: str, vocab: dict[str, int]) -> tuple[VocabInfo, Dictionary]:
  """The vocabulary facts and fairseq Dictionary of a RoBERTa-style `vocab.json` (token -> id),
  whose ids already are fairseq ids; `DataError` where they are not."""
  missing = [s for i, s in enumerate(SPECIAL_SYMBOLS) if vocab.get(s) != i]
  if missing:
    raise DataError(
      f"{vocab_json}: expected fairseq special ids <s>=0 <pad>=1 </s>=2 <unk>=3 in a "
      f"RoBERTa-style vocab.json, but {missing} differ; for original GPT-2 files pass "
      f"the fairseq dict.txt as dict_txt"
    )
  ids = sorted(vocab.values())
  if ids != list(range(len(ids))):
    raise DataError(f"{vocab_json}: ids are not contiguous 0..{len(ids) - 1}")
  # fairseq appends <mask> after the dictionary; HF RoBERTa vocab.json already contains it.
  mask_id = vocab.get(MASK, len(vocab))
  info = VocabInfo(
    vocab_size=max(len(vocab), mask_id + 1),
    pad_id=1,
    bos_id=0,
    eos_id=2,
    unk_id=3,
    mask_id=mask_id,
  )
  dictionary = Dictionary.from_symbols(
    [s for s, _ in sorted(vocab.items(), key=lambda kv: kv[1])[len(SPECIAL_SYMBOLS) :] if s != MASK]
  )
  if dictionary.mask_index != mask_id:
    raise DataError(
      f"{vocab_json}: <mask> must be the last id to match fairseq "
      f"(found {mask_id}, vocabulary has {len(vocab)} entries)"
    )
  return info, dictionary


class SentencePieceTokenizer:
  """A sentencepiece model whose ids are the model's ids (see `train_sentencepiece`)."""

  def __init__(self, model_file: str | os.PathLike) -> None:
    import sentencepiece as spm

    model_file = _require_file(model_file, "sentencepiece model")
    self.kind = "sentencepiece"
    self.files = {"sentencepiece_model": model_file}
    self._sp = spm.SentencePieceProcessor(model_file=model_file)
    ids = {s: self._sp.piece_to_id(s) for s in (*SPECIAL_SYMBOLS, MASK)}
    expected = {BOS: 0, PAD: 1, EOS: 2, UNK: 3, MASK: self._sp.get_piece_size() - 1}
    if ids != expected:
      raise DataError(
        f"{model_file}: special ids {ids} differ from the fairseq layout {expected}; "
        f"train it with data2vec_jax.data.tokenizer.train_sentencepiece"
      )
    self.vocab = VocabInfo(
      vocab_size=self._sp.get_piece_size(),
      pad_id=1,
      bos_id=0,
      eos_id=2,
      unk_id=3,
      mask_id=ids[MASK],
    )

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(x, dtype=np.int32) for x in self._sp.encode(list(texts))]

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def pieces(self) -> list[str]:
    return [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]


class TokenizersJsonTokenizer:
  """A `tokenizers` `tokenizer.json` whose ids are the model's, fairseq's special layout
  (<s>=0 <pad>=1 </s>=2 <unk>=3, a `<mask>` token). Specials it would add (its post-processor)
  are left out: `encode` returns the text's ids only, like the other tokenizers."""

  def __init__(self, tokenizer_json: str | os.PathLike) -> None:
    from tokenizers import Tokenizer as RustTokenizer

    tokenizer_json = _require_file(tokenizer_json, "tokenizer.json")
    self.kind = "tokenizers_json"
    self.files = {"tokenizer_json": tokenizer_json}
    self._tok = RustTokenizer.from_file(tokenizer_json)
    ids = {s: self._tok.token_to_id(s) for s in (*SPECIAL_SYMBOLS, MASK)}
    if [ids[s] for s in SPECIAL_SYMBOLS] != [0, 1, 2, 3] or ids[MASK] is None:
      raise DataError(
        f"{tokenizer_json}: special ids {ids} are not fairseq's layout (<s>=0 <pad>=1 </s>=2 "
        "<unk>=3 and a <mask> token); it is not a data2vec/RoBERTa tokenizer"
      )
    self.vocab = VocabInfo(
      vocab_size=self._tok.get_vocab_size(with_added_tokens=True), mask_id=ids[MASK]
    )

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [
      np.asarray(e.ids, dtype=np.int32)
      for e in self._tok.encode_batch(list(texts), add_special_tokens=False)
    ]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids])


def train_sentencepiece(
  sentences: Iterable[str],
  model_path: str | os.PathLike,
  *,
  vocab_size: int,
  model_type: str = "unigram",
  character_coverage: float = 0.9995,
  byte_fallback: bool = False,
  max_sentences: int = 2_000_000,
  seed_sentencepiece_size: int = 1_000_000,
  num_threads: int = 2,
) -> SentencePieceTokenizer:
  """Train a sentencepiece model with fairseq's special-id layout and write it to `model_path`.

  Layout of the resulting model (`vocab_size` pieces in total):
      0 <s> (control), 1 <pad> (control), 2 </s> (control), 3 <unk>,
      4 .. vocab_size-2 learned pieces,
      vocab_size-1 <mask> (user-defined, so the literal text "<mask>" also encodes to it).
  sentencepiece always numbers user-defined symbols right after the specials, so we train
  `vocab_size-1` pieces and then append `<mask>` to the model proto; that keeps `<mask>` last,
  as fairseq's `add_symbol` does for the released models, without shifting any learned id.

  Args:
    sentences: one sentence per item (no newlines needed); consumed once, at most `max_sentences`.
    model_path: output `.model` file.
    vocab_size: total number of ids, `<mask>` included (the embedding-table size).

  Sentences longer than sentencepiece's limit (`SPM_MAX_SENTENCE_BYTES`) are left out of training,
  as sentencepiece does, but counted: how many is logged, and a `DataError` is raised before
  sentencepiece runs when no sentence is left.
  """
  import sentencepiece as spm

  _check_sentencepiece_settings(vocab_size, model_type)
  feed = _TrainingSentences(sentences, max_sentences)
  sentence_iterator = feed.checked()  # the corpus is checked before sentencepiece sees it
  buf = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=sentence_iterator,
      model_writer=buf,
      vocab_size=vocab_size - 1,
      model_type=model_type,
      character_coverage=character_coverage,
      byte_fallback=byte_fallback,
      # sentencepiece rejects sizes 1..100; 0 (no sampling) is the same, as we cap the count.
      input_sentence_size=max_sentences if max_sentences > 100 else 0,
      seed_sentencepiece_size=seed_sentencepiece_size,
      num_threads=num_threads,
      **_SENTENCEPIECE_FIXED_OPTIONS,
    )
  except RuntimeError as e:
    if feed.error is not None:
      raise feed.error from None
    explained = _explained_training_error(str(e).strip(), vocab_size, model_type)
    if explained is None:
      raise
    raise explained from e
  feed.warn_if_any_skipped()
  return _save_with_mask_last(buf.getvalue(), model_path)


# The options of every training: fairseq's special ids, sampled and shuffled input, exact size.
_SENTENCEPIECE_FIXED_OPTIONS = dict(
  bos_id=0,
  pad_id=1,
  eos_id=2,
  unk_id=3,
  bos_piece=BOS,
  pad_piece=PAD,
  eos_piece=EOS,
  unk_piece=UNK,
  shuffle_input_sentence=True,
  hard_vocab_limit=True,
  minloglevel=2,
)


def _check_sentencepiece_settings(vocab_size: int, model_type: str) -> None:
  if vocab_size < 8:
    raise DataError(
      f"vocab_size={vocab_size} is too small; use at least 8 (4 specials, <mask>, pieces)"
    )
  if model_type not in ("unigram", "bpe", "char", "word"):
    raise DataError(
      f"unknown sentencepiece model_type {model_type!r}; use unigram, bpe, char or word"
    )


class _TrainingSentences:
  """The sentences sentencepiece is fed: stripped, non-blank ones of the first `max_sentences`.

  sentencepiece silently skips sentences over its byte limit, then dies with an opaque
  `!sentences_.empty()` when none is left, so they are counted (`read`, `too_long`) and left out
  here. sentencepiece also turns an error of its input iterator into RuntimeError("INTERNAL:
  ..."), losing its type (a DataError naming a bad line); it is kept in `error` to re-raise.
  """

  def __init__(self, sentences: Iterable[str], max_sentences: int) -> None:
    self.read = 0
    self.too_long = 0
    self.error: BaseException | None = None
    self._usable = self._filter(sentences, max_sentences)

  def _filter(self, sentences: Iterable[str], max_sentences: int) -> Iterator[str]:
    try:
      for i, s in enumerate(sentences):
        if i >= max_sentences:
          break
        s = s.strip()
        if not s:
          continue
        self.read += 1
        if len(s.encode("utf-8")) > SPM_MAX_SENTENCE_BYTES:
          self.too_long += 1
          continue
        yield s
    except (Exception, KeyboardInterrupt) as e:
      self.error = e
      raise

  def checked(self) -> Iterator[str]:
    """The usable sentences; `DataError` now, before any training, when there is none."""
    first = next(self._usable, None)
    if first is None:
      raise DataError(
        f"no usable sentence to train sentencepiece on: {self.read} non-blank line(s) read, "
        f"{self.too_long} skipped as longer than sentencepiece's max_sentence_length of "
        f"{SPM_MAX_SENTENCE_BYTES} bytes; give a UTF-8 corpus with one sentence per line "
        f"(split longer lines)"
      )
    return itertools.chain([first], self._usable)

  def warn_if_any_skipped(self) -> None:
    if self.too_long:
      log.warning(
        "sentencepiece was trained without %d of %d sentences longer than %d bytes "
        "(max_sentence_length); split long lines to learn from them",
        self.too_long,
        self.read,
        SPM_MAX_SENTENCE_BYTES,
      )


def _explained_training_error(msg: str, vocab_size: int, model_type: str) -> DataError | None:
  """A `DataError` saying what to change for sentencepiece's error `msg`, where it is a known
  limit of the corpus; None for any other error."""
  if "Vocabulary size too high" in msg:
    return DataError(
      f"the corpus is too small for a {model_type} vocabulary of {vocab_size} "
      f"(sentencepiece: {msg}); use a smaller vocab_size or model_type='bpe'"
    )
  if "smaller than required_chars" in msg:
    return DataError(
      f"vocab_size={vocab_size} cannot hold the corpus's characters (sentencepiece: "
      f"{msg}); use a larger vocab_size or a lower character_coverage"
    )
  return None


def _save_with_mask_last(
  model_proto: bytes, model_path: str | os.PathLike
) -> SentencePieceTokenizer:
  """Write the trained model (serialized ModelProto) to `model_path` with `<mask>` appended as
  its last, user-defined piece; the tokenizer that reads it back."""
  from sentencepiece import sentencepiece_model_pb2 as spm_pb2

  proto = spm_pb2.ModelProto()
  proto.ParseFromString(model_proto)
  piece = proto.pieces.add()
  piece.piece = MASK
  piece.score = 0.0
  piece.type = spm_pb2.ModelProto.SentencePiece.USER_DEFINED
  model_path = os.fspath(model_path)
  os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
  with open(model_path, "wb") as f:
    f.write(proto.SerializeToString())
  return SentencePieceTokenizer(model_path)


def sentencepiece_dictionary(
  tok: SentencePieceTokenizer, counts: np.ndarray | None = None
) -> Dictionary:
  """fairseq Dictionary whose ids equal the spm ids (pieces 4..V-2 in order, `<mask>` appended)."""
  pieces = tok.pieces()[len(SPECIAL_SYMBOLS) : -1]
  c = None if counts is None else [int(x) for x in counts[len(SPECIAL_SYMBOLS) : -1]]
  d = Dictionary.from_symbols(pieces, c)
  assert d.mask_index == tok.vocab.mask_id
  return d


def load_tokenizer(
  kind: str,
  *,
  vocab_json: str | None = None,
  merges_txt: str | None = None,
  dict_txt: str | None = None,
  sentencepiece_model: str | None = None,
  tokenizer_json: str | None = None,
) -> Tokenizer:
  """Build a tokenizer from config values: kind is 'bpe', 'sentencepiece' or 'tokenizers_json'
  (the keywords are the tokenizers' `files` roles)."""
  if kind == "bpe":
    return BPETokenizer(vocab_json, merges_txt, dict_txt)
  if kind == "sentencepiece":
    return SentencePieceTokenizer(sentencepiece_model)
  if kind == "tokenizers_json":
    return TokenizersJsonTokenizer(tokenizer_json)
  raise ValueError(
    f"unknown tokenizer {kind!r}; expected 'bpe', 'sentencepiece' or 'tokenizers_json'"
  )
