"""Text in, features out (issue 20): model directories carry their tokenizer, the Hugging Face
export holds one that `AutoTokenizer` loads with our ids, and `pipeline('feature-extraction')` on
the export returns `encode`'s features. Tiny BPE and sentencepiece tokenizers and random
encoders are built here; nothing downloads."""

from __future__ import annotations

import json
import os
import pydoc_data.topics
import shutil
import sys

import numpy as np
import pytest
import transformers

from data2vec_jax import encode, load_model_tokenizer, load_pretrained, save_pretrained
from data2vec_jax.data.dictionary import Dictionary
from data2vec_jax.data.tokenizer import BPETokenizer, train_sentencepiece
from data2vec_jax.embed import embed, pad_batch, tokenize
from data2vec_jax.embed import main as embed_main
from data2vec_jax.finetune.starting_point import find_tokenizer, resolve_tokenizer
from data2vec_jax.model.config import tiny_config
from data2vec_jax.train.workdir_tokenizer import workdir_tokenizer_files
from data2vec_jax.weights import CheckpointError, save_hf_dir
from data2vec_jax.weights.layout import param_shapes, unflatten
from tests.paths import REPO

sys.path.insert(0, REPO)
import convert_torch_weights as convert_cli  # noqa: E402

sys.path.pop(0)

# Unicode, whitespace runs, tabs/newlines, long words, the empty string, punctuation.
SENTENCES = [
  "The Python language reference.",
  "",
  "   ",
  "  leading, trailing  and  double   spaces ",
  "tabs\tand\nnewlines",
  "ünïcödé ñ 日本語 😀 ﬁ Ｆｕｌｌ",
  "supercalifragilisticexpialidocious" * 2,
  "a" * 40,
  "numbers 3.14159, punctuation?! and (brackets)",
]
# English prose that ships with CPython (the demo's corpus), plus a few accented words.
CORPUS = [
  line.strip()
  for text in list(pydoc_data.topics.topics.values())[:30]
  for line in text.splitlines()
  if line.strip()
][:600] + ["ünïcödé café naïve"] * 5
# The bound on pipeline vs encode features. Outputs are LayerNorm'd (O(1)); float32
# rounds at 1.2e-7 relative and a 2-block forward accumulates tens of roundings per value, so
# 1e-5 (relative and absolute) leaves a wide margin for the different kernels of torch and XLA.
TOL = 1e-5


def _config(vocab_size):
  return tiny_config(
    vocab_size=vocab_size,
    hidden_size=32,
    num_heads=2,
    intermediate_size=48,
    num_layers=2,
    max_positions=130,
  )


def _params(config, seed=0):
  rng = np.random.default_rng(seed)
  return unflatten(
    {k: rng.normal(0, 0.2, s).astype(np.float32) for k, s in param_shapes(config).items()}
  )


def _bpe_files(directory, *, drop=0):
  """GPT-2-style files (vocab.json with GPT-2 ids, no specials) + a fairseq dict.txt listing the
  GPT-2 ids as decimal strings in a shuffled ("frequency") order, less `drop` of them."""
  from tokenizers import ByteLevelBPETokenizer

  os.makedirs(directory, exist_ok=True)
  bpe = ByteLevelBPETokenizer(add_prefix_space=False)
  bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=2, show_progress=False)
  bpe.save_model(directory)
  with open(os.path.join(directory, "vocab.json")) as f:
    n = len(json.load(f))
  order = np.random.default_rng(1).permutation(n)[: n - drop]
  Dictionary.from_symbols([str(i) for i in order], [100] * len(order)).save(
    os.path.join(directory, "dict.txt")
  )
  return tuple(os.path.join(directory, f) for f in ("vocab.json", "merges.txt", "dict.txt"))


@pytest.fixture(scope="module", params=["bpe", "sentencepiece"])
def model_dir(request, tmp_path_factory):
  """A data2vec-jax model directory carrying its tokenizer; the source files are then deleted."""
  source = tmp_path_factory.mktemp(f"{request.param}_source")
  if request.param == "bpe":
    tokenizer = BPETokenizer(*_bpe_files(str(source)))
  else:
    tokenizer = train_sentencepiece(CORPUS, source / "spm.model", vocab_size=200)
  config = _config(tokenizer.vocab.vocab_size)
  directory = tmp_path_factory.mktemp(request.param) / "model"
  save_pretrained(directory, config, _params(config), tokenizer=tokenizer)
  shutil.rmtree(source)  # self-contained: nothing outside the directory is needed
  return str(directory)


@pytest.fixture(scope="module")
def hf_dir(model_dir):
  out = model_dir + "_hf"
  assert convert_cli.main([model_dir, "--to", "hf", "--output", out]) == 0
  return out


