"""Input pipeline: blocks, batching order/sharding/resume, sources, binarized data, dictionaries.

Tokenizer tests (BPE vs transformers, sentencepiece via prepare, TFDS) are in tests/data/test_sources.py.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from data2vec_jax.data import blocks as blocks_lib
from data2vec_jax.data import pipeline, sources
from data2vec_jax.data.blocks import BlockDataset, slice_indices
from data2vec_jax.data.dictionary import Dictionary, VocabInfo
from data2vec_jax.data.pipeline import BatchIterator, PipelineConfig, PrefetchIterator

BOS, PAD, EOS, MASK = 0, 1, 2, 99

# Hand-checkable corpus: "tokens" are the integers written in the text.
#   doc 1: [10 11 </s>] [12 13 14 </s>]
#   doc 2: [20 21 22 23 </s>] [24 </s>]
#   doc 3: [30 .. 36 </s>] (8 tokens: oversize for block_size 5) [40 </s>]
CORPUS = "10 11\n12 13 14\n\n\n20 21 22 23\n24\n\n30 31 32 33 34 35 36\n40\n"


def int_lines(sentences: list[str]) -> list[np.ndarray]:
  return [np.array([int(w) for w in s.split()], dtype=np.int32) for s in sentences]


def fake_mask_fn(tokens: np.ndarray, *, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic per (epoch, index), like the real masking; ~30% selected."""
  rng = np.random.default_rng((7, epoch, index))
  sel = rng.random(len(tokens)) < 0.3
  return np.where(sel, MASK, tokens).astype(np.int32), sel


@pytest.fixture
def corpus_source(tmp_path) -> sources.TokenSource:
  p = tmp_path / "corpus.txt"
  p.write_text(CORPUS)
  return sources.tokenize_documents(sources.read_text_documents(str(p)), int_lines, eos_id=EOS)


def test_text_source_layout(corpus_source):
  # Blank lines (runs count once) become one size-1 </s> line, as fairseq-preprocess does.
  assert corpus_source.sizes.tolist() == [3, 4, 1, 5, 2, 1, 8, 2]
  assert corpus_source.tokens[:8].tolist() == [10, 11, 2, 12, 13, 14, 2, 2]


@pytest.mark.parametrize(
  "mode,expected,dropped",
  [
    ("complete_doc", [[10, 11, 2], [12, 13, 14, 2], [20, 21, 22, 23, 2], [24, 2], [40, 2]], 1),
    ("complete", [[10, 11, 2], [12, 13, 14, 2, 2], [20, 21, 22, 23, 2], [24, 2, 2], [40, 2]], 1),
    ("eos", [[10, 11, 2], [12, 13, 14, 2], [20, 21, 22, 23, 2], [24, 2], [40, 2]], 1),
    (
      "none",
      [
        [10, 11, 2, 12, 13],
        [14, 2, 2, 20, 21],
        [22, 23, 2, 24, 2],
        [2, 30, 31, 32, 33],
        [34, 35, 36, 2, 40],
        [2],
      ],
      0,
    ),
  ],
)
def test_blocks_hand_checked(corpus_source, mode, expected, dropped):
  ds = BlockDataset(corpus_source, tokens_per_sample=6, break_mode=mode, bos_id=BOS)
  got = [ds[i].tolist() for i in range(len(ds))]
  assert got == [[BOS] + e for e in expected]
  assert ds.num_dropped == dropped
  assert ds.sizes.tolist() == [len(e) + 1 for e in expected]
  assert all(ds[i].dtype == np.int32 for i in range(len(ds)))


def test_oversize_logged(corpus_source, caplog):
  with caplog.at_level("WARNING"):
    BlockDataset(corpus_source, tokens_per_sample=6, break_mode="complete_doc", bos_id=BOS)
  assert "dropped 1 of 6 blocks" in caplog.text


