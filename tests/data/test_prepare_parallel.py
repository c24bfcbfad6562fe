"""`prepare` in parallel (issue 27.4): worker processes, shards read as one corpus, and the
temporary folders of killed runs (issue 25.8). Tiny text corpora in tmp_path, one sentencepiece
model shared by the module."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data2vec_jax.data import pipeline, prepare, shards, sources
from data2vec_jax.data.sources import DataError
from data2vec_jax.data.tokenizer import SentencePieceTokenizer, train_sentencepiece
from data2vec_jax.data.workers import WorkerPoolIterator
from tests.paths import REPO

NUM_DOCS = 24


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """(text file of NUM_DOCS documents, those documents, a sentencepiece model trained on them)."""
  from data2vec_jax.data.offline_corpus import write_offline_corpus

  d = tmp_path_factory.mktemp("corpus")
  write_offline_corpus(d / "corpus.txt", max_docs=NUM_DOCS)
  docs = list(sources.read_text_documents(str(d / "corpus.txt")))
  assert len(docs) == NUM_DOCS
  model = d / "spm.model"
  train_sentencepiece((s for doc in docs for s in doc), model, vocab_size=150)
  return d / "corpus.txt", docs, model


def run_prepare(corpus, out, *extra, model=None) -> dict:
  path, _, spm = corpus
  return prepare.main(
    [
      "--source",
      "text",
      "--path",
      str(path),
      "--tokenizer",
      "sentencepiece",
      "--sentencepiece_model",
      str(model or spm),
      "--output_dir",
      str(out),
      "--chunk_docs",
      "2",  # many chunks: several in flight at once with workers
      "--valid_every",
      "5",
      *map(str, extra),
    ]
  )


def prepare_shards(corpus, out, n, *extra, model=None) -> None:
  for i in range(n):
    run_prepare(corpus, out, "--shard", i, "--num_shards", n, *extra, model=model)


def token_source(prefix) -> sources.TokenSource:
  return pipeline.build_block_dataset(
    {"source": "fairseq_bin", "path": str(prefix)}, tokens_per_sample=32, break_mode="complete_doc"
  )[0].source


def select_all(tokens, *, epoch, index):
  """A picklable mask_fn (worker processes receive the iterator pickled)."""
  return tokens, np.ones(len(tokens), bool)


def batches(prefix, count=6, input_workers=0) -> list[dict]:
  """The first `count` batches of the corpus `prefix`, built here or by input worker processes
  (`data.workers`: the sharded corpus travels to them pickled)."""
  blocks, vocab = pipeline.build_block_dataset(
    {"source": "fairseq_bin", "path": str(prefix)}, tokens_per_sample=32, break_mode="complete_doc"
  )
  config = pipeline.PipelineConfig(tokens_per_sample=32, global_batch_size=4, seed=3)
  it = pipeline.make_iterator(blocks, config, vocab, mask_fn=select_all, prefetch=0)
  if input_workers:
    it = WorkerPoolIterator(it, input_workers)
  try:
    return [next(it) for _ in range(count)]
  finally:
    if input_workers:
      it.close()


def files(folder) -> dict[str, bytes]:
  """Every output file under `folder` (prepare_stats.json holds the run's seconds: left out)."""
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      if name != sources.PREPARE_STATS_FILE:
        path = os.path.join(root, name)
        out[os.path.relpath(path, folder)] = open(path, "rb").read()
  return out


# ----------------------------------------------------------------------------------------------
# Worker processes and shards
# ----------------------------------------------------------------------------------------------


def test_sharded_corpus_is_the_same_whatever_the_workers(tmp_path, corpus):
  """Two shards prepared by 1 and by 2 encoding processes: the same bytes, the same batches."""
  prepare_shards(corpus, tmp_path / "w1", 2)
  prepare_shards(corpus, tmp_path / "w2", 2, "--workers", 2)
  one, two = files(tmp_path / "w1"), files(tmp_path / "w2")
  assert sorted(one) == sorted(two)
  assert "shard-00001-of-00002/train.bin" in one and "shard-00000-of-00002/valid.idx" in one
  assert one == two
  serial = batches(tmp_path / "w1" / "train")
  for other in (batches(tmp_path / "w2" / "train"), batches(tmp_path / "w2" / "train", 6, 2)):
    for a, b in zip(serial, other, strict=True):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_shards_read_as_one_corpus(tmp_path, corpus):
  """n shards read as `D/train` = the unsharded preparation of the documents in shard order
  (shard 0's documents, then shard 1's, ...); the valid splits likewise."""
  docs = corpus[1]
  n, k = 3, 5
  prepare_shards(corpus, tmp_path / "sharded", n)
  # Document i goes to shard i % n, and to valid when i % k == k - 1 (the unsharded rule).
  split_of = lambda i: "valid" if i % k == k - 1 else "train"  # noqa: E731
  tok = SentencePieceTokenizer(corpus[2])
  for split in ("train", "valid"):
    in_shard_order = [
      docs[i] for s in range(n) for i in range(len(docs)) if i % n == s and split_of(i) == split
    ]
    # The reference: the in-memory tokenization of those documents (fairseq-preprocess's layout).
    want = sources.tokenize_documents(in_shard_order, tok.encode_batch, eos_id=tok.vocab.eos_id)
    got = token_source(tmp_path / "sharded" / split)
    np.testing.assert_array_equal(got.sizes, want.sizes)
    np.testing.assert_array_equal(got.tokens[0 : len(got.tokens)], want.tokens)
  # The input pipeline's worker processes receive the corpus pickled: the shards stay mapped.
  source = token_source(tmp_path / "sharded" / "train")
  again = pickle.loads(pickle.dumps(source))
  assert any(isinstance(p, np.memmap) for p in again.tokens.parts)
  np.testing.assert_array_equal(
    again.tokens[0 : len(again.tokens)], source.tokens[0 : len(source.tokens)]
  )


def test_concatenated_tokens_slices_across_parts():
  rng = np.random.default_rng(0)
  parts = [rng.integers(0, 9, n).astype(np.uint16) for n in (5, 0, 1, 7, 3)]
  joined = shards.ConcatenatedTokens(parts)
  reference = np.concatenate(parts)
  assert len(joined) == len(reference)
  for a in range(len(reference) + 1):
    for b in range(a, len(reference) + 1):
      np.testing.assert_array_equal(joined[a:b], reference[a:b])
  with pytest.raises(DataError, match="same tokenizer"):
    shards.ConcatenatedTokens([parts[0], parts[0].astype(np.int32)])


def test_incomplete_mixed_or_foreign_shards_are_refused(tmp_path, corpus):
  out = tmp_path / "out"
  run_prepare(corpus, out, "--shard", 0, "--num_shards", 3)
  run_prepare(corpus, out, "--shard", 2, "--num_shards", 3)
  with pytest.raises(DataError, match=r"shard\(s\) 1 of 3 have no finished train.bin"):
    token_source(out / "train")
  run_prepare(corpus, out, "--shard", 1, "--num_shards", 3)
  assert len(token_source(out / "train"))  # complete now
  run_prepare(corpus, out, "--shard", 0, "--num_shards", 2)
  with pytest.raises(DataError, match=r"shards of 2 preparations \(num_shards 2, 3\)"):
    token_source(out / "train")

  # A shard encoded with another tokenizer of the same size: refused by its hash.
  other_model = tmp_path / "other.model"
  train_sentencepiece(
    (s for d in corpus[1][::-1] for s in d), other_model, vocab_size=150, model_type="bpe"
  )
  mixed = tmp_path / "mixed"
  run_prepare(corpus, mixed, "--shard", 0, "--num_shards", 2)
  run_prepare(corpus, mixed, "--shard", 1, "--num_shards", 2, model=other_model)
  with pytest.raises(DataError, match="record different tokenizer files|other symbols"):
    token_source(mixed / "train")

  both = tmp_path / "both"
  prepare_shards(corpus, both, 2)
  run_prepare(corpus, both)
  with pytest.raises(DataError, match="holds both train.bin/.idx and shard folders"):
    token_source(both / "train")


def test_sharded_cli_needs_one_given_tokenizer(tmp_path, corpus):
  """A shard never trains its own sentencepiece model; --train_tokenizer_only trains the one."""
  path = corpus[0]
  base = [sys.executable, "-m", "data2vec_jax.data.prepare", "--source", "text", "--path"]
  base += [str(path), "--tokenizer", "sentencepiece", "--output_dir", str(tmp_path)]
  r = subprocess.run(
    [*base, "--spm_vocab_size", "150", "--shard", "1", "--num_shards", "2"],
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert r.returncode == 1
  assert r.stderr.strip().splitlines() == [
    f"prepare: error: --num_shards 2: every shard must use one tokenizer; train it once with "
    f"--train_tokenizer_only (writes {tmp_path}/spm.model) and give it to every shard with "
    f"--sentencepiece_model"
  ]
  r = subprocess.run([*base, "--shard", "2", "--num_shards", "2"], capture_output=True, text=True)
  assert r.returncode == 2 and "need num_shards >= 1 and 0 <= shard < num_shards" in r.stderr
  stats = prepare.main(base[3:] + ["--spm_vocab_size", "140", "--train_tokenizer_only"])
  assert stats["sentencepiece_model"] == str(tmp_path / "spm.model")
  assert sorted(os.listdir(tmp_path)) == ["dict.txt", "prepare_stats.json", "spm.model"]
  # The shards given that model read as one corpus; one encoded with another model is refused
  # against the folder's record even when it is the only shard with a dictionary of its own.
  prepare_shards(corpus, tmp_path, 2, model=tmp_path / "spm.model")
  assert len(token_source(tmp_path / "train")) > 0
  run_prepare(corpus, tmp_path, "--shard", 1, "--num_shards", 2)  # the module's model
  with pytest.raises(DataError, match="record different tokenizer files|other symbols"):
    token_source(tmp_path / "train")


# ----------------------------------------------------------------------------------------------
# Temporary folders of killed runs (issue 25.8)
# ----------------------------------------------------------------------------------------------

_BLOCKED_PREPARE = """
import sys, time
from data2vec_jax.data import prepare
prepare._prepare_into = lambda *a: time.sleep(600)  # holds its temporary folder, as a long run
prepare.main(sys.argv[1:])
"""


def test_killed_run_leaves_a_folder_that_the_next_run_removes(tmp_path, corpus, capsys):
  out = tmp_path / "out"
  args = ["--source", "text", "--path", str(corpus[0]), "--tokenizer", "sentencepiece"]
  args += ["--sentencepiece_model", str(corpus[2]), "--output_dir", str(out)]
  proc = subprocess.Popen([sys.executable, "-c", _BLOCKED_PREPARE, *args], cwd=REPO)
  deadline = time.time() + 60
  while not (out.is_dir() and os.listdir(out)) and time.time() < deadline:
    time.sleep(0.05)
  (left,) = os.listdir(out)
  assert left.startswith(f".prepare-tmp-{proc.pid}-")

  # While its owner runs, another run leaves it alone.
  assert prepare.remove_stale_work_dirs(str(out)) == []
  assert "is still running" in capsys.readouterr().err
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.listdir(out) == [left]  # what a killed run leaves

  # An owner that cannot be checked (another host, or no owner recorded): stale after 24 h idle.
  foreign = out / ".prepare-tmp-77-123@another-host-abcd1234"
  legacy = out / ".prepare-tmp-k2j4h5g6"
  for folder in (foreign, legacy):
    folder.mkdir()
    (folder / "train.bin").write_bytes(b"\0\0")
  day_ago = time.time() - 25 * 3600
  for path in (legacy / "train.bin", legacy):
    os.utime(path, (day_ago, day_ago))

  run_prepare(corpus, out)
  err = capsys.readouterr().err
  assert (
    f"removed {out / left} left by an interrupted run "
    f"(its run (pid {proc.pid} on this host) has ended)" in err
  )
  assert (
    f"removed {legacy} left by an interrupted run (owner not recorded, unchanged for 25 h)" in err
  )
  assert f"left {foreign} in place (host another-host, pid 77, changed 0.0 h ago)" in err
  assert sorted(n for n in os.listdir(out) if n.startswith(".")) == [foreign.name]
  assert (out / "train.bin").is_file()


def test_builder_add_items_equals_add_item(tmp_path):
  rng = np.random.default_rng(1)
  sizes = rng.integers(0, 6, 40)
  tokens = rng.integers(0, 300, int(sizes.sum()))
  with sources.MMapIndexedDatasetBuilder(str(tmp_path / "one"), np.uint16) as b:
    for start, size in zip(np.cumsum(sizes) - sizes, sizes):
      b.add_item(tokens[start : start + size])
  with sources.MMapIndexedDatasetBuilder(str(tmp_path / "all"), np.uint16) as b:
    b.add_items(tokens, sizes)
  for ext in (".bin", ".idx"):
    assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"all{ext}").read_bytes()
  with pytest.raises(ValueError, match="out of range for uint16"):
    sources.MMapIndexedDatasetBuilder(str(tmp_path / "bad"), np.uint16).add_items([70000], [1])
