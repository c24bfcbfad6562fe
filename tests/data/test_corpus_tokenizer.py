"""The tokenizer follows the data: a corpus prepared by `data.prepare` (spm.model beside it,
recorded in prepare_stats.json) carries its tokenizer into training and into the model directory,
so `embed` works with no tokenizer flag anywhere (data2vec_jax/data/corpus_tokenizer.py).
End to end (d2v-prepare -> d2v-train -> d2v-embed, no tokenizer flag): the installed commands in
tests/e2e/test_packaging.py::test_fresh_environment_from_pyproject_alone."""

from __future__ import annotations

import json
import os

import ml_collections
import pytest

from data2vec_jax.data import prepare
from data2vec_jax.data.corpus_tokenizer import recorded_tokenizer, with_corpus_tokenizer
from data2vec_jax.data.sources import PREPARE_STATS_FILE


def write_stats(folder, **fields) -> str:
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, PREPARE_STATS_FILE), "w") as f:
    json.dump(fields, f)
  return os.path.join(str(folder), "train")


def data_config(**fields) -> ml_collections.ConfigDict:
  base = dict(
    dict_txt="",
    source="fairseq_bin",
    path="",
    tokenizer="bpe",
    sentencepiece_model="",
    vocab_json="",
    merges_txt="",
  )
  return ml_collections.ConfigDict({"data": base | fields})


def test_a_recorded_path_from_another_directory_falls_back_to_the_file_beside_the_corpus(
  tmp_path, monkeypatch
):
  # prepare ran in another directory: it recorded 'bin/spm.model', relative to that one.
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "spm.model").write_bytes(b"model")
  prefix = write_stats(
    tmp_path / "bin", tokenizer="sentencepiece", sentencepiece_model="x/spm.model"
  )
  monkeypatch.chdir(tmp_path / "bin")
  assert recorded_tokenizer(prefix) == (
    "sentencepiece",
    {"sentencepiece_model": str(tmp_path / "bin" / "spm.model")},
  )


@pytest.mark.parametrize(
  "stats",
  [
    {},  # no prepare_stats.json
    {"tokenizer": "bpe", "sentencepiece_model": None, "dict_txt": "d/dict.txt"},
    {"tokenizer": "sentencepiece", "sentencepiece_model": "gone/elsewhere.model"},
  ],
)
def test_nothing_is_taken_when_the_corpus_records_no_usable_tokenizer(tmp_path, stats):
  prefix = write_stats(tmp_path, **stats) if stats else str(tmp_path / "train")
  assert recorded_tokenizer(prefix) is None
  config = data_config(path=prefix)
  assert with_corpus_tokenizer(config) is config


def test_the_config_gets_the_corpus_tokenizer_unless_it_names_its_own(tmp_path):
  (tmp_path / "spm.model").write_bytes(b"model")
  prefix = write_stats(
    tmp_path, tokenizer="sentencepiece", sentencepiece_model=str(tmp_path / "spm.model")
  )
  config = data_config(path=prefix)
  filled = with_corpus_tokenizer(config)
  assert filled.data.tokenizer == "sentencepiece"
  assert filled.data.sentencepiece_model == str(tmp_path / "spm.model")
  assert config.data.sentencepiece_model == ""  # the caller's config is left alone
  own = data_config(path=prefix, vocab_json="v.json", merges_txt="m.txt")
  assert with_corpus_tokenizer(own) is own
  text = data_config(path=prefix, source="text")
  assert with_corpus_tokenizer(text) is text


def test_a_bpe_corpus_records_its_files_for_training(tmp_path, monkeypatch):
  """prepare --tokenizer bpe records vocab.json + merges.txt (absolute: training may run in
  another directory); the config then names them and the corpus's dict.txt."""
  from tokenizers import ByteLevelBPETokenizer

  from data2vec_jax.data.offline_corpus import write_offline_corpus
  from data2vec_jax.data.tokenizer import load_tokenizer

  monkeypatch.chdir(tmp_path)
  write_offline_corpus("corpus.txt", max_docs=10)
  os.makedirs("bpe")
  bpe = ByteLevelBPETokenizer(add_prefix_space=False)
  bpe.train(["corpus.txt"], vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
  bpe.save_model("bpe")
  vocab = json.loads((tmp_path / "bpe" / "vocab.json").read_text())
  (tmp_path / "bpe" / "vocab.json").write_text(json.dumps(vocab | {"<mask>": len(vocab)}))
  prepare.main(
    "--source text --path corpus.txt --tokenizer bpe --vocab_json bpe/vocab.json "
    "--merges_txt bpe/merges.txt --output_dir bin".split()
  )
  monkeypatch.chdir(tmp_path / "bin")  # training elsewhere
  filled = with_corpus_tokenizer(data_config(path="train"))
  assert filled.data.tokenizer == "bpe"
  assert filled.data.vocab_json == str(tmp_path / "bpe" / "vocab.json")
  assert filled.data.merges_txt == str(tmp_path / "bpe" / "merges.txt")
  assert filled.data.dict_txt == str(tmp_path / "bin" / "dict.txt")
  tok = load_tokenizer(
    "bpe",
    vocab_json=filled.data.vocab_json,
    merges_txt=filled.data.merges_txt,
    dict_txt=filled.data.dict_txt,
  )
  assert len(tok.encode("The for statement.")) > 0
