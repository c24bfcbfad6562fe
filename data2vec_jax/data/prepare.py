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

The outputs are written into a temporary folder inside --output_dir and renamed into place only
when the whole preparation succeeded (prepare_stats.json last): a failed run leaves the previous
outputs untouched. Loading checks each split against prepare_stats.json (lines, tokens, .bin size).
Errors in the input (missing files, an empty corpus, invalid UTF-8, sentencepiece limits) end the
command with one line `prepare: error: ...` and exit status 1.

The corpus is streamed: only one chunk of documents and the per-line sizes are held in memory.
Sentencepiece training reads the first --spm_max_sentences sentences (a second pass over the source).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Iterable, Iterator

import numpy as np

from data2vec_jax.data import sources
from data2vec_jax.data.tokenizer import (
  BPETokenizer,
  SentencePieceTokenizer,
  sentencepiece_dictionary,
  train_sentencepiece,
)


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


def prepare(args: argparse.Namespace) -> dict:
  """Run the preparation described by parsed `args`; return the stats that are also written.

  All outputs replace those of an earlier run together, or, when anything fails, not at all: a
  partial train.bin next to an older dict.txt and prepare_stats.json would train on a fraction of
  the corpus without any error.
  """
  os.makedirs(args.output_dir, exist_ok=True)
  # Inside output_dir, so each rename into place stays on one file system (and is atomic).
  work_dir = tempfile.mkdtemp(prefix=".prepare-tmp-", dir=args.output_dir)
  try:
    stats = _prepare_into(args, work_dir)
    _move_into_place(work_dir, args.output_dir, stats["splits"])
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
  _log(f"done: {json.dumps(stats)}")
  return stats


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


def _prepare_into(args: argparse.Namespace, work_dir: str) -> dict:
  """`prepare`, writing every output into `work_dir` (the stats name their final paths)."""
  t0 = time.time()
  documents = _documents_factory(args)

  # 1. Tokenizer.
  if args.tokenizer == "sentencepiece":
    if args.sentencepiece_model:
      tok = SentencePieceTokenizer(args.sentencepiece_model)
      spm_path = args.sentencepiece_model
    else:
      if not args.spm_vocab_size:
        raise sources.DataError(
          "--spm_vocab_size (train) or --sentencepiece_model (load) is required"
        )
      spm_path = os.path.join(args.output_dir, "spm.model")
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
      _log(f"trained {spm_path} ({time.time() - t0:.1f} s)")
  elif args.tokenizer == "bpe":
    tok = BPETokenizer(args.vocab_json, args.merges_txt, args.dict_txt)
    spm_path = None
  else:
    raise sources.DataError(f"unknown --tokenizer {args.tokenizer!r}; use bpe or sentencepiece")
  vocab = tok.vocab
  dtype = sources.best_fitting_dtype(vocab.vocab_size)

  # 2. Tokenize and write, streaming chunks of documents.
  splits = ["train"] + (["valid"] if args.valid_every else [])
  n_docs = {s: 0 for s in splits}
  n_lines = {s: 0 for s in splits}
  n_tokens = {s: 0 for s in splits}
  counts = np.zeros(vocab.vocab_size, dtype=np.int64)
  eos = np.array([vocab.eos_id], dtype=np.int32)
  last = time.time()

  def flush(chunk: list[sources.Document]) -> None:
    flat = [s for d in chunk for s in d]
    encoded = tok.encode_batch(flat) if flat else []
    if encoded:  # one bincount per chunk; a per-line one would allocate vocab_size each time
      counts[:] += np.bincount(np.concatenate(encoded), minlength=vocab.vocab_size)[
        : vocab.vocab_size
      ]
      counts[vocab.eos_id] += len(encoded)
    k = 0
    for d in chunk:
      total = n_docs["train"] + (n_docs["valid"] if args.valid_every else 0)
      split = (
        "valid"
        if args.valid_every and total % args.valid_every == args.valid_every - 1
        else "train"
      )
      b = builders[split]
      if n_docs[split] > 0:
        b.add_item(eos)  # blank line between documents
        n_lines[split] += 1
        n_tokens[split] += 1
      for _ in d:
        ids = np.append(encoded[k], eos)
        k += 1
        b.add_item(ids)
        n_lines[split] += 1
        n_tokens[split] += len(ids)
      n_docs[split] += 1

  chunk: list[sources.Document] = []
  # A builder's exit writes its .idx only when no error is propagating.
  with contextlib.ExitStack() as stack:
    builders = {
      s: stack.enter_context(sources.MMapIndexedDatasetBuilder(os.path.join(work_dir, s), dtype))
      for s in splits
    }
    for doc in _limit(documents(), args.max_documents):
      chunk.append(doc)
      if len(chunk) >= args.chunk_docs:
        flush(chunk)
        chunk = []
        if time.time() - last >= args.log_seconds:
          last = time.time()
          tot = sum(n_tokens.values())
          _log(
            f"{sum(n_docs.values())} docs, {sum(n_lines.values())} lines, {tot} tokens, "
            f"{tot / (last - t0):,.0f} tokens/s"
          )
    flush(chunk)
  if n_docs["train"] == 0:
    raise sources.DataError(
      "the corpus is empty: no document with a non-blank line was found; "
      "check --path (or the TFDS source)"
    )

  # 3. Dictionary (ids = tokenizer ids).
  dict_path = os.path.join(args.output_dir, "dict.txt")
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

  # bin_bytes lets loading detect a .bin of another run even when the .idx matches the stats.
  bin_bytes = {
    s: os.path.getsize(sources.data_file_path(os.path.join(work_dir, s))) for s in splits
  }
  stats = {
    "splits": {
      s: {
        "documents": n_docs[s],
        "lines": n_lines[s],
        "tokens": n_tokens[s],
        "bin_bytes": bin_bytes[s],
        "prefix": os.path.join(args.output_dir, s),
      }
      for s in splits
    },
    "vocab_size": vocab.vocab_size,
    "mask_id": vocab.mask_id,
    "dtype": str(dtype),
    "tokenizer": args.tokenizer,
    "sentencepiece_model": spm_path,
    "dict_txt": dict_path,
    "unk_fraction": float(counts[vocab.unk_id] / max(1, counts.sum())),
    "seconds": round(time.time() - t0, 2),
  }
  with open(os.path.join(work_dir, sources.PREPARE_STATS_FILE), "w") as f:
    json.dump(stats, f, indent=1)
  return stats


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
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
  p.add_argument("--output_dir", required=True)
  p.add_argument(
    "--valid_every", type=int, default=0, help="every K-th document goes to valid (0: none)"
  )
  p.add_argument("--chunk_docs", type=int, default=256)
  p.add_argument("--log_seconds", type=float, default=10.0)
  args = p.parse_args(argv)
  if args.valid_every == 1:
    p.error("--valid_every 1 would leave no training data")
  return args


def main(argv: list[str] | None = None) -> dict:
  """The command line: input errors exit with one line `prepare: error: ...`, not a traceback."""
  args = parse_args(argv)
  try:
    return prepare(args)
  except (sources.DataError, FileNotFoundError) as e:
    raise SystemExit(f"prepare: error: {e}") from None


if __name__ == "__main__":
  main()
