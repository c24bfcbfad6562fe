"""Binarize a corpus for pretraining: tokenizer + fairseq-style `.bin/.idx` + `dict.txt`.

    python -m data2vec_jax.data.prepare --source offline --tokenizer sentencepiece \\
        --spm_vocab_size 8000 --output_dir /tmp/d2v_data
    python -m data2vec_jax.data.prepare --source text --path 'corpus/*.txt' --tokenizer bpe \\
        --vocab_json vocab.json --merges_txt merges.txt --output_dir out
    python -m data2vec_jax.data.prepare --source tfds --tfds_name wikipedia/20230601.en \\
        --tfds_data_dir ~/tensorflow_datasets --tokenizer sentencepiece --spm_vocab_size 32000 ...

Writes into --output_dir:
    train.bin/.idx (and valid.bin/.idx with --valid_every K: every K-th document goes there),
    dict.txt (fairseq format; ids = tokenizer ids, `<mask>` re-appended at load time),
    spm.model (when a sentencepiece model is trained), prepare_stats.json.
Then train with data.source='fairseq_bin', data.path='<output_dir>/train'.

In parallel (README "Preparing a corpus in parallel / on a pod"):
    --workers N    N processes encode (the tokenizer is the cost: ~250k tokens/s per core);
                   the output is byte-identical whatever N.
    --shard i --num_shards n
                   this run prepares every n-th document from the i-th on (document index in
                   the source's order; --valid_every picks by the same index, so the shards'
                   valid splits together are the unsharded one) into
                   <output_dir>/shard-0000i-of-0000n/. Training reads data.path=<output_dir>/train
                   as one corpus of all n shards (data/shards.py). All shards must use one
                   tokenizer: with sentencepiece, train it once with --train_tokenizer_only
                   (writes <output_dir>/spm.model, dict.txt and prepare_stats.json) and give it
                   to every shard with --sentencepiece_model; a sharded run does not train one.

The outputs are written into a temporary folder inside --output_dir and renamed into place only
when the whole preparation succeeded (prepare_stats.json last): a failed run leaves the previous
outputs untouched. The temporary folder's name records its owner (pid, process start time and
host); a run removes the ones left by killed runs, and says so (`remove_stale_work_dirs`).
Loading checks each split against prepare_stats.json (lines, tokens, .bin size).
Errors in the input (missing files, an empty corpus, invalid UTF-8, sentencepiece limits) end the
command with one line `prepare: error: ...` and exit status 1.

The corpus is streamed: only one chunk of documents and the per-line sizes are held in memory.
Sentencepiece training reads the first --spm_max_sentences sentences (a second pass over the source).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import resource
import shutil
import socket
import sys
import tempfile
import time
from typing import Callable, Iterable, Iterator

import numpy as np

from data2vec_jax.data import sources
from data2vec_jax.data.dictionary import VocabInfo
from data2vec_jax.data.shards import shard_dir_name
from data2vec_jax.data.tokenizer import (
  BPETokenizer,
  SentencePieceTokenizer,
  Tokenizer,
  load_tokenizer,
  sentencepiece_dictionary,
  train_sentencepiece,
)

WORK_DIR_PREFIX = ".prepare-tmp-"
# A work folder whose owner cannot be checked (another host, or written by a version that did
# not record its owner) is stale once nothing in it changed for this long: a live run appends to
# train.bin every chunk; only sentencepiece training writes nothing for a while (minutes).
UNCHECKABLE_WORK_DIR_STALE_HOURS = 24.0


def _documents_factory(args: argparse.Namespace) -> Callable[[], Iterator[sources.Document]]:
  """A function returning a fresh document iterator (the source may be read twice)."""
  if args.source == "text":
    if not args.path:
      raise sources.DataError("--path is required for --source text")
    sources.expand_paths(args.path)  # fail early on missing files
    return lambda: sources.read_text_documents(args.path)
  if args.source == "offline":
    from data2vec_jax.data.offline_corpus import topic_documents

    docs = topic_documents()
    return lambda: iter(docs)
  if args.source == "tfds":
    if not args.tfds_name:
      raise sources.DataError("--tfds_name is required for --source tfds")
    return lambda: sources.tfds_documents(
      args.tfds_name,
      split=args.tfds_split,
      data_dir=args.tfds_data_dir,
      text_feature=args.text_feature,
      sentence_split=args.sentence_split,
    )
  raise sources.DataError(f"unknown --source {args.source!r}; use text, tfds or offline")


def _limit(docs: Iterator[sources.Document], n: int | None) -> Iterator[sources.Document]:
  for i, d in enumerate(docs):
    if n is not None and i >= n:
      return
    yield d


def _log(msg: str) -> None:
  print(f"[prepare] {msg}", file=sys.stderr, flush=True)


def _hostname() -> str:
  return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def _process_start(pid: int) -> tuple[int, str] | None:
  """(start time in clock ticks since boot, state letter) of process `pid` from /proc, or None
  where /proc cannot tell (not Linux, or no such process)."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
      fields = f.read().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
    return int(fields[19]), fields[0]
  except (OSError, IndexError, ValueError):
    return None


