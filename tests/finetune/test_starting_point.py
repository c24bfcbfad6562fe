"""Issue 25, the tokenizer / fine-tuning side: nothing silently wrong.

* Tokenizer identity: a model directory records the sha256 of its tokenizer files and an HF
  directory's tokenizer files must agree with each other (and with its record); a tokenizer
  swapped for another of the same size is refused by embed and by fine-tuning.
* A fine-tuning run's model/ and hf/ carry the tokenizer: `pipeline('text-classification')` on
  hf/ predicts what our model predicts, eval_only from model/ finds its tokenizer, and the
  converter keeps the label names.
* An HF classifier's id2label decides which output is which label (matched by name, or refused).
* An HF init with token_type rows >= 1 needs init_drop_token_type_rows, which fine-tuning takes.
* A pretraining init whose newest checkpoint is corrupt falls back to the previous one, and a
  failed init leaves the pretraining workdir untouched.
* Small messages: file lines in data and embed errors, refused pickle globals, a run stopped
  before its first evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys

import numpy as np
import pytest

from data2vec_jax.configs import finetune as finetune_config
from data2vec_jax.data.tokenizer import SentencePieceTokenizer, train_sentencepiece
from data2vec_jax.embed import main as embed_main
from data2vec_jax.finetune.loop import FinetuneError, finetune_and_evaluate
from data2vec_jax.finetune.starting_point import load_starting_point, resolve_tokenizer
from data2vec_jax.weights import CheckpointError, save_hf_dir
from data2vec_jax.weights.model_tokenizer import load_model_tokenizer
from data2vec_jax.weights.pretrained import load_checkpoint, load_pretrained, save_pretrained
from tests.finetune_helpers import sentiment_examples, tiny_model_dir, write_sst2_tsv  # noqa: E402
from tests.paths import REPO

sys.path.insert(0, REPO)
import convert_torch_weights as convert_cli  # noqa: E402

sys.path.pop(0)

N_TRAIN, N_DEV = 256, 64
# 4 epochs of 8 updates: the tiny model learns the polarity words (dev accuracy well above 0.5),
# so a classifier read with its rows swapped would score visibly worse.
OVERRIDES = {
  "train.batch_size": 32,
  "train.eval_batch_size": 64,
  "optimizer.max_epochs": 4,
  "optimizer.lr": 2e-3,
  "optimizer.max_update": 32,
  "optimizer.warmup_updates": 2,
  "train.log_every": 8,
  "train.tensorboard": False,
  "model.dropout": 0.0,
  "model.attention_dropout": 0.0,
}


def make_config(init: str, glue: str, **overrides):
  c = finetune_config.get_config("task=sst2")
  c.init = init
  c.data.path = glue
  for key, value in {**OVERRIDES, **overrides}.items():
    *sections, field = key.split(".")
    node = c
    for section in sections:
      node = node[section]
    node[field] = value
  return c


def _other_sentencepiece(path: str, size: int) -> SentencePieceTokenizer:
  """A sentencepiece model of `size` ids trained on other text (every word reversed)."""
  texts, _ = sentiment_examples(400, seed=5)
  reversed_words = [" ".join(w[::-1] for w in t.split()) for t in texts]
  tokenizer = train_sentencepiece(reversed_words, path, vocab_size=size)
  assert tokenizer.vocab.vocab_size == size
  return tokenizer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """A model directory that carries its sentencepiece tokenizer (config.json section with the
  files' sha256), another tokenizer of the same size, and the sentiment task as GLUE TSVs."""
  root = tmp_path_factory.mktemp("travel")
  source = tiny_model_dir(str(root / "source"))
  config, params = load_pretrained(source)
  tokenizer = SentencePieceTokenizer(os.path.join(source, "spm.model"))
  model = str(root / "model")
  save_pretrained(model, config, params, tokenizer=tokenizer)
  other = _other_sentencepiece(str(root / "other.model"), config.vocab_size)
  glue = write_sst2_tsv(str(root / "glue"), n_train=N_TRAIN, n_dev=N_DEV)
  return {"model": model, "other": other, "glue": glue, "root": root}


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
  """A fine-tuning run from scratch (the init's architecture and tokenizer) with the HF export;
  its log lines are kept."""
  workdir = str(tmp_path_factory.mktemp("run"))
  records: list[str] = []
  handler = logging.Handler()
  handler.emit = lambda record: records.append(record.getMessage())
  logging.getLogger().addHandler(handler)
  level = logging.getLogger().level
  logging.getLogger().setLevel(logging.INFO)
  try:
    config = make_config(
      assets["model"], assets["glue"], **{"train.export_hf": True, "from_scratch": True}
    )
    results = finetune_and_evaluate(config, workdir)
  finally:
    logging.getLogger().removeHandler(handler)
    logging.getLogger().setLevel(level)
  return workdir, results, "\n".join(records)


# ----------------------------------------------------------------------------------------------
# Tokenizer identity


def _swap_model_dir_tokenizer(directory: str, other: SentencePieceTokenizer) -> None:
  """The other tokenizer's files under the directory's names (its dict.txt agrees with it)."""
  from data2vec_jax.data.tokenizer import sentencepiece_dictionary

  shutil.copyfile(
    other.files["sentencepiece_model"], os.path.join(directory, "sentencepiece.model")
  )
  sentencepiece_dictionary(other).save(os.path.join(directory, "dict.txt"))


def test_a_swapped_tokenizer_of_the_same_size_is_refused(assets, tmp_path, capsys, caplog):
  model, other = assets["model"], assets["other"]
  section = json.load(open(os.path.join(model, "config.json")))["tokenizer"]
  assert set(section["sha256"]) == {"sentencepiece.model", "dict.txt"}
  texts = tmp_path / "texts.txt"
  texts.write_text("the film was good\n", encoding="utf-8")
  argv = ["--input", str(texts), "--output", str(tmp_path / "f.npy")]

  swapped = str(tmp_path / "swapped")
  shutil.copytree(model, swapped)
  _swap_model_dir_tokenizer(swapped, other)
  assert other.vocab == load_model_tokenizer(model).vocab  # the same size and special ids
  with pytest.raises(CheckpointError, match="sentencepiece.model is not the tokenizer file"):
    load_model_tokenizer(swapped)
  assert embed_main(["--model", swapped, *argv]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "the files were replaced" in err
  with pytest.raises(CheckpointError, match="the files were replaced"):
    resolve_tokenizer({"kind": "auto"}, swapped)  # fine-tuning's discovery
  with pytest.raises(FinetuneError, match="init: .*sentencepiece.model is not the tokenizer"):
    finetune_and_evaluate(make_config(swapped, assets["glue"]), str(tmp_path / "ft_swapped"))

  # A directory from before fingerprints: read, with a warning that it cannot be checked.
  old = str(tmp_path / "old")
  shutil.copytree(model, old)
  document = json.load(open(os.path.join(old, "config.json")))
  del document["tokenizer"]["sha256"]
  json.dump(document, open(os.path.join(old, "config.json"), "w"))
  with caplog.at_level(logging.WARNING):
    assert load_model_tokenizer(old).vocab == load_model_tokenizer(model).vocab
  assert "records no sha256 of the tokenizer files" in caplog.text

  # An HF directory: its files must agree with each other, and with config.json's record.
  config, params = load_pretrained(model)
  hf = str(tmp_path / "hf")
  save_hf_dir(hf, config, params, tokenizer=load_model_tokenizer(model))
  recorded = json.load(open(os.path.join(hf, "config.json")))["data2vec_jax_tokenizer_sha256"]
  assert set(recorded) == {"tokenizer.json", "sentencepiece.model", "dict.txt"}
  other_hf = str(tmp_path / "other_hf")
  save_hf_dir(other_hf, config, params, tokenizer=other)
  only_json = str(tmp_path / "hf_only_json")  # transformers' file swapped, not ours
  shutil.copytree(hf, only_json)
  shutil.copyfile(
    os.path.join(other_hf, "tokenizer.json"), os.path.join(only_json, "tokenizer.json")
  )
  all_three = str(tmp_path / "hf_all_three")  # a consistent set, but not the model's
  shutil.copytree(hf, all_three)
  for name in recorded:
    shutil.copyfile(os.path.join(other_hf, name), os.path.join(all_three, name))
  for directory, message in (
    (only_json, "tokenizer.json is not the tokenizer file"),
    (all_three, "sentencepiece.model is not the tokenizer file"),
  ):
    with pytest.raises(CheckpointError, match=message):
      load_model_tokenizer(directory)
    with pytest.raises(FinetuneError, match="init: .*" + message):
      finetune_and_evaluate(make_config(directory, assets["glue"]), str(tmp_path / "ft_hf"))
  # Without the record (a directory from elsewhere), disagreeing files are still refused.
  for directory in (only_json,):
    document = json.load(open(os.path.join(directory, "config.json")))
    del document["data2vec_jax_tokenizer_sha256"]
    json.dump(document, open(os.path.join(directory, "config.json"), "w"))
    with pytest.raises(CheckpointError, match="tokenizer.json and .* are different tokenizers"):
      load_model_tokenizer(directory)
    assert embed_main(["--model", directory, *argv]) == 1
    assert "are different tokenizers" in capsys.readouterr().err
  assert load_model_tokenizer(hf).vocab == load_model_tokenizer(model).vocab  # the intact one


# ----------------------------------------------------------------------------------------------
# Fine-tuned models travel; label names; HF token types


def _dev_texts_and_labels():
  texts, labels = sentiment_examples(N_DEV, 2)  # write_sst2_tsv's dev split
  return texts, labels


def _our_predictions(model_dir: str, texts: list[str]) -> np.ndarray:
  """argmax of our SequenceClassifier on `texts` (<s> text </s>), one padded batch (pads are
  masked keys, so each row's logits are its own)."""
  import jax
  import jax.numpy as jnp

  from data2vec_jax.embed import pad_batch, tokenize
  from data2vec_jax.finetune.hf_io import classifier_params_from_checkpoint
  from data2vec_jax.finetune.model import SequenceClassifier

  config, params, _ = classifier_params_from_checkpoint(model_dir, "sequence")
  rows = tokenize(load_model_tokenizer(model_dir), texts, config.max_sequence_length)
  ids, _ = pad_batch(rows, config.pad_id, config.max_sequence_length)
  model = SequenceClassifier(config, 2, 0.0)
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, deterministic=True))
  return np.argmax(np.asarray(apply(params, jnp.asarray(ids))), axis=-1)


