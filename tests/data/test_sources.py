"""Tokenizers, TFDS (without TensorFlow) and the `prepare` command, all offline."""

from __future__ import annotations

import functools
import json
import sys

import numpy as np
import pytest

from data2vec_jax.data import pipeline, prepare, sources
from data2vec_jax.data.dictionary import Dictionary
from data2vec_jax.data.tokenizer import BPETokenizer, SentencePieceTokenizer, encode_line

SENTENCES = [
  "Hello world.",
  " leading space and  double  spaces",
  "naïve café — Ünïcödé, 東京 and emoji 😀!",
  "Tabs\tand\nnewlines, numbers 12345 and punctuation?!...",
  "   ",
  "can't won't it's we'll they're",
]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
  from data2vec_jax.data.offline_corpus import write_offline_corpus

  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  write_offline_corpus(path, max_docs=40)
  return path


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory, corpus_file):
  """A tiny RoBERTa-style byte-level BPE: specials 0..3, learned tokens, <mask> last."""
  from tokenizers import ByteLevelBPETokenizer

  d = tmp_path_factory.mktemp("bpe")
  tok = ByteLevelBPETokenizer(add_prefix_space=False)
  tok.train(
    [str(corpus_file)],
    vocab_size=600,
    min_frequency=2,
    special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
    show_progress=False,
  )
  tok.save_model(str(d))
  vocab = json.loads((d / "vocab.json").read_text())
  vocab["<mask>"] = len(vocab)
  (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
  return d / "vocab.json", d / "merges.txt"


def test_bpe_matches_transformers_roberta(bpe_files):
  from transformers import RobertaTokenizer

  vocab_json, merges_txt = bpe_files
  ours = BPETokenizer(vocab_json, merges_txt)
  # transformers 5: the constructor takes `vocab`/`merges`; from_pretrained reads a local folder
  # holding vocab.json + merges.txt (no hub access with local_files_only).
  ref = RobertaTokenizer.from_pretrained(str(vocab_json.parent), local_files_only=True)
  assert len(ref) == ours.vocab.vocab_size
  assert ours.vocab.mask_id == ref.mask_token_id == ours.vocab.vocab_size - 1
  assert (ours.vocab.bos_id, ours.vocab.pad_id, ours.vocab.eos_id, ours.vocab.unk_id) == (
    ref.bos_token_id,
    ref.pad_token_id,
    ref.eos_token_id,
    ref.unk_token_id,
  )
  for s in SENTENCES:
    expected = ref(s, add_special_tokens=False)["input_ids"]
    assert ours.encode(s).tolist() == expected, s
    assert ours.decode(ours.encode(s)) == s
    # fairseq line form: tokens + </s>; with the BOS of the block it is RoBERTa's <s> x </s>
    assert [0] + encode_line(ours, s).tolist() == ref(s)["input_ids"]
  assert [x.tolist() for x in ours.encode_batch(SENTENCES)] == [
    ours.encode(s).tolist() for s in SENTENCES
  ]


def test_bpe_with_gpt2_ids_and_dict(tmp_path, bpe_files):
  """Original GPT-2 files: vocab.json ids are GPT-2 ids, dict.txt maps them to fairseq ids."""
  vocab_json, merges_txt = bpe_files
  vocab = json.loads(open(vocab_json).read())
  gpt2 = {
    t: i
    for i, t in enumerate(t for t in vocab if t not in ("<s>", "<pad>", "</s>", "<unk>", "<mask>"))
  }
  (tmp_path / "vocab.json").write_text(json.dumps(gpt2, ensure_ascii=False))
  # dict.txt in frequency order (not GPT-2 order), symbols are GPT-2 ids as strings
  order = list(reversed(range(len(gpt2))))
  Dictionary.from_symbols([str(i) for i in order], add_mask=False).save(tmp_path / "dict.txt")
  tok = BPETokenizer(tmp_path / "vocab.json", merges_txt, tmp_path / "dict.txt")
  roberta = BPETokenizer(vocab_json, merges_txt)
  s = SENTENCES[2]
  token_strings = [t for t in roberta._tok.encode(s, add_special_tokens=False).tokens]
  assert tok.encode(s).tolist() == [4 + order.index(gpt2[t]) for t in token_strings]
  assert tok.vocab.mask_id == len(gpt2) + 4
  assert tok.decode(tok.encode(s)) == s
  with pytest.raises(ValueError, match="dict_txt"):
    BPETokenizer(tmp_path / "vocab.json", merges_txt)
  with pytest.raises(FileNotFoundError):
    BPETokenizer(tmp_path / "missing.json", merges_txt)


def test_prepare_sentencepiece_special_ids(tmp_path, corpus_file):
  out = tmp_path / "out"
  stats = prepare.main(
    [
      "--source",
      "text",
      "--path",
      str(corpus_file),
      "--tokenizer",
      "sentencepiece",
      "--spm_vocab_size",
      "500",
      "--spm_model_type",
      "unigram",
      "--output_dir",
      str(out),
      "--valid_every",
      "10",
    ]
  )
  tok = SentencePieceTokenizer(out / "spm.model")
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
  assert sp.get_piece_size() == 500 and tok.vocab.vocab_size == 500
  assert [sp.id_to_piece(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
  assert (sp.bos_id(), sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
  assert sp.piece_to_id("<mask>") == 499 == tok.vocab.mask_id
  assert 499 in sp.encode("a <mask> b")  # user-defined symbol: the literal text maps to it
  ids = tok.encode("The assignment statement binds names.")
  assert ids.dtype == np.int32 and ids.min() >= 4 and ids.max() < 499
  # dict.txt + <mask> reproduce the spm ids
  d = Dictionary.load(out / "dict.txt")
  assert len(d) == 500 and d.mask_index == 499
  assert all(d.index(sp.id_to_piece(i)) == i for i in range(4, 499))
  # binarized output readable as blocks; valid split present
  assert stats["splits"]["valid"]["documents"] == 4 and stats["splits"]["train"]["documents"] == 36
  ds, vocab = pipeline.build_block_dataset(
    {"source": "fairseq_bin", "path": str(out / "train")},
    tokens_per_sample=64,
    break_mode="complete_doc",
  )
  assert vocab.vocab_size == 500 and vocab.mask_id == 499 and len(ds) > 10
  # same ids as tokenizing the text directly (eos line form)
  first_doc = next(sources.read_text_documents(str(corpus_file)))
  reader = sources.MMapIndexedDataset(str(out / "train"))
  assert reader[0].tolist() == encode_line(tok, first_doc[0]).tolist()
  # in-memory text source gives the same block layout as the binarized one (without the valid docs)
  ds_text, _ = pipeline.build_block_dataset(
    {
      "source": "text",
      "path": str(corpus_file),
      "tokenizer": "sentencepiece",
      "sentencepiece_model": str(out / "spm.model"),
    },
    tokens_per_sample=64,
    break_mode="complete_doc",
  )
  assert ds_text[0].tolist() == ds[0].tolist()


def test_sentencepiece_too_large_vocab(tmp_path):
  from data2vec_jax.data.tokenizer import train_sentencepiece

  with pytest.raises(ValueError, match="too small"):
    train_sentencepiece(["a tiny corpus of words"] * 20, tmp_path / "x.model", vocab_size=5000)


def test_sentencepiece_rejects_foreign_model(tmp_path):
  import io

  import sentencepiece as spm

  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(["some words here and there"] * 50),
    model_writer=buf,
    vocab_size=17,
    minloglevel=2,
  )
  (tmp_path / "plain.model").write_bytes(buf.getvalue())
  with pytest.raises(ValueError, match="fairseq layout"):
    SentencePieceTokenizer(tmp_path / "plain.model")


def test_prepare_bpe_and_cli(tmp_path, corpus_file, bpe_files):
  vocab_json, merges_txt = bpe_files
  out = tmp_path / "bpe_out"
  stats = prepare.main(
    [
      "--source",
      "text",
      "--path",
      str(corpus_file),
      "--tokenizer",
      "bpe",
      "--vocab_json",
      str(vocab_json),
      "--merges_txt",
      str(merges_txt),
      "--output_dir",
      str(out),
      "--max_documents",
      "5",
    ]
  )
  tok = BPETokenizer(vocab_json, merges_txt)
  assert stats["splits"]["train"]["documents"] == 5 and stats["dtype"] == "uint16"
  d = Dictionary.load(out / "dict.txt")
  assert d.vocab_info() == tok.vocab
  with pytest.raises(SystemExit):
    prepare.main(["--source", "text", "--tokenizer", "bpe", "--output_dir", str(out)])


# ----------------------------------------------------------------------------------------------
# TFDS without TensorFlow
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)  # a builder class registers its name once per process
def _tiny_builder_cls():
  import tensorflow_datasets as tfds

  class TinyWikiForD2v(tfds.core.GeneratorBasedBuilder):
    """Five 'articles' with paragraphs; registered as tiny_wiki_for_d2v."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text(), "title": tfds.features.Text()}
        ),
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(5)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"title": f"t{i}", "text": f"{i}0 {i}1 {i}2\n\n{i}3 {i}4. {i}5 {i}6\n{i}7\n"}

  return TinyWikiForD2v


def test_tfds_real_builder_array_record(tmp_path):
  cls = _tiny_builder_cls()
  cls(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  assert "tensorflow" not in sys.modules
  docs = list(sources.tfds_documents("tiny_wiki_for_d2v", split="train", data_dir=str(tmp_path)))
  assert sorted(docs) == sorted(
    [[f"{i}0 {i}1 {i}2", f"{i}3 {i}4. {i}5 {i}6", f"{i}7"] for i in range(5)]
  )
  split = list(
    sources.tfds_documents(
      "tiny_wiki_for_d2v", data_dir=str(tmp_path), sentence_split=True, max_documents=1
    )
  )
  assert len(split) == 1 and len(split[0]) == 4  # "x3 x4." and "x5 x6" split
  with pytest.raises(KeyError, match="not in example keys"):
    next(sources.tfds_documents("tiny_wiki_for_d2v", data_dir=str(tmp_path), text_feature="body"))
  with pytest.raises(RuntimeError, match="data_source"):
    next(sources.tfds_documents("tiny_wiki_for_d2v", split="test", data_dir=str(tmp_path)))


def test_tfds_mock_data_with_data_source(bpe_files):
  import tensorflow_datasets as tfds

  _tiny_builder_cls()  # registers the builder name
  vocab_json, merges_txt = bpe_files
  with tfds.testing.mock_data(num_examples=7):
    docs = list(sources.tfds_documents("tiny_wiki_for_d2v", split="train"))
    ds, vocab = pipeline.build_block_dataset(
      {
        "source": "tfds",
        "tfds_name": "tiny_wiki_for_d2v",
        "tokenizer": "bpe",
        "vocab_json": str(vocab_json),
        "merges_txt": str(merges_txt),
      },
      tokens_per_sample=16,
      break_mode="none",
    )
  assert len(docs) == 7 and all(isinstance(s, str) for d in docs for s in d)
  assert len(ds) >= 1 and all(ds[i][0] == vocab.bos_id for i in range(len(ds)))
  assert "tensorflow" not in sys.modules
