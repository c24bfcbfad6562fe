"""Failure paths of `prepare` and of loading its output (issue #13), on tiny corpora in tmp_path.

A failed run must leave the previous outputs untouched, loading must notice a partial or mixed
preparation, and input errors must be one line naming the problem and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from data2vec_jax.data import pipeline, prepare, sources
from data2vec_jax.data.sources import DataError
from data2vec_jax.data.tokenizer import train_sentencepiece
from tests.paths import REPO

BAD_LINE = b"caf\xe9 au lait, written in Latin-1.\n"  # \xe9 alone is not UTF-8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """(good corpus, the same with one Latin-1 line in the middle, its 1-based line, byte offset)."""
  from data2vec_jax.data.offline_corpus import write_offline_corpus

  d = tmp_path_factory.mktemp("corpus")
  write_offline_corpus(d / "good.txt", max_docs=12)
  lines = (d / "good.txt").read_bytes().splitlines(keepends=True)
  mid = len(lines) // 2
  (d / "bad.txt").write_bytes(b"".join(lines[:mid]) + BAD_LINE + b"".join(lines[mid:]))
  offset = sum(map(len, lines[:mid])) + BAD_LINE.index(b"\xe9")
  return d / "good.txt", d / "bad.txt", mid + 1, offset


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory, corpus):
  """A sentencepiece model outside any output folder (so a run can tokenize without training)."""
  path = tmp_path_factory.mktemp("spm") / "spm.model"
  train_sentencepiece(
    (s for d in sources.read_text_documents(str(corpus[0])) for s in d), path, vocab_size=120
  )
  return path


def run_prepare(path, out, *extra) -> dict:
  return prepare.main(
    [
      "--source",
      "text",
      "--path",
      str(path),
      "--tokenizer",
      "sentencepiece",
      "--output_dir",
      str(out),
      *map(str, extra),
    ]
  )


def snapshot(folder) -> dict[str, bytes]:
  return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def load(prefix) -> pipeline.BlockDataset:
  return pipeline.build_block_dataset(
    {"source": "fairseq_bin", "path": str(prefix)}, tokens_per_sample=64, break_mode="complete_doc"
  )[0]


# ----------------------------------------------------------------------------------------------
# 1. Outputs replaced all together or not at all; loading checks prepare_stats.json
# ----------------------------------------------------------------------------------------------


def test_failed_prepare_leaves_previous_output_untouched(tmp_path, corpus, spm_model):
  good, bad, _, _ = corpus
  out = tmp_path / "out"
  run_prepare(good, out, "--spm_vocab_size", 120, "--valid_every", 4)
  before = snapshot(out)
  assert set(before) == {
    "dict.txt",
    "prepare_stats.json",
    "spm.model",
    "train.bin",
    "train.idx",
    "valid.bin",
    "valid.idx",
  }
  # Fails half-way through writing (small chunks, so some documents were already written) ...
  with pytest.raises(SystemExit, match="not valid UTF-8"):
    run_prepare(bad, out, "--sentencepiece_model", spm_model, "--chunk_docs", 1, "--valid_every", 4)
  # ... and while training sentencepiece (a second pass over the corpus).
  with pytest.raises(SystemExit, match="not valid UTF-8"):
    run_prepare(bad, out, "--spm_vocab_size", 120)
  assert snapshot(out) == before  # byte-identical, and no temporary file or folder left
  assert len(load(out / "train")) > 0


def test_unexpected_error_also_leaves_output_untouched(tmp_path, corpus, monkeypatch):
  out = tmp_path / "out"
  run_prepare(corpus[0], out, "--spm_vocab_size", 120)
  before = snapshot(out)

  def boom(*args, **kwargs):
    raise RuntimeError("boom")

  monkeypatch.setattr(prepare, "sentencepiece_dictionary", boom)  # after .bin/.idx are written
  with pytest.raises(RuntimeError, match="boom"):  # not an input error: a traceback, as before
    run_prepare(corpus[0], out, "--spm_vocab_size", 120, "--max_documents", 3)
  assert snapshot(out) == before


def test_rerun_without_valid_removes_the_old_valid_split(tmp_path, corpus, spm_model):
  out = tmp_path / "out"
  run_prepare(corpus[0], out, "--sentencepiece_model", spm_model, "--valid_every", 3)
  stats = run_prepare(corpus[0], out, "--sentencepiece_model", spm_model)
  assert sorted(os.listdir(out)) == ["dict.txt", "prepare_stats.json", "train.bin", "train.idx"]
  assert load(out / "train").source.num_tokens == stats["splits"]["train"]["tokens"]


def test_load_checks_prepare_stats(tmp_path, corpus, spm_model):
  good = corpus[0]
  out, small = tmp_path / "out", tmp_path / "small"
  stats = run_prepare(good, out, "--sentencepiece_model", spm_model, "--valid_every", 4)
  run_prepare(good, small, "--sentencepiece_model", spm_model, "--max_documents", 3)
  train = stats["splits"]["train"]
  assert train["bin_bytes"] == os.path.getsize(out / "train.bin")
  assert load(out / "train").source.num_tokens == train["tokens"]
  assert len(load(out / "valid")) > 0
  # A mix of two preparations (what an interrupted run used to leave): the .idx of another run.
  (out / "train.idx").write_bytes((small / "train.idx").read_bytes())
  with pytest.raises(
    DataError,
    match=rf"has \d+ lines, \d+ tokens, .* records {train['lines']} lines, "
    rf"{train['tokens']} tokens, .*re-run .*data2vec_jax.data.prepare",
  ):
    load(out / "train")
  # Both files of another run: sizes and bytes agree with each other but not with the stats.
  (out / "train.bin").write_bytes((small / "train.bin").read_bytes())
  with pytest.raises(DataError, match="partial or mixed preparation"):
    load(out / "train")
  # The split is found by its name too; stats written before bin_bytes existed still check lines.
  (out / "valid.bin").write_bytes((out / "valid.bin").read_bytes() + b"\0\0")
  with pytest.raises(DataError, match="bin bytes"):
    load(out / "valid")
  old = json.loads((out / "prepare_stats.json").read_text())
  for s in old["splits"].values():
    del s["bin_bytes"], s["prefix"]
  (out / "prepare_stats.json").write_text(json.dumps(old))
  assert len(load(out / "valid")) > 0  # only the extra .bin bytes differ: not checked any more
  with pytest.raises(
    DataError, match=rf"records {train['lines']} lines, {train['tokens']} tokens \(a"
  ):
    load(out / "train")
  # A folder whose stats do not describe the split (or no stats at all) loads unchecked.
  os.replace(out / "train.bin", out / "other.bin")
  os.replace(out / "train.idx", out / "other.idx")
  assert len(load(out / "other")) > 0
  (out / "prepare_stats.json").write_text("{not json")
  with pytest.raises(DataError, match="not a readable prepare_stats.json"):
    load(out / "other")


# ----------------------------------------------------------------------------------------------
# 2. sentencepiece without a usable sentence
# ----------------------------------------------------------------------------------------------


def test_sentencepiece_without_usable_sentence(tmp_path, monkeypatch, caplog):
  import sentencepiece as spm

  (tmp_path / "empty.txt").write_text("\n  \n")
  (tmp_path / "long.txt").write_text("word " * 1000 + "\n")  # 5000 bytes > 4192
  for name, counts in (
    ("empty", "0 non-blank line(s) read, 0 skipped"),
    ("long", "1 non-blank line(s) read, 1 skipped"),
  ):
    with pytest.raises(
      SystemExit,
      match=re.escape(
        f"prepare: error: no usable sentence to train sentencepiece on: {counts} as longer than "
        f"sentencepiece's max_sentence_length of 4192 bytes; give a UTF-8 corpus with one sentence "
        f"per line (split longer lines)"
      ),
    ):
      run_prepare(tmp_path / f"{name}.txt", tmp_path / "out", "--spm_vocab_size", 50)

  def not_called(*args, **kwargs):
    raise AssertionError("sentencepiece must not be called without a usable sentence")

  with monkeypatch.context() as m:
    m.setattr(spm.SentencePieceTrainer, "train", not_called)
    with pytest.raises(DataError, match="1 skipped as longer than .* 4192 bytes"):
      train_sentencepiece(["x" * 4193, " "], tmp_path / "x.model", vocab_size=50)
  # Long sentences next to usable ones are left out of training, with a warning saying so;
  # a cap of <= 100 sentences (which sentencepiece's input_sentence_size rejects) works.
  words = [" ".join(f"w{(i * 7 + j) % 40}" for j in range(12)) for i in range(60)]
  with caplog.at_level(logging.WARNING):
    tok = train_sentencepiece(
      ["é" * 2097] + words, tmp_path / "ok.model", vocab_size=30, max_sentences=61
    )
  assert tok.vocab.vocab_size == 30
  assert "without 1 of 61 sentences longer than 4192 bytes" in caplog.text


# ----------------------------------------------------------------------------------------------
# 3. Invalid UTF-8 and binary input, for prepare and for training on text
# ----------------------------------------------------------------------------------------------


def test_invalid_utf8_names_file_line_and_offset(tmp_path, corpus, spm_model):
  _, bad, line, offset = corpus
  expected = (
    f"{bad}: line {line} is not valid UTF-8 (invalid continuation byte: b'\\xe9' at byte "
    f"offset {offset}); re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t UTF-8`)"
  )
  with pytest.raises(DataError) as e:
    list(sources.read_text_documents(str(bad)))
  assert str(e.value) == expected
  with pytest.raises(DataError, match=re.escape(expected)):  # training with data.source='text'
    pipeline.build_block_dataset(
      {
        "source": "text",
        "path": str(bad),
        "tokenizer": "sentencepiece",
        "sentencepiece_model": str(spm_model),
      },
      tokens_per_sample=64,
      break_mode="complete_doc",
    )
  with pytest.raises(SystemExit, match=re.escape(f"prepare: error: {expected}")):
    run_prepare(bad, tmp_path / "out", "--sentencepiece_model", spm_model)
  # UTF-16 (ASCII + NULs is valid UTF-8) and other binary files
  (tmp_path / "utf16.txt").write_bytes("one\ntwo\n".encode("utf-16-le"))
  with pytest.raises(
    DataError,
    match=r"utf16.txt: line 1 has a NUL byte at byte offset 1: a binary "
    r"or UTF-16 file is not a text corpus",
  ):
    list(sources.read_text_documents(str(tmp_path / "utf16.txt")))
  (tmp_path / "data.bin").write_bytes(np.arange(300, dtype=np.uint16).tobytes())
  with pytest.raises(DataError, match="data.bin: line 1 has a NUL byte"):
    list(sources.read_text_documents(str(tmp_path / "data.bin")))


def test_text_line_endings_as_before(tmp_path):
  # Decoding from bytes must split lines as the universal-newline text mode did: \n, \r\n, \r.
  (tmp_path / "crlf.txt").write_bytes(b"a b\r\nc\r\n\r\nd\r\n")
  (tmp_path / "cr.txt").write_bytes(b"a b\rc\r\rd\r")
  (tmp_path / "mixed.txt").write_bytes(b"a b\r\r\nc\n\rd")
  for name in ("crlf.txt", "cr.txt"):
    assert list(sources.read_text_documents(str(tmp_path / name))) == [["a b", "c"], ["d"]], name
  assert list(sources.read_text_documents(str(tmp_path / "mixed.txt"))) == [["a b"], ["c"], ["d"]]


def test_literal_mask_token_is_an_input_error_and_writes_nothing(tmp_path, corpus, spm_model):
  # "<mask>" encodes to the mask id, which masking refuses: prepare must stop, not training.
  lines = corpus[0].read_text(encoding="utf-8").splitlines(keepends=True)
  text = "".join(lines[:3]) + "Fill in the <mask> and predict it.\n" + "".join(lines[3:])
  (tmp_path / "mask.txt").write_text(text, encoding="utf-8")
  out = tmp_path / "out"
  pattern = r"prepare: error: the text encodes to <mask> \(id \d+\) 1 time\(s\), which masking"
  with pytest.raises(SystemExit, match=pattern) as e:
    run_prepare(tmp_path / "mask.txt", out, "--sentencepiece_model", spm_model)
  assert len(str(e.value).splitlines()) == 1
  assert not out.exists() or not os.listdir(out)  # no output in place
  run_prepare(corpus[0], out, "--sentencepiece_model", spm_model)  # the same text without it
  before = snapshot(out)
  with pytest.raises(SystemExit, match=pattern):  # training sentencepiece first: the same
    run_prepare(tmp_path / "mask.txt", out, "--spm_vocab_size", 120)
  assert snapshot(out) == before


# ----------------------------------------------------------------------------------------------
# 4. The command line: one line on stderr, non-zero exit, no traceback
# ----------------------------------------------------------------------------------------------


def test_cli_input_errors_are_one_line(tmp_path, corpus):
  with pytest.raises(SystemExit, match="prepare: error: text corpus file not found: .*missing.txt"):
    run_prepare(tmp_path / "missing.txt", tmp_path / "out", "--spm_vocab_size", 50)
  with pytest.raises(SystemExit, match="prepare: error: --path is required for --source text"):
    prepare.main(["--source", "text", "--tokenizer", "bpe", "--output_dir", str(tmp_path)])
  with pytest.raises(SystemExit, match="prepare: error: sentencepiece model not found"):
    run_prepare(corpus[0], tmp_path / "out", "--sentencepiece_model", tmp_path / "none.model")
  with pytest.raises(
    SystemExit, match="prepare: error: vocab_size=8 cannot hold the corpus's characters"
  ):
    run_prepare(corpus[0], tmp_path / "out", "--spm_vocab_size", 8)
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "data2vec_jax.data.prepare",
      "--source",
      "text",
      "--path",
      str(corpus[1]),
      "--tokenizer",
      "sentencepiece",
      "--spm_vocab_size",
      "50",
      "--output_dir",
      str(tmp_path / "out"),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("[prepare] ")]
  assert errors == [
    f"prepare: error: {corpus[1]}: line {corpus[2]} is not valid UTF-8 (invalid "
    f"continuation byte: b'\\xe9' at byte offset {corpus[3]}); re-encode the file "
    f"as UTF-8 (e.g. `iconv -f latin1 -t UTF-8`)"
  ]


# ----------------------------------------------------------------------------------------------
# 5. The README's prepare commands
# ----------------------------------------------------------------------------------------------


def test_readme_prepare_commands_parse():
  text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read().replace("\\\n", " ")
  commands = [
    ln for ln in text.splitlines() if ln.lstrip().startswith("python -m data2vec_jax.data.prepare")
  ]
  assert commands
  for cmd in commands:
    prepare.parse_args(shlex.split(cmd)[3:])  # argparse exits on an unknown flag such as --input