@pytest.mark.slow
def test_a_fine_tuned_model_travels_with_its_tokenizer_and_labels(assets, run, tmp_path):
  import transformers

  workdir, results, log = run
  # The log says the run starts from random weights.
  assert "sst2 from scratch (random weights; the architecture and tokenizer of" in log
  assert results["best"]["score"] >= 0.75, results["evaluations"]
  model_dir, hf_dir = os.path.join(workdir, "model"), os.path.join(workdir, "hf")
  assert json.load(open(os.path.join(model_dir, "config.json")))["tokenizer"]["kind"] == (
    "sentencepiece"
  )
  # transformers' pipeline on hf/ tokenises with the run's tokenizer and predicts our classes.
  texts, labels = _dev_texts_and_labels()
  classify = transformers.pipeline("text-classification", model=hf_dir)
  names = [row["label"] for row in classify(texts)]
  ours = _our_predictions(model_dir, texts)
  assert names == [("negative", "positive")[i] for i in ours]
  accuracy = float(np.mean(ours == labels))
  assert accuracy == pytest.approx(results["best"]["score"], abs=1e-12)
  # eval_only from model/ finds the tokenizer model/ carries, and scores the reported weights.
  again = finetune_and_evaluate(
    make_config(model_dir, assets["glue"], eval_only=True), str(tmp_path / "eval_only")
  )
  assert again["score"] == pytest.approx(results["best"]["score"], abs=1e-12)
  # The converter's HF export of model/ keeps the label names (and the tokenizer).
  converted = str(tmp_path / "converted")
  argv = [model_dir, "--to", "hf", "--output", converted]
  architecture = ["--hf-architecture", "Data2VecTextForSequenceClassification"]
  assert convert_cli.main(argv + architecture) == 0
  hf_config = json.load(open(os.path.join(converted, "config.json")))
  assert hf_config["id2label"] == {"0": "negative", "1": "positive"}
  assert [
    r["label"] for r in transformers.pipeline("text-classification", model=converted)(texts)
  ] == names