def test_exported_auto_tokenizer_gives_our_ids(model_dir, hf_dir):
  ours = load_model_tokenizer(model_dir)
  config, _ = load_pretrained(model_dir)
  theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
  assert theirs.model_max_length == config.max_sequence_length
  assert (theirs.bos_token_id, theirs.pad_token_id, theirs.eos_token_id, theirs.unk_token_id) == (
    0,
    1,
    2,
    3,
  )
  assert theirs.mask_token_id == ours.vocab.mask_id == config.vocab_size - 1
  expected = [row.tolist() for row in tokenize(ours, SENTENCES, config.max_sequence_length)]
  assert [theirs(s)["input_ids"] for s in SENTENCES] == expected
  assert theirs(SENTENCES)["input_ids"] == expected  # batched too
  assert any(len(row) > 12 for row in expected)  # the long words are several tokens


def test_pipeline_features_equal_encode_and_embed(model_dir, hf_dir):
  config, params = load_pretrained(model_dir)
  tokenizer = load_model_tokenizer(model_dir)
  extractor = transformers.pipeline("feature-extraction", model=hf_dir)
  rows = tokenize(tokenizer, SENTENCES, config.max_sequence_length)
  reference = [np.asarray(extractor(s), np.float32)[0] for s in SENTENCES]
  # One padded batch (one compile); pads are masked keys, so real positions are unaffected.
  ids, mask = pad_batch(rows, config.pad_id, config.max_sequence_length)
  hidden = np.asarray(encode(config, params, ids, mask).last_hidden_state)
  for i, ref in enumerate(reference):
    np.testing.assert_allclose(hidden[i, : len(rows[i])], ref, rtol=TOL, atol=TOL)
  # Batched and padded (batch 4: pads in most rows), pooled: same as pooling each alone.
  mean = embed(config, params, tokenizer, SENTENCES, pooling="mean", batch_size=4)
  cls = embed(config, params, tokenizer, SENTENCES, pooling="cls", batch_size=4)
  np.testing.assert_allclose(mean, np.stack([r.mean(0) for r in reference]), rtol=TOL, atol=TOL)
  np.testing.assert_allclose(cls, np.stack([r[0] for r in reference]), rtol=TOL, atol=TOL)
  assert mean.dtype == np.float32 and mean.shape == (len(SENTENCES), config.hidden_size)


def test_embed_layer_truncation_and_cli(model_dir, tmp_path):
  config, params = load_pretrained(model_dir)
  tokenizer = load_model_tokenizer(model_dir)
  text = ["the statement was good"]
  ids = tokenize(tokenizer, text, config.max_sequence_length)[0]
  hidden = encode(config, params, ids[None]).hidden_states
  for layer in (0, 1, -1):
    got = embed(config, params, tokenizer, text, layer=layer, pooling="cls")
    # embed pads the row to 16 tokens: another shape, so equal up to rounding only.
    np.testing.assert_allclose(got[0], np.asarray(hidden[layer])[0, 0], rtol=TOL, atol=TOL)
  with pytest.raises(ValueError, match="layer=3"):
    embed(config, params, tokenizer, text, layer=3)
  long = " ".join(["statement"] * 200)
  with pytest.raises(ValueError, match="text 1 is .* longer than the model's 128: pass truncate"):
    embed(config, params, tokenizer, ["short", long])
  cut = tokenize(tokenizer, [long], config.max_sequence_length, truncate=True)[0]
  assert len(cut) == config.max_sequence_length and cut[0] == 0 and cut[-1] == 2
  # The CLI, on a copy of the directory somewhere else: same rows as the function.
  copy = str(tmp_path / "elsewhere")
  shutil.copytree(model_dir, copy)
  texts = tmp_path / "texts.txt"
  texts.write_text("\n".join(["first line", "", "ünïcödé line"]) + "\n", encoding="utf-8")
  out = str(tmp_path / "feats.npy")
  argv = ["--model", copy, "--input", str(texts), "--output", out, "--layer", "1"]
  assert embed_main(argv + ["--batch-size", "2"]) == 0
  expected = embed(config, params, tokenizer, ["first line", "", "ünïcödé line"], layer=1)
  np.testing.assert_allclose(np.load(out), expected, rtol=TOL, atol=TOL)


def test_hf_import_brings_the_tokenizer_back(model_dir, hf_dir, tmp_path):
  back = str(tmp_path / "back")
  assert convert_cli.main(["--from", "hf", hf_dir, "--to", "jax", "--output", back]) == 0
  ours, again = load_model_tokenizer(model_dir), load_model_tokenizer(back)
  assert json.loads(open(os.path.join(back, "config.json")).read())["tokenizer"]["kind"] in (
    "bpe",
    "sentencepiece",
  )
  assert again.vocab == ours.vocab
  for s in SENTENCES:
    np.testing.assert_array_equal(again.encode(s), ours.encode(s))