def _work_dir_prefix() -> str:
  """`.prepare-tmp-<pid>-<start ticks>@<host>-`: who owns the folder, for later runs to check."""
  pid = os.getpid()
  start = _process_start(pid)
  return f"{WORK_DIR_PREFIX}{pid}-{start[0] if start else 0}@{_hostname()}-"


_OWNED_WORK_DIR = re.compile(
  "^" + re.escape(WORK_DIR_PREFIX) + r"(?P<pid>\d+)-(?P<start>\d+)@(?P<host>.+)-[^-]+$"
)


def _owner_gone(pid: int, start: int) -> bool:
  """Whether process `pid` (started at `start` ticks; 0 = unknown) of this host has ended."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # a live process of another user
    return False
  now = _process_start(pid)
  if now is None:
    return False
  ticks, state = now
  return state in ("Z", "X") or (start != 0 and ticks != start)  # ended, or the pid was reused


def remove_stale_work_dirs(folder: str, *, now: float | None = None) -> list[str]:
  """Remove the `.prepare-tmp-*` folders of `folder` that no live run owns; returns their paths.

  A killed run cannot clean up after itself. A folder is removed when its name records an owner
  on this host whose process has ended (or whose pid now belongs to another process), or, when
  its owner cannot be checked (another host of a pod writing to shared storage, or a folder
  without an owner in its name), when nothing in it changed for
  UNCHECKABLE_WORK_DIR_STALE_HOURS. Every removal, and every folder left in place, is logged.
  """
  now = time.time() if now is None else now
  removed = []
  try:
    names = sorted(n for n in os.listdir(folder) if n.startswith(WORK_DIR_PREFIX))
  except FileNotFoundError:
    return removed
  for name in names:
    path = os.path.join(folder, name)
    if not os.path.isdir(path):
      continue
    m = _OWNED_WORK_DIR.match(name)
    if m and m.group("host") == _hostname():
      pid = int(m.group("pid"))
      if pid == os.getpid() or not _owner_gone(pid, int(m.group("start"))):
        _log(f"left {path} in place: its run (pid {pid}) is still running")
        continue
      why = f"its run (pid {pid} on this host) has ended"
    else:
      try:
        newest = max(
          [os.path.getmtime(path)]
          + [os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)]
        )
      except OSError as e:  # unreadable, or removed meanwhile by its own run
        _log(f"left {path} in place: cannot read it ({e.strerror})")
        continue
      idle_hours = (now - newest) / 3600
      owner = f"host {m.group('host')}, pid {m.group('pid')}" if m else "owner not recorded"
      if idle_hours < UNCHECKABLE_WORK_DIR_STALE_HOURS:
        _log(
          f"left {path} in place ({owner}, changed {idle_hours:.1f} h ago): delete it if no "
          f"prepare writes there any more"
        )
        continue
      why = f"{owner}, unchanged for {idle_hours:.0f} h"
    shutil.rmtree(path, ignore_errors=True)
    removed.append(path)
    _log(f"removed {path} left by an interrupted run ({why})")
  return removed


def output_folder(args: argparse.Namespace) -> str:
  """Where this run's outputs go: --output_dir, or its shard's folder inside it."""
  if args.num_shards == 1:
    return args.output_dir
  return os.path.join(args.output_dir, shard_dir_name(args.shard, args.num_shards))


def prepare(args: argparse.Namespace) -> dict:
  """Run the preparation described by parsed `args`; return the stats that are also written.

  All outputs replace those of an earlier run together, or, when anything fails, not at all: a
  partial train.bin next to an older dict.txt and prepare_stats.json would train on a fraction of
  the corpus without any error.
  """
  if args.train_tokenizer_only:
    return train_tokenizer_only(args)
  if args.num_shards > 1 and args.tokenizer == "sentencepiece" and not args.sentencepiece_model:
    raise sources.DataError(
      f"--num_shards {args.num_shards}: every shard must use one tokenizer; train it once with "
      f"--train_tokenizer_only (writes {os.path.join(args.output_dir, 'spm.model')}) and give "
      f"it to every shard with --sentencepiece_model"
    )
  target = output_folder(args)
  os.makedirs(target, exist_ok=True)
  remove_stale_work_dirs(target)
  # Inside the output folder, so each rename into place stays on one file system (and is atomic).
  work_dir = tempfile.mkdtemp(prefix=_work_dir_prefix(), dir=target)
  try:
    stats = _prepare_into(args, work_dir, target)
    _move_into_place(work_dir, target, stats["splits"])
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
  _log(f"done: {json.dumps(stats)}")
  return stats


def train_tokenizer_only(args: argparse.Namespace) -> dict:
  """`--train_tokenizer_only`: train the sentencepiece model every shard will use, into
  `<output_dir>/spm.model`, `dict.txt` (counts 0) and a `prepare_stats.json` recording them (no
  splits), each replaced atomically."""
  if args.tokenizer != "sentencepiece" or args.sentencepiece_model or not args.spm_vocab_size:
    raise sources.DataError(
      "--train_tokenizer_only trains a sentencepiece model: give --tokenizer sentencepiece "
      "and --spm_vocab_size (and no --sentencepiece_model)"
    )
  os.makedirs(args.output_dir, exist_ok=True)
  remove_stale_work_dirs(args.output_dir)
  work_dir = tempfile.mkdtemp(prefix=_work_dir_prefix(), dir=args.output_dir)
  model = os.path.join(args.output_dir, "spm.model")
  try:
    tok = _train_tokenizer(args, _documents_factory(args), work_dir)
    sentencepiece_dictionary(tok).save(os.path.join(work_dir, "dict.txt"))
    # The corpus's tokenizer record (no splits yet): what training reads to find the tokenizer
    # of `<output_dir>/train`, and what the shards' own records are checked against.
    stats = {
      "splits": {},
      "vocab_size": tok.vocab.vocab_size,
      "mask_id": tok.vocab.mask_id,
      "tokenizer": "sentencepiece",
      "sentencepiece_model": model,
      "dict_txt": os.path.join(args.output_dir, "dict.txt"),
      "tokenizer_sha256": _files_sha256(tok.files),
    }
    with open(os.path.join(work_dir, sources.PREPARE_STATS_FILE), "w") as f:
      json.dump(stats, f, indent=1)
    # The model after its dictionary (it is what the shards are given), the record last.
    for name in ("dict.txt", "spm.model", sources.PREPARE_STATS_FILE):
      os.replace(os.path.join(work_dir, name), os.path.join(args.output_dir, name))
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
  _log(f"done: {model}; prepare each shard with --sentencepiece_model {model}")
  return stats


def _train_tokenizer(
  args: argparse.Namespace, documents: Callable[[], Iterator[sources.Document]], work_dir: str
) -> SentencePieceTokenizer:
  t0 = time.time()
  if not args.spm_vocab_size:
    raise sources.DataError("--spm_vocab_size (train) or --sentencepiece_model (load) is required")
  _log(
    f"training sentencepiece ({args.spm_model_type}, vocab {args.spm_vocab_size}) on up to "
    f"{args.spm_max_sentences} sentences"
  )
  sentences = (s for d in _limit(documents(), args.max_documents) for s in d)
  tok = train_sentencepiece(
    sentences,
    os.path.join(work_dir, "spm.model"),
    vocab_size=args.spm_vocab_size,
    model_type=args.spm_model_type,
    max_sentences=args.spm_max_sentences,
    byte_fallback=args.spm_byte_fallback,
    character_coverage=args.spm_character_coverage,
  )
  _log(f"trained a sentencepiece model ({time.time() - t0:.1f} s)")
  return tok


def _cpu_seconds(since: dict[str, float] | None = None) -> dict[str, float]:
  """CPU seconds (user + system) of this process ('main') and of its ended children ('workers'),
  minus `since`."""
  now = {
    "main": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    "workers": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]),
  }
  return {k: round(v - (since or {}).get(k, 0.0), 2) for k, v in now.items()}


def _files_sha256(files: dict[str, str]) -> str:
  """One sha256 over a tokenizer's files (in role order): equal iff the files are."""
  h = hashlib.sha256()
  for role in sorted(files):
    with open(files[role], "rb") as f:
      h.update(role.encode() + b"\0" + hashlib.sha256(f.read()).digest())
  return h.hexdigest()