def _rewrite_hf_classifier(source: str, target: str, order: list[int]) -> str:
  """A copy of an HF classifier directory with its output rows and id2label permuted."""
  from safetensors.numpy import load_file, save_file

  shutil.copytree(source, target)
  state = load_file(os.path.join(source, "model.safetensors"))
  config = json.load(open(os.path.join(source, "config.json")))
  labels = [config["id2label"][str(i)] for i in order]
  for key in ("classifier.out_proj.weight", "classifier.out_proj.bias"):
    state[key] = np.ascontiguousarray(state[key][order])
  config["id2label"] = {str(i): n for i, n in enumerate(labels)}
  config["label2id"] = {n: i for i, n in enumerate(labels)}
  json.dump(config, open(os.path.join(target, "config.json"), "w"))
  save_file(state, os.path.join(target, "model.safetensors"), metadata={"format": "pt"})
  return target


@pytest.mark.slow
def test_hf_classifier_labels_are_matched_by_name(assets, run, tmp_path):
  workdir, results, _ = run
  hf_dir = os.path.join(workdir, "hf")
  reference = results["best"]["score"]
  # The same classifier with its rows (and id2label) in the other order: the same dev score
  # (eval_only; init_classifier reads the head through the same matching).
  swapped = _rewrite_hf_classifier(hf_dir, str(tmp_path / "swapped"), [1, 0])
  scored = finetune_and_evaluate(
    make_config(swapped, assets["glue"], eval_only=True), str(tmp_path / "eval_only")
  )
  assert scored["score"] == pytest.approx(reference, abs=1e-12)