def test_fine_tuning_finds_the_model_directory_tokenizer(model_dir):
  kind, files = find_tokenizer(model_dir)
  assert all(os.path.dirname(p) == model_dir for p in files.values() if p)
  tokenizer = resolve_tokenizer({"kind": "auto"}, model_dir)
  ours = load_model_tokenizer(model_dir)
  assert tokenizer.kind == kind == ours.kind
  np.testing.assert_array_equal(tokenizer.encode(SENTENCES[0]), ours.encode(SENTENCES[0]))


def test_a_model_without_tokenizer_loads_and_says_so_when_given_text(tmp_path, capsys):
  config = _config(40)
  params = _params(config)
  save_pretrained(tmp_path / "m", config, params)
  assert load_pretrained(tmp_path / "m")[0] == config
  assert load_model_tokenizer(tmp_path / "m") is None
  with pytest.raises(ValueError, match="carries no tokenizer, so text cannot be turned into"):
    embed(config, params, None, ["text"])
  (tmp_path / "t.txt").write_text("text\n")
  argv = ["--model", str(tmp_path / "m"), "--input", str(tmp_path / "t.txt")]
  assert embed_main(argv + ["--output", str(tmp_path / "f.npy")]) == 1
  assert "carries no tokenizer" in capsys.readouterr().err
  # An HF export without one is refused, unless asked for explicitly.
  hf = str(tmp_path / "hf")
  assert convert_cli.main([str(tmp_path / "m"), "--to", "hf", "--output", hf]) == 1
  assert "has no tokenizer" in capsys.readouterr().err and not os.path.exists(hf)
  assert (
    convert_cli.main([str(tmp_path / "m"), "--to", "hf", "--output", hf, "--no-tokenizer"]) == 0
  )


def test_tokenizers_hf_cannot_represent_are_refused(tmp_path):
  # fairseq maps GPT-2 tokens missing from dict.txt to <unk>; an HF vocab.json cannot.
  lacking = BPETokenizer(*_bpe_files(str(tmp_path / "bpe"), drop=5))
  config = _config(lacking.vocab.vocab_size)
  with pytest.raises(CheckpointError, match="dict.txt lacks 5 of its .* BPE tokens"):
    save_hf_dir(tmp_path / "out1", config, _params(config), tokenizer=lacking)
  assert not os.path.exists(tmp_path / "out1" / "config.json")
  spm_bpe = train_sentencepiece(CORPUS, tmp_path / "bpe.model", vocab_size=200, model_type="bpe")
  config = _config(200)
  with pytest.raises(CheckpointError, match="a bpe sentencepiece model; only unigram"):
    save_hf_dir(tmp_path / "out2", config, _params(config), tokenizer=spm_bpe)
  assert not os.path.exists(tmp_path / "out2" / "model.safetensors")


def test_tokenizer_of_another_vocabulary_or_swapped_files_fail_loudly(tmp_path):
  small = train_sentencepiece(CORPUS, tmp_path / "a.model", vocab_size=150)
  config = _config(200)
  with pytest.raises(ValueError, match="has 150 ids .* embedding table has 200 rows"):
    save_pretrained(tmp_path / "m", config, _params(config), tokenizer=small)
  right = train_sentencepiece(CORPUS, tmp_path / "b.model", vocab_size=200)
  save_pretrained(tmp_path / "m", config, _params(config), tokenizer=right)
  shutil.copyfile(tmp_path / "a.model", tmp_path / "m" / "sentencepiece.model")
  with pytest.raises(CheckpointError, match="the files were replaced"):
    load_model_tokenizer(tmp_path / "m")
  # Re-saving without a tokenizer leaves none behind for discovery to find.
  save_pretrained(tmp_path / "m", config, _params(config))
  assert load_model_tokenizer(tmp_path / "m") is None


def test_pretraining_workdir_names_its_tokenizer(tmp_path):
  vocab, merges, dict_txt = _bpe_files(str(tmp_path / "bin"))
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "recipe.json").write_text("{}")
  data = {"source": "fairseq_bin", "path": str(tmp_path / "bin" / "train")}
  (workdir / "config.json").write_text(json.dumps({"data": data}))
  assert workdir_tokenizer_files(str(workdir)) is None  # only a dict.txt: no tokenizer
  data.update(tokenizer="bpe", vocab_json=vocab, merges_txt=merges)
  (workdir / "config.json").write_text(json.dumps({"data": data}))
  # The binarized data's dict.txt is the pipeline's default dictionary, so it is the model's.
  assert workdir_tokenizer_files(str(workdir)) == (
    "bpe",
    {"vocab_json": vocab, "merges_txt": merges, "dict_txt": dict_txt},
  )