# -- encoding, in this process or in worker processes --------------------------------------------

_WORKER_TOKENIZER: Tokenizer | None = None  # in each encoding worker: its own tokenizer


def _start_encoder(kind: str, files: dict[str, str]) -> None:
  global _WORKER_TOKENIZER
  _WORKER_TOKENIZER = load_tokenizer(kind, **files)


def _encode_with(tok: Tokenizer, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [total], lengths int64 [len(sentences)]): one array each, cheap to pickle."""
  encoded = tok.encode_batch(sentences) if sentences else []
  lengths = np.asarray([len(e) for e in encoded], dtype=np.int64)
  ids = np.concatenate(encoded).astype(np.int32) if encoded else np.zeros(0, np.int32)
  return ids, lengths


def _encode_in_worker(sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
  assert _WORKER_TOKENIZER is not None, "encoder worker not initialised"
  return _encode_with(_WORKER_TOKENIZER, sentences)


def _encoded_chunks(
  tok: Tokenizer, chunks: Iterable[list], workers: int
) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
  """(chunk, ids, lengths) for each chunk of (split, document) pairs, in order.

  With `workers` > 1 that many spawned processes encode (each loads the tokenizer from its
  files) while this process reads the source and writes; at most 2 x workers chunks are in
  flight, so memory stays bounded however large the corpus. The ids do not depend on `workers`.
  """
  flat = lambda chunk: [s for _, d in chunk for s in d]  # noqa: E731
  if workers <= 1:
    for chunk in chunks:
      yield (chunk, *_encode_with(tok, flat(chunk)))
    return
  ctx = multiprocessing.get_context("spawn")  # fork would copy the reader's state and threads
  with ctx.Pool(workers, initializer=_start_encoder, initargs=(tok.kind, dict(tok.files))) as pool:
    pending: collections.deque = collections.deque()
    for chunk in chunks:
      pending.append((chunk, pool.apply_async(_encode_in_worker, (flat(chunk),))))
      if len(pending) >= 2 * workers:
        done, result = pending.popleft()
        yield (done, *result.get())
    while pending:
      done, result = pending.popleft()
      yield (done, *result.get())


def _documents_of_this_shard(
  args: argparse.Namespace, documents: Callable[[], Iterator[sources.Document]]
) -> Iterator[list[tuple[str, sources.Document]]]:
  """Chunks of --chunk_docs (split, document) pairs: the documents whose index i (in the
  source's order) has i % num_shards == shard; split 'valid' when i % valid_every is its last
  residue. Both by the same index, so the shards' splits together are the unsharded ones."""
  chunk: list[tuple[str, sources.Document]] = []
  k = args.valid_every
  for i, doc in enumerate(_limit(documents(), args.max_documents)):
    if i % args.num_shards != args.shard:
      continue
    chunk.append(("valid" if k and i % k == k - 1 else "train", doc))
    if len(chunk) >= args.chunk_docs:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _move_into_place(work_dir: str, output_dir: str, splits: Iterable[str]) -> None:
  """Rename the finished outputs of `work_dir` into `output_dir`, prepare_stats.json last.

  Should the process die part-way, the old stats then no longer match the new data, and loading
  fails (`sources.check_prepare_stats`) rather than training on a mix of two runs.
  """
  stats_name = sources.PREPARE_STATS_FILE
  for name in sorted(os.listdir(work_dir)):
    if name != stats_name:
      os.replace(os.path.join(work_dir, name), os.path.join(output_dir, name))
  if "valid" not in splits:
    # An earlier run's valid split would stay next to data it was not split from.
    for path in (
      sources.data_file_path(os.path.join(output_dir, "valid")),
      sources.index_file_path(os.path.join(output_dir, "valid")),
    ):
      if os.path.exists(path):
        os.remove(path)
        _log(f"removed {path} of an earlier run (this one has no --valid_every)")
  os.replace(os.path.join(work_dir, stats_name), os.path.join(output_dir, stats_name))


def _check_no_mask_tokens(tok: Tokenizer, counts: np.ndarray) -> None:
  """The text must not encode to `<mask>`: masking refuses such input (fairseq asserts the same),
  so training would stop at the first batch that holds one, minutes or hours in. The literal text
  "<mask>" does encode to it (a user-defined piece for sentencepiece, a special token for BPE, as
  in fairseq and Hugging Face), e.g. in documentation about masked language models."""
  found = int(counts[tok.vocab.mask_id])
  if found:
    raise sources.DataError(
      f"the text encodes to <mask> (id {tok.vocab.mask_id}) {found} time(s), which masking "
      'refuses in training input: remove or rewrite the literal "<mask>" in the corpus '
      "(e.g. grep -n '<mask>' on it) and prepare again"
    )


def _prepare_into(args: argparse.Namespace, work_dir: str, target: str) -> dict:
  """`prepare`, writing every output into `work_dir` (the stats name their final paths in
  `target`, the output folder)."""
  t0 = time.time()
  cpu0 = _cpu_seconds()
  documents = _documents_factory(args)
  tok = _tokenizer(args, documents, work_dir)
  record = _tokenizer_record(args, tok, target)
  written = _encode_and_write(args, tok, documents, work_dir, t0)
  _check_not_empty(args, written.n_docs)
  _check_no_mask_tokens(tok, written.counts)
  _write_dictionary(args, tok, written.counts, work_dir, record["dict_txt"])
  stats = {
    "splits": _split_stats(written, work_dir, target),
    **record,
    "shard": args.shard,
    "num_shards": args.num_shards,
    "unk_fraction": float(written.counts[tok.vocab.unk_id] / max(1, written.counts.sum())),
    "seconds": round(time.time() - t0, 2),
    # Where the time goes: this process (read, write) and the encoding workers (--workers > 1).
    "cpu_seconds": _cpu_seconds(cpu0),
  }
  with open(os.path.join(work_dir, sources.PREPARE_STATS_FILE), "w") as f:
    json.dump(stats, f, indent=1)
  return stats


def _tokenizer(
  args: argparse.Namespace, documents: Callable[[], Iterator[sources.Document]], work_dir: str
) -> Tokenizer:
  """The tokenizer --tokenizer names: a given or newly trained sentencepiece model, or BPE."""
  if args.tokenizer == "sentencepiece":
    if args.sentencepiece_model:
      return SentencePieceTokenizer(args.sentencepiece_model)
    return _train_tokenizer(args, documents, work_dir)
  if args.tokenizer == "bpe":
    return BPETokenizer(args.vocab_json, args.merges_txt, args.dict_txt)
  raise sources.DataError(f"unknown --tokenizer {args.tokenizer!r}; use bpe or sentencepiece")


def _tokenizer_record(args: argparse.Namespace, tok: Tokenizer, target: str) -> dict:
  """The stats' description of the vocabulary and of the tokenizer's files (final paths)."""
  bpe = args.tokenizer == "bpe"
  if bpe:
    spm_path = None
  else:  # a trained model is renamed into `target` with the other outputs
    spm_path = args.sentencepiece_model or os.path.join(target, "spm.model")
  return {
    "vocab_size": tok.vocab.vocab_size,
    "mask_id": tok.vocab.mask_id,
    "dtype": str(sources.best_fitting_dtype(tok.vocab.vocab_size)),
    "tokenizer": args.tokenizer,
    "sentencepiece_model": spm_path,
    # BPE files as absolute paths: training takes the tokenizer from here when its data config
    # names none (data/corpus_tokenizer.py), from whatever directory it runs in.
    "vocab_json": os.path.abspath(args.vocab_json) if bpe else None,
    "merges_txt": os.path.abspath(args.merges_txt) if bpe else None,
    "dict_txt": os.path.join(target, "dict.txt"),
    # The hash of the files the shards were encoded with: loading refuses shards whose differ.
    "tokenizer_sha256": _files_sha256(tok.files),
  }


class _SplitWriter:
  """Appends encoded chunks of (split, document) pairs to one .bin/.idx builder per split and
  counts what it wrote: documents, lines and tokens per split, occurrences per token id."""

  def __init__(
    self, builders: dict[str, sources.MMapIndexedDatasetBuilder], vocab: VocabInfo
  ) -> None:
    self.builders = builders
    self.vocab = vocab
    self.n_docs = {s: 0 for s in builders}
    self.n_lines = {s: 0 for s in builders}
    self.n_tokens = {s: 0 for s in builders}
    self.counts = np.zeros(vocab.vocab_size, dtype=np.int64)  # int64 [vocab_size]
    self._eos = np.array([vocab.eos_id], dtype=np.int32)

  def write(self, chunk: list, ids: np.ndarray, lengths: np.ndarray) -> None:
    """Append a chunk's documents to their splits: each sentence + `</s>`, a `</s>` line
    between documents. Vectorised over the chunk: per-line numpy calls cost more than the
    encoding itself (profiled: 2.1 s of writing vs 1.0 s of encoding for 1.7M tokens).

    ids: int32 [total] the chunk's sentences' ids, concatenated; lengths: int64 [sentences].
    """
    vocab = self.vocab
    if len(lengths):  # one bincount per chunk; a per-line one would allocate vocab_size each time
      self.counts[:] += np.bincount(ids, minlength=vocab.vocab_size)[: vocab.vocab_size]
      self.counts[vocab.eos_id] += len(lengths)
    line_sizes = lengths + 1
    lines = np.full(int(line_sizes.sum()), vocab.eos_id, dtype=np.int32)
    # Token j of sentence s lands s places further on: one `</s>` after each earlier sentence.
    lines[np.arange(len(ids)) + np.repeat(np.arange(len(lengths)), lengths)] = ids
    for split, (tokens, sizes) in self._pieces_by_split(chunk, lines, line_sizes).items():
      if sizes:
        tokens, sizes = np.concatenate(tokens), np.concatenate(sizes)
        self.builders[split].add_items(tokens, sizes)
        self.n_lines[split] += len(sizes)
        self.n_tokens[split] += len(tokens)

  def _pieces_by_split(
    self, chunk: list, lines: np.ndarray, line_sizes: np.ndarray
  ) -> dict[str, tuple[list, list]]:
    """split -> (token pieces, line-size pieces) of the chunk's documents, in order, with the
    blank `</s>` line before every document but a split's first."""
    line_ends = np.cumsum(line_sizes)
    pieces: dict[str, tuple[list, list]] = {s: ([], []) for s in self.builders}
    k = t = 0  # first sentence, first token of the next document
    for split, d in chunk:
      tokens, sizes = pieces[split]
      if self.n_docs[split] > 0:
        tokens.append(self._eos)  # blank line between documents
        sizes.append(np.ones(1, dtype=np.int64))
      k_end = k + len(d)
      t_end = int(line_ends[k_end - 1]) if k_end > k else t
      tokens.append(lines[t:t_end])
      sizes.append(line_sizes[k:k_end])
      self.n_docs[split] += 1
      k, t = k_end, t_end
    return pieces

  def log_progress(self, seconds: float) -> None:
    """One line of totals so far, and the rate over the run's first `seconds`."""
    tot = sum(self.n_tokens.values())
    _log(
      f"{sum(self.n_docs.values())} docs, {sum(self.n_lines.values())} lines, {tot} tokens, "
      f"{tot / seconds:,.0f} tokens/s"
    )


def _encode_and_write(
  args: argparse.Namespace,
  tok: Tokenizer,
  documents: Callable[[], Iterator[sources.Document]],
  work_dir: str,
  t0: float,
) -> _SplitWriter:
  """Tokenize this shard's documents and write `<work_dir>/train` (and `valid`) .bin/.idx,
  streaming chunks of documents; returns the writer with its counts."""
  splits = ["train"] + (["valid"] if args.valid_every else [])
  dtype = sources.best_fitting_dtype(tok.vocab.vocab_size)
  last = time.time()
  if args.workers > 1:
    _log(f"encoding in {args.workers} worker processes")
  # A builder's exit writes its .idx only when no error is propagating.
  with contextlib.ExitStack() as stack:
    builders = {
      s: stack.enter_context(sources.MMapIndexedDatasetBuilder(os.path.join(work_dir, s), dtype))
      for s in splits
    }
    writer = _SplitWriter(builders, tok.vocab)
    chunks = _documents_of_this_shard(args, documents)
    for chunk, ids, lengths in _encoded_chunks(tok, chunks, args.workers):
      writer.write(chunk, ids, lengths)
      if time.time() - last >= args.log_seconds:
        last = time.time()
        writer.log_progress(last - t0)
  return writer


def _check_not_empty(args: argparse.Namespace, n_docs: dict[str, int]) -> None:
  if n_docs["train"] == 0:
    which = f"shard {args.shard} of {args.num_shards}" if args.num_shards > 1 else "the corpus"
    raise sources.DataError(
      f"{which} is empty: no document with a non-blank line was found; "
      f"check --path (or the TFDS source)"
      + ("; or use fewer shards than documents" if args.num_shards > 1 else "")
    )


def _write_dictionary(
  args: argparse.Namespace, tok: Tokenizer, counts: np.ndarray, work_dir: str, dict_path: str
) -> None:
  """`<work_dir>/dict.txt` (ids = tokenizer ids) with the corpus's counts (int64 [vocab_size]);
  a given --dict_txt is copied as it is, unless it already is `dict_path`, the final one."""
  work_dict = os.path.join(work_dir, "dict.txt")
  if isinstance(tok, SentencePieceTokenizer):
    sentencepiece_dictionary(tok, counts).save(work_dict)
  elif args.dict_txt:
    if os.path.abspath(args.dict_txt) != os.path.abspath(dict_path):
      shutil.copyfile(args.dict_txt, work_dict)
  else:
    d = tok.dictionary
    d.counts[:] = [int(c) for c in counts[: len(d)]]
    d.save(work_dict)


def _split_stats(written: _SplitWriter, work_dir: str, target: str) -> dict[str, dict]:
  """Per split: what was written, and where it will be (prefix in `target`)."""
  return {
    s: {
      "documents": written.n_docs[s],
      "lines": written.n_lines[s],
      "tokens": written.n_tokens[s],
      # bin_bytes lets loading detect a .bin of another run even when the .idx matches the stats.
      "bin_bytes": os.path.getsize(sources.data_file_path(os.path.join(work_dir, s))),
      "prefix": os.path.join(target, s),
    }
    for s in written.builders
  }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  _add_source_arguments(p)
  _add_tokenizer_arguments(p)
  _add_output_arguments(p)
  args = p.parse_args(argv)
  _check_args(p, args)
  return args


def _add_source_arguments(p: argparse.ArgumentParser) -> None:
  """Where the documents come from."""
  p.add_argument(
    "--source",
    choices=["text", "tfds", "offline"],
    required=True,
    help="'offline' = the Python reference-manual corpus (data2vec_jax.data.offline_corpus)",
  )
  p.add_argument("--path", help="text file(s): path, glob or comma list (fairseq raw layout)")
  p.add_argument("--tfds_name")
  p.add_argument("--tfds_split", default="train")
  p.add_argument("--tfds_data_dir", default=None)
  p.add_argument("--text_feature", default="text")
  p.add_argument(
    "--sentence_split", action="store_true", help="split TFDS paragraphs into sentences"
  )
  p.add_argument("--max_documents", type=int, default=None)


def _add_tokenizer_arguments(p: argparse.ArgumentParser) -> None:
  """The tokenizer's files, or how to train a sentencepiece model."""
  p.add_argument("--tokenizer", choices=["bpe", "sentencepiece"], required=True)
  p.add_argument("--vocab_json")
  p.add_argument("--merges_txt")
  p.add_argument("--dict_txt", help="fairseq dict.txt for original GPT-2 vocab.json files")
  p.add_argument("--sentencepiece_model", help="use this model instead of training one")
  p.add_argument(
    "--spm_vocab_size", type=int, default=None, help="total ids incl. specials and <mask>"
  )
  p.add_argument("--spm_model_type", default="unigram", choices=["unigram", "bpe"])
  p.add_argument("--spm_max_sentences", type=int, default=2_000_000)
  p.add_argument("--spm_character_coverage", type=float, default=0.9995)
  p.add_argument("--spm_byte_fallback", action="store_true")


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
  """Where the outputs go, the valid split, and how the work is divided (workers, shards)."""
  p.add_argument("--output_dir", required=True)
  p.add_argument(
    "--valid_every", type=int, default=0, help="every K-th document goes to valid (0: none)"
  )
  p.add_argument("--chunk_docs", type=int, default=256)
  p.add_argument("--log_seconds", type=float, default=10.0)
  p.add_argument(
    "--workers",
    type=int,
    default=1,
    help="processes that encode (1: this one); the output does not depend on it",
  )
  p.add_argument(
    "--shard", type=int, default=0, help="prepare shard i of --num_shards (one per pod host)"
  )
  p.add_argument(
    "--num_shards",
    type=int,
    default=1,
    help="shards write <output_dir>/shard-0000i-of-0000n/; train on data.path=<output_dir>/train",
  )
  p.add_argument(
    "--train_tokenizer_only",
    action="store_true",
    help="only train <output_dir>/spm.model (+ dict.txt), the tokenizer all shards are given",
  )


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Exit through `p.error` on values no run could use."""
  if args.valid_every == 1:
    p.error("--valid_every 1 would leave no training data")
  if args.workers < 1:
    p.error(f"--workers must be >= 1 (1 = encode in this process), got {args.workers}")
  if args.num_shards < 1 or not 0 <= args.shard < args.num_shards:
    p.error(
      f"--shard {args.shard} --num_shards {args.num_shards}: need num_shards >= 1 and "
      f"0 <= shard < num_shards"
    )


def main(argv: list[str] | None = None) -> dict:
  """The command line: input errors exit with one line `prepare: error: ...`, not a traceback."""
  args = parse_args(argv)
  try:
    return prepare(args)
  except (sources.DataError, FileNotFoundError) as e:
    raise SystemExit(f"prepare: error: {e}") from None


if __name__ == "__main__":
  main()