def _hf_encoder_dir(assets, target: str, *, token_types=None, classifier_names=None) -> str:
  """An HF directory of the assets' random encoder (+ its tokenizer): a random sequence
  classifier named `classifier_names`, and/or token_type_embeddings row 1 = `token_types`."""
  from safetensors.numpy import load_file, save_file

  from data2vec_jax.finetune.hf_io import export_classifier_to_hf

  config, params = load_pretrained(assets["model"])
  tokenizer = load_model_tokenizer(assets["model"])
  if classifier_names is None:
    save_hf_dir(target, config, params, tokenizer=tokenizer)
  else:
    rng = np.random.default_rng(0)
    d, c = config.hidden_size, len(classifier_names)
    head = {
      "dense": {"kernel": rng.normal(0, 0.1, (d, d)), "bias": np.zeros(d)},
      "out_proj": {"kernel": rng.normal(0, 0.1, (d, c)), "bias": np.zeros(c)},
    }
    tree = {"encoder": params, "classifier": head}
    export_classifier_to_hf(target, config, tree, label_names=classifier_names, tokenizer=tokenizer)
  if token_types is not None:
    state = load_file(os.path.join(target, "model.safetensors"))
    key = next(k for k in state if k.endswith("embeddings.token_type_embeddings.weight"))
    state[key] = np.concatenate([state[key], token_types[None]]).astype(np.float32)
    save_file(state, os.path.join(target, "model.safetensors"), metadata={"format": "pt"})
    hf_config = json.load(open(os.path.join(target, "config.json")))
    hf_config["type_vocab_size"] = 2
    json.dump(hf_config, open(os.path.join(target, "config.json"), "w"))
  return target