def test_complete_doc_matches_reference_loop():
  # Random sizes with separators: compare with a direct transcription of the fairseq loop
  # (including its "keep only blocks of > 1 token" and oversize rules).
  rng = np.random.default_rng(0)
  sizes = rng.integers(1, 30, size=500)
  sizes[rng.random(500) < 0.15] = 1
  out = slice_indices(sizes, "complete_doc", 40).tolist()
  ref, tok, cur, i = [], 0, 0, 0
  while i < len(sizes):
    if (cur + sizes[i] <= 40 or cur == 0) and sizes[i] != 1:
      cur += sizes[i]
      i += 1
    else:
      if cur > 1:
        ref.append([tok, tok + cur])
      tok += cur
      cur = 0
      if sizes[i] == 1:
        tok += 1
        i += 1
  if cur > 1:
    ref.append([tok, tok + cur])
  assert out == ref
  # blocks never contain a separator line and never exceed 40 unless a single line does
  ends = np.cumsum(sizes)
  separators = (ends - sizes)[np.asarray(sizes) == 1]  # token offsets of the separator lines
  for s, e in out:
    assert (e - s) <= 40 or (e - s) in sizes
    assert not np.any((separators >= s) & (separators < e))


def test_empty_and_bad_inputs(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n  \n")
  with pytest.raises(ValueError, match="empty"):
    sources.tokenize_documents(sources.read_text_documents(str(empty)), int_lines, eos_id=EOS)
  with pytest.raises(FileNotFoundError):
    list(sources.read_text_documents(str(tmp_path / "missing.txt")))
  with pytest.raises(FileNotFoundError, match="no file matches"):
    sources.expand_paths(str(tmp_path / "*.nothing"))
  with pytest.raises(ValueError, match="break_mode"):
    slice_indices(np.array([3]), "sentence", 5)
  src = sources.TokenSource(np.array([5, 6, 7, 8, 9, 2], np.int32), np.array([6]))
  with pytest.raises(ValueError, match="no usable blocks"):
    BlockDataset(src, tokens_per_sample=4, break_mode="complete_doc", bos_id=BOS)


def test_multiple_files_glob(tmp_path):
  (tmp_path / "a.txt").write_text("1 2\n3\n")
  (tmp_path / "b.txt").write_text("4\n\n5 6\n")
  docs = list(sources.read_text_documents(str(tmp_path / "*.txt")))
  assert docs == [["1 2", "3"], ["4"], ["5 6"]]  # a file boundary ends a document


# ----------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------


def synthetic_blocks(
  num_lines: int = 400, tokens_per_sample: int = 32, seed: int = 0, break_mode: str = "complete_doc"
) -> BlockDataset:
  rng = np.random.default_rng(seed)
  sizes, toks = [], []
  for i in range(num_lines):
    if i and rng.random() < 0.1:
      sizes.append(1)
      toks.append(np.array([EOS]))
    n = int(rng.integers(2, 20))
    sizes.append(n)
    toks.append(np.append(rng.integers(4, 90, n - 1), EOS))
  src = sources.TokenSource(np.concatenate(toks).astype(np.int32), np.array(sizes))
  return BlockDataset(src, tokens_per_sample=tokens_per_sample, break_mode=break_mode, bos_id=BOS)


def make_it(ds, **kw) -> BatchIterator:
  pi = kw.pop("process_index", 0)
  pc = kw.pop("process_count", 1)
  cfg = PipelineConfig(
    tokens_per_sample=ds.tokens_per_sample, global_batch_size=kw.pop("gb", 16), **kw
  )
  return BatchIterator(
    ds, cfg, mask_fn=fake_mask_fn, pad_id=PAD, bos_id=BOS, process_index=pi, process_count=pc
  )


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys() == {"source", "target", "selected", "global_row_tokens"}
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_batch_contents_and_dtypes():
  ds = synthetic_blocks()
  it = make_it(ds)
  b = next(it)
  assert (
    b["source"].dtype == np.int32 and b["target"].dtype == np.int32 and b["selected"].dtype == bool
  )
  assert b["source"].shape == b["target"].shape == b["selected"].shape == (16, 32)
  idx = it.global_batch_indices(0, 0)
  for r, i in enumerate(idx):
    tokens = ds[int(i)]
    n = len(tokens)
    src, sel = fake_mask_fn(tokens, epoch=0, index=int(i))
    np.testing.assert_array_equal(b["target"][r, :n], tokens)
    np.testing.assert_array_equal(b["source"][r, :n], src)
    np.testing.assert_array_equal(b["selected"][r, :n], sel)
    assert (b["target"][r, n:] == PAD).all() and (b["source"][r, n:] == PAD).all()
    assert not b["selected"][r, n:].any()
    assert b["target"][r, 0] == BOS


def test_deterministic_and_epochs_differ():
  ds = synthetic_blocks()
  a = take(make_it(ds), 5)
  b = take(make_it(ds), 5)
  assert_batches_equal(a, b)
  it = make_it(ds)
  assert not np.array_equal(it.epoch_order(0), it.epoch_order(1))
  assert sorted(it.epoch_order(1).tolist()) == list(range(len(ds)))
  # the same block gets a different mask in another epoch
  i = int(it.epoch_order(0)[0])
  s0 = fake_mask_fn(ds[i], epoch=0, index=i)[1]
  s1 = fake_mask_fn(ds[i], epoch=1, index=i)[1]
  assert not np.array_equal(s0, s1)
  # a different seed gives a different order
  assert not np.array_equal(make_it(ds, seed=2).epoch_order(0), it.epoch_order(0))


def test_epoch_rollover_covers_every_block_once():
  ds = synthetic_blocks()
  it = make_it(ds, gb=8)
  nb = it.batches_per_epoch
  assert nb == len(ds) // 8
  seen = np.concatenate([it.global_batch_indices(0, b) for b in range(nb)])
  assert len(set(seen.tolist())) == nb * 8
  take(it, nb)
  assert it.get_state()["epoch"] == 1 and it.get_state()["batch"] == 0


def test_no_shuffle_order():
  ds = synthetic_blocks()
  it = make_it(ds, shuffle=False, gb=4)
  np.testing.assert_array_equal(it.global_batch_indices(3, 2), [8, 9, 10, 11])


@pytest.mark.parametrize("pc", [2, 4])
def test_process_shards_disjoint_and_cover(pc):
  ds = synthetic_blocks()
  full = take(make_it(ds, gb=16), 3)
  shards = [take(make_it(ds, gb=16, process_index=p, process_count=pc), 3) for p in range(pc)]
  for b in range(3):
    for k in ("source", "target", "selected"):
      assert all(s[b][k].shape[0] == 16 // pc for s in shards)
      np.testing.assert_array_equal(np.concatenate([s[b][k] for s in shards]), full[b][k])
    # Every process carries the same per-row token counts of the whole global batch: the real
    # (non-pad) tokens of all processes' rows, in order.
    for s in shards:
      np.testing.assert_array_equal(s[b]["global_row_tokens"], full[b]["global_row_tokens"])
    np.testing.assert_array_equal(
      full[b]["global_row_tokens"], (full[b]["target"] != PAD).sum(axis=1)
    )
  it = make_it(ds, gb=16)
  rows = [
    set(it.global_batch_indices(0, 0)[p * 16 // pc : (p + 1) * 16 // pc].tolist())
    for p in range(pc)
  ]
  assert set.union(*rows) == set(it.global_batch_indices(0, 0).tolist())
  assert sum(len(r) for r in rows) == 16


def test_resume_gives_identical_batches():
  ds = synthetic_blocks()
  it = make_it(ds, gb=8)
  take(it, it.batches_per_epoch - 2)  # resume across an epoch boundary too
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 5)
  it2 = make_it(ds, gb=8)
  it2.set_state(state)
  assert_batches_equal(take(it2, 5), expected)
  # resuming on a different process layout continues the same global order
  halves = [make_it(ds, gb=8, process_index=p, process_count=2) for p in range(2)]
  for h in halves:
    h.set_state(state)
  got = [take(h, 5) for h in halves]
  for b in range(5):
    np.testing.assert_array_equal(
      np.concatenate([got[0][b]["source"], got[1][b]["source"]]), expected[b]["source"]
    )


def test_set_state_rejects_other_data_or_config():
  ds = synthetic_blocks()
  state = make_it(ds, gb=8).get_state()
  with pytest.raises(ValueError, match="different dataset or pipeline config"):
    make_it(ds, gb=8, seed=3).set_state(state)
  with pytest.raises(ValueError, match="different dataset or pipeline config"):
    make_it(synthetic_blocks(seed=1), gb=8).set_state(state)
  with pytest.raises(ValueError, match="bad iterator position"):
    make_it(ds, gb=8).set_state({**state, "batch": 10_000})


def test_prefetch_state_is_consumed_position():
  ds = synthetic_blocks()
  ref = take(make_it(ds, gb=8), 12)
  with PrefetchIterator(make_it(ds, gb=8), buffer_size=3) as pf:
    assert pf.get_state()["batch"] == 0
    got = take(pf, 4)
    assert_batches_equal(got, ref[:4])
    import time

    time.sleep(0.05)  # let the thread run ahead
    state = pf.get_state()
    assert (state["epoch"], state["batch"]) == (0, 4)
    assert_batches_equal(take(pf, 2), ref[4:6])
    pf.set_state(state)  # rewind through the wrapper
    assert_batches_equal(take(pf, 4), ref[4:8])
  # a fresh wrapper restored from the saved state
  with PrefetchIterator(make_it(ds, gb=8)) as pf2:
    pf2.set_state(state)
    assert_batches_equal(take(pf2, 8), ref[4:12])


def test_prefetch_propagates_errors():
  ds = synthetic_blocks()

  def bad_mask(tokens, *, epoch, index):
    raise RuntimeError("boom")

  it = BatchIterator(
    ds,
    PipelineConfig(tokens_per_sample=32, global_batch_size=8),
    mask_fn=bad_mask,
    pad_id=PAD,
    bos_id=BOS,
  )
  pf = PrefetchIterator(it)
  with pytest.raises(RuntimeError, match="boom"):
    next(pf)
  pf.close()


def test_bucket_padding_agrees_across_processes():
  ds = synthetic_blocks(tokens_per_sample=64)
  for b in range(4):
    shapes = set()
    for p in range(2):
      it = make_it(ds, gb=8, pad_to="bucket", pad_multiple=8, process_index=p, process_count=2)
      it.set_state({**it.get_state(), "batch": b})
      shapes.add(next(it)["source"].shape)
    assert len(shapes) == 1
    ((B, T),) = shapes
    longest = int(ds.sizes[make_it(ds, gb=8).global_batch_indices(0, b)].max())
    assert T % 8 == 0 and T >= longest and T - longest < 8 and T <= 64


def test_keep_remainder_pads_rows():
  ds = synthetic_blocks()
  n = len(ds)
  gb = 16
  assert n % gb, "test needs a partial last batch"
  it = make_it(ds, gb=gb, drop_remainder=False, process_index=1, process_count=2)
  nb = it.batches_per_epoch
  assert nb == -(-n // gb)
  it.set_state({**it.get_state(), "batch": nb - 1})
  last = next(it)
  real = max(0, min(gb // 2, n - (nb - 1) * gb - gb // 2))
  assert last["source"].shape == (gb // 2, 32)
  assert (last["target"][real:] == PAD).all() and not last["selected"][real:].any()
  # The missing rows of the partial global batch count no tokens.
  n_last = n - (nb - 1) * gb
  assert (last["global_row_tokens"][n_last:] == 0).all()
  assert (last["global_row_tokens"][:n_last] > 0).all()
  assert it.get_state()["epoch"] == 1


def test_config_validation():
  assert PipelineConfig.from_dict({"global_batch_size": 8, "pad_to": "bucket"}).pad_to == "bucket"
  with pytest.raises(ValueError, match="unknown PipelineConfig keys"):
    PipelineConfig.from_dict({"batch_size": 8})
  with pytest.raises(ValueError, match="pad_to"):
    PipelineConfig(pad_to="longest")
  with pytest.raises(ValueError, match="break_mode"):
    PipelineConfig(break_mode="sentence")
  ds = synthetic_blocks()
  with pytest.raises(ValueError, match="not divisible"):
    make_it(ds, gb=10, process_count=4)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    make_it(ds, gb=100_000)
  with pytest.raises(ValueError, match="tokens_per_sample"):
    BatchIterator(
      ds, PipelineConfig(tokens_per_sample=64), mask_fn=fake_mask_fn, pad_id=PAD, bos_id=BOS
    )


# ----------------------------------------------------------------------------------------------
# fairseq binarized data and dictionaries
# ----------------------------------------------------------------------------------------------


def test_mmap_round_trip_and_blocks(tmp_path, corpus_source):
  prefix = str(tmp_path / "bin" / "train")
  sources.write_token_source(corpus_source, prefix, np.uint16)
  ds = sources.MMapIndexedDataset(prefix)
  assert ds.dtype == np.uint16 and len(ds) == 8
  assert ds.sizes.tolist() == corpus_source.sizes.tolist()
  assert ds[3].tolist() == [20, 21, 22, 23, 2]
  # header bytes are fairseq's
  raw = open(prefix + ".idx", "rb").read()
  assert raw[:9] == b"MMIDIDX\x00\x00" and struct.unpack("<Q", raw[9:17]) == (1,) and raw[17] == 8
  src = ds.token_source()
  assert isinstance(src.tokens, np.memmap)
  for mode in blocks_lib.BREAK_MODES:
    a = BlockDataset(src, tokens_per_sample=6, break_mode=mode, bos_id=BOS)
    b = BlockDataset(corpus_source, tokens_per_sample=6, break_mode=mode, bos_id=BOS)
    assert [a[i].tolist() for i in range(len(a))] == [b[i].tolist() for i in range(len(b))]
    assert a.fingerprint() == b.fingerprint()


def test_mmap_int32_and_errors(tmp_path):
  prefix = str(tmp_path / "big")
  with sources.MMapIndexedDatasetBuilder(prefix, np.int32) as b:
    b.add_item([70000, 2])
    b.add_item([2])
  assert sources.MMapIndexedDataset(prefix)[0].tolist() == [70000, 2]
  with pytest.raises(ValueError, match="out of range"):
    with sources.MMapIndexedDatasetBuilder(str(tmp_path / "u16"), np.uint16) as b:
      b.add_item([70000])
  with pytest.raises(FileNotFoundError, match="without .bin/.idx"):
    sources.MMapIndexedDataset(str(tmp_path / "nope"))
  bad = tmp_path / "bad"
  (tmp_path / "bad.bin").write_bytes(b"")
  (tmp_path / "bad.idx").write_bytes(b"TNTIDX\x00\x00" + b"\x00" * 40)
  with pytest.raises(ValueError, match="magic"):
    sources.MMapIndexedDataset(str(bad))
  raw = bytearray(open(prefix + ".idx", "rb").read())
  (tmp_path / "trunc.idx").write_bytes(bytes(raw[:-4]))
  (tmp_path / "trunc.bin").write_bytes(open(prefix + ".bin", "rb").read())
  with pytest.raises(ValueError, match="expected"):
    sources.MMapIndexedDataset(str(tmp_path / "trunc"))
  raw[17] = 6  # float dtype code
  (tmp_path / "flt.idx").write_bytes(bytes(raw))
  (tmp_path / "flt.bin").write_bytes(b"")
  with pytest.raises(ValueError, match="not an integer"):
    sources.MMapIndexedDataset(str(tmp_path / "flt"))


def test_dictionary_fairseq_layout(tmp_path):
  p = tmp_path / "dict.txt"
  p.write_text("13 850314647\n262 800385005\n11 800251374\nhello world 5\n")
  d = Dictionary.load(p)
  assert [d.index(s) for s in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
  assert d.index("13") == 4 and d.index("11") == 6 and d.index("hello world") == 7
  assert d.index("missing") == 3
  assert d.mask_index == 8 and len(d) == 9
  assert d.vocab_info() == VocabInfo(
    vocab_size=9, pad_id=1, bos_id=0, eos_id=2, unk_id=3, mask_id=8
  )
  d.save(tmp_path / "out.txt")
  assert Dictionary.load(tmp_path / "out.txt").symbols == d.symbols
  (tmp_path / "dup.txt").write_text("a 1\na 2\n")
  with pytest.raises(ValueError, match="duplicate"):
    Dictionary.load(tmp_path / "dup.txt")
  (tmp_path / "ow.txt").write_text("<unk> 1 #fairseq:overwrite\nb 2\n")
  assert Dictionary.load(tmp_path / "ow.txt").index("b") == 5
  (tmp_path / "badcount.txt").write_text("a x\n")
  with pytest.raises(ValueError, match="not an integer"):
    Dictionary.load(tmp_path / "badcount.txt")
  with pytest.raises(FileNotFoundError):
    Dictionary.load(tmp_path / "none.txt")


def test_build_block_dataset_fairseq_bin(tmp_path, corpus_source):
  prefix = str(tmp_path / "train")
  sources.write_token_source(corpus_source, prefix, np.uint16)
  Dictionary.from_symbols([str(i) for i in range(4, 95)], add_mask=False).save(
    tmp_path / "dict.txt"
  )
  cfg = {"source": "fairseq_bin", "path": prefix}
  ds, vocab = pipeline.build_block_dataset(cfg, tokens_per_sample=6, break_mode="complete_doc")
  assert len(ds) == 5 and vocab.mask_id == 95 and vocab.vocab_size == 96
  with pytest.raises(ValueError, match="unknown data.source"):
    pipeline.build_block_dataset({"source": "hf"}, tokens_per_sample=6, break_mode="none")
  with pytest.raises(ValueError, match="unknown data config keys"):
    pipeline.build_block_dataset(
      {**cfg, "bogus": 1}, tokens_per_sample=6, break_mode="none", strict_keys=True
    )
  os.remove(tmp_path / "dict.txt")
  with pytest.raises(FileNotFoundError, match="no vocabulary"):
    pipeline.build_block_dataset(cfg, tokens_per_sample=6, break_mode="none")


def test_split_sentences_and_offline_corpus(tmp_path):
  assert sources.split_sentences("It works, e.g. here. Next one!  \"Quoted.\" Done") == [
    "It works, e.g. here.",
    "Next one!",
    "\"Quoted.\"",
    "Done",
  ]
  from data2vec_jax.data.offline_corpus import write_offline_corpus

  stats = write_offline_corpus(tmp_path / "c.txt", max_docs=5)
  assert stats["documents"] == 5 and stats["sentences"] > 20
  docs = list(sources.read_text_documents(str(tmp_path / "c.txt")))
  assert len(docs) == 5 and sum(map(len, docs)) == stats["sentences"]


@pytest.mark.parametrize(
  "options",
  [dict(), dict(pad_to="bucket", pad_multiple=8), dict(drop_remainder=False, shuffle=False)],
)
def test_row_tokens_ahead_are_the_coming_batches_shapes(options):
  """What the trainer compiles ahead (train/precompile.py) is what the batches will be: each
  batch's padded length and global_row_tokens, over an epoch boundary, from any position."""
  ds = synthetic_blocks(tokens_per_sample=64)
  it = make_it(ds, gb=8, **options)
  it.set_state({**it.get_state(), "batch": it.batches_per_epoch - 3})
  count = it.batches_per_epoch + 5  # into the epoch after next
  lengths, rows = it.row_tokens_ahead(0, it.batches_per_epoch - 3, count)
  batches = take(it, count)
  assert lengths.tolist() == [b["source"].shape[1] for b in batches]
  np.testing.assert_array_equal(rows, np.stack([b["global_row_tokens"] for b in batches]))
  if "pad_to" in options:
    assert len(set(lengths.tolist())) > 1  # the test sees several padded lengths