def test_hf_init_with_token_type_rows_takes_the_converters_option(assets, tmp_path):
  typed = _hf_encoder_dir(assets, str(tmp_path / "typed"), token_types=np.full(32, 0.01))
  config = make_config(typed, assets["glue"])
  with pytest.raises(FinetuneError, match=r"Set --config.init_drop_token_type_rows=True to drop"):
    finetune_and_evaluate(config, str(tmp_path / "refused"))
  start = load_starting_point(typed, str(tmp_path / "ok"), drop_token_type_rows=True)
  _, params = load_pretrained(assets["model"])
  np.testing.assert_array_equal(
    start.encoder_params["embeddings"]["token_embedding"]["embedding"],
    params["embeddings"]["token_embedding"]["embedding"],
  )


def test_classifier_label_names_that_do_not_match_are_refused(assets, tmp_path):
  other = _hf_encoder_dir(assets, str(tmp_path / "other"), classifier_names=["good", "bad"])
  for flag in ("eval_only", "init_classifier"):
    config = make_config(other, assets["glue"], **{flag: True})
    with pytest.raises(FinetuneError, match=r"predicts the labels \['good', 'bad'\] but sst2 has"):
      finetune_and_evaluate(config, str(tmp_path / flag))


def test_label_names_split_on_commas_like_text_columns(assets):
  from data2vec_jax.finetune.data import text_columns
  from data2vec_jax.finetune.settings import resolve_settings

  config = finetune_config.get_config("task=mine")
  config.init, config.data.path = assets["model"], assets["glue"]
  # What `--config.data.label_names=pos,neg,neu` sets (ml_collections does not split it).
  config.data.label_names = ("pos,neg,neu",)
  settings = resolve_settings(config)
  assert settings.label_names == ("pos", "neg", "neu") and settings.num_labels == 3
  assert text_columns(("a,b",)) == ("a", "b")


# ----------------------------------------------------------------------------------------------
# Starting from a pretraining workdir


def _pretraining_workdir(directory: str) -> str:
  """A pretraining workdir (recipe.json + checkpoints 2 and 4 of a tiny state), built without
  training: what `export_from_checkpoint` reads."""
  import jax

  from data2vec_jax.configs import demo
  from data2vec_jax.runtime import sharding as sharding_lib
  from data2vec_jax.runtime.checkpoint import Checkpointer
  from data2vec_jax.runtime.optimizer import make_optimizer
  from data2vec_jax.train.recipe import recipe_from_config, recipe_to_dict
  from data2vec_jax.train.state import create_train_state

  config = demo.get_config("steps=4")
  config.model.update(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64)
  config.objective.average_top_k_layers = 2
  recipe = recipe_from_config(config, 56, 55)
  os.makedirs(directory)
  json.dump(recipe_to_dict(recipe, 16), open(os.path.join(directory, "recipe.json"), "w"))
  tx = make_optimizer(recipe.optimizer)
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  with sharding_lib.activate(mesh):
    state = create_train_state(recipe, tx, jax.random.PRNGKey(0), mesh, 16)
    checkpointer = Checkpointer(os.path.join(directory, "checkpoints"), async_save=False)
    for step in (2, 4):
      checkpointer.save(step, state.replace(step=step), {"epoch": 0}, force=True)
    checkpointer.close()
  return directory


def _listing(directory: str) -> list[str]:
  return sorted(
    os.path.relpath(os.path.join(root, name), directory)
    for root, dirs, files in os.walk(directory)
    for name in dirs + files
  )


def test_init_from_a_workdir_with_a_corrupt_newest_checkpoint_falls_back(tmp_path, caplog):
  workdir = _pretraining_workdir(str(tmp_path / "pretraining"))
  arrays = [
    os.path.join(root, name)
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "4", "state"))
    for name in files
    if os.sep + "d" + os.sep in os.path.join(root, name)
  ]
  assert arrays
  for path in arrays:  # garbage where the arrays were
    with open(path, "r+b") as f:
      f.write(b"\x00garbage" * 8)
  before = _listing(workdir)
  with caplog.at_level(logging.WARNING):
    start = load_starting_point(workdir, str(tmp_path / "ft"))
  assert load_checkpoint(start.model_path).metadata["step"] == 2
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  ours = [w for w in warnings if w.startswith("init:")]
  assert any("checkpoint step 4 of" in w and "is corrupt" in w for w in ours), warnings
  assert all("\n" not in w for w in ours)
  assert not [w for w in warnings if "Traceback" in w or "never retrieved" in w], warnings
  assert _listing(workdir) == before  # the init workdir is only read: nothing moved or added

  # A workdir without checkpoints: one line, and no checkpoints/ created inside it.
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  shutil.copyfile(os.path.join(workdir, "recipe.json"), os.path.join(empty, "recipe.json"))
  with pytest.raises(FinetuneError, match="a pretraining workdir without any checkpoint"):
    finetune_and_evaluate(make_config(empty, "unused"), str(tmp_path / "ft_empty"))
  assert os.listdir(empty) == ["recipe.json"]


# ----------------------------------------------------------------------------------------------
# Messages


def test_an_over_long_example_is_named_by_its_file_line(tmp_path):
  from data2vec_jax.finetune.encoding import encode_split
  from data2vec_jax.finetune.generic_task import read_generic_split

  path = tmp_path / "train.tsv"
  rows = ["short text"] * 3 + [" ".join(["word"] * 50)]
  # A header, a blank line (not a row) and the over-long example on file line 6 (example 3).
  path.write_text("sentence\tlabel\n" + "a b\t1\n\n" + "".join(f"{r}\t0\n" for r in rows[1:]))
  split = read_generic_split(str(path), text_columns=("sentence",), label_column="label")
  with pytest.raises(ValueError, match=rf"^{path}:6 \(generic/train\): \d+ tokens, over the"):
    encode_split(split, _CharTokenizer(), bos_id=0, eos_id=2, max_length=20, too_long="error")


class _CharTokenizer:
  """One id per character (for length errors only)."""

  def encode_batch(self, texts):
    return [np.full(len(t), 5, np.int32) for t in texts]


def test_embed_names_the_line_that_is_not_utf8(assets, tmp_path, capsys):
  texts = tmp_path / "texts.txt"
  texts.write_bytes(b"first\nsecond\nbad \xff byte\n")
  argv = ["--model", assets["model"], "--input", str(texts), "--output", str(tmp_path / "f.npy")]
  assert embed_main(argv) == 1
  err = capsys.readouterr().err
  assert f"{texts}:3: not valid UTF-8" in err and err.count("\n") == 1


def test_a_torch_pickle_naming_eval_is_refused_by_name(tmp_path):
  import torch

  from data2vec_jax.weights.torch_io import load_torch_pickle

  class Payload:
    def __reduce__(self):
      return (eval, ("1 + 1",))

  torch.save({"model": Payload()}, tmp_path / "evil.pt")
  with pytest.raises(CheckpointError, match="refused to unpickle: the file needs global eval"):
    load_torch_pickle(tmp_path / "evil.pt")


def test_a_run_stopped_before_its_first_evaluation_says_so(caplog):
  from data2vec_jax.finetune.grid import _log_result

  results = {
    "task": "rte",
    "lr": 2e-5,
    "seed": 1,
    "score": None,
    "reported": None,
    "report": "best",
    "stop_reason": "preempted",
    "updates": 3,
    "total_updates": 100,
  }
  with caplog.at_level(logging.INFO):
    _log_result(results)
  assert "rte lr 2.0e-05 seed 1: no dev score: preempted at update 3 of 100, before its first" in (
    caplog.text
  )
  assert "nan" not in caplog.text and "None" not in caplog.text
