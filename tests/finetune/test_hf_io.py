"""Fine-tuned classifiers to and from `transformers` (`finetune.hf_io`): exported directories load
with `Data2VecTextFor{Sequence,Token}Classification.from_pretrained` (no missing or unexpected
keys, the fine-tuned config fields we set) and compute our logits; HF fine-tuned directories and
data2vec-jax directories import into our params tree with their label names; misuse fails with a
message that says what is wrong."""

from __future__ import annotations

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from data2vec_jax.finetune.hf_io import (
  classifier_params_from_checkpoint,
  export_classifier_to_hf,
  save_classifier_pretrained,
)
from data2vec_jax.finetune.model import SequenceClassifier, TokenClassifier
from data2vec_jax.model.config import tiny_config
from data2vec_jax.weights import CheckpointError, load_hf_dir, save_hf_dir
from data2vec_jax.weights.layout import flatten
from data2vec_jax.weights.parity import padded_batch, reference_model
from data2vec_jax.weights.pretrained import save_pretrained
from tests.paths import REPO

CONFIG = tiny_config(hidden_size=48, num_heads=3, intermediate_size=100, num_layers=2)
MODELS = {"sequence": SequenceClassifier, "token": TokenClassifier}
HF_CLASSES = {
  "sequence": "Data2VecTextForSequenceClassification",
  "token": "Data2VecTextForTokenClassification",
}
MNLI = ["entailment", "neutral", "contradiction"]
NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def close(ours, ref, what: str) -> None:
  """As tests/test_finetune_parity.close: max |ours - torch| <= 1e-5 * max(1, max |torch|)
  (float32 sums in another order, a few layers deep; a wrong tensor is orders of magnitude
  above)."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
  bound = 1e-5 * max(1.0, float(np.max(np.abs(ref))))
  assert float(np.max(np.abs(ours - ref))) <= bound, what


def random_params(kind: str, num_labels: int, seed: int) -> dict:
  """Our fine-tuned tree with every leaf redrawn (N(0, 0.05); LayerNorm scales N(1, 0.05)), so
  a transposed, swapped or zero-initialised tensor would show in the logits."""
  ids = jnp.asarray(padded_batch(CONFIG, (4, 3))[0])
  shapes = nn.meta.unbox(
    jax.eval_shape(lambda: MODELS[kind](CONFIG, num_labels).init(jax.random.key(0), ids))
  )["params"]
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
    lambda path, s: (
      (1.0 if "scale" in jax.tree_util.keystr(path) else 0.0) + 0.05 * rng.standard_normal(s.shape)
    ).astype(np.float32),
    shapes,
  )


def our_logits(kind: str, params: dict, ids: np.ndarray) -> np.ndarray:
  head = flatten(params["classifier"])
  num_labels = np.shape(head["out_proj/bias" if kind == "sequence" else "bias"])[0]
  with jax.default_matmul_precision("highest"):
    return np.asarray(
      MODELS[kind](CONFIG, num_labels).apply({"params": params}, jnp.asarray(ids, jnp.int32))
    )


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return (
      model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
      .logits.float()
      .numpy()
    )


def assert_same_logits(kind: str, params: dict, model, *, seed: int) -> None:
  """Ours vs HF on a right-padded batch; token logits at real tokens only (pad outputs are
  unspecified: the encoder zeroes pad embeddings, HF does not)."""
  ids, mask = padded_batch(CONFIG, (11, 7, 4, 11), seed=seed)
  ours, ref = our_logits(kind, params, ids), hf_logits(model, ids, mask)
  if kind == "token":
    ours, ref = ours[mask != 0], ref[mask != 0]
  close(ours, ref, f"{kind} logits")


def assert_params_equal(a: dict, b: dict) -> None:
  fa, fb = flatten(a), flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])), k


def load_hf(kind: str, directory):
  model, info = getattr(transformers, HF_CLASSES[kind]).from_pretrained(
    directory, output_loading_info=True
  )
  assert not any(info.values()), info  # missing, unexpected, mismatched keys, errors
  return model.eval()


# ---------------------------------------------------------------------------------------------
# Export.


@pytest.mark.parametrize("num_labels", [3, 1])  # MNLI-like classification; STS-B regression
def test_sequence_classifier_exports_to_transformers(tmp_path, num_labels):
  params = random_params("sequence", num_labels, seed=num_labels)
  names = MNLI if num_labels == 3 else ["similarity"]
  task = "mnli" if num_labels == 3 else "stsb"
  notes = export_classifier_to_hf(
    tmp_path / "hf",
    CONFIG,
    params,
    kind="sequence",
    label_names=names,
    finetuning_task=task,
    classifier_dropout=0.0,
  )
  assert notes == ["wrote 41 tensors to model.safetensors"], notes
  model = load_hf("sequence", tmp_path / "hf")
  cfg = model.config
  assert cfg.id2label == dict(enumerate(names)) and cfg.label2id == {
    n: i for i, n in enumerate(names)
  }
  assert cfg.num_labels == num_labels
  assert cfg.problem_type == ("regression" if num_labels == 1 else "single_label_classification")
  assert cfg.finetuning_task == task and cfg.classifier_dropout == 0.0
  assert cfg.architectures == ["Data2VecTextForSequenceClassification"]
  assert cfg.type_vocab_size == 1 and cfg.layer_norm_eps == CONFIG.layer_norm_eps
  assert_same_logits("sequence", params, model, seed=num_labels)

  # ... and reads back bit for bit, with its label names.
  config, back, labels = classifier_params_from_checkpoint(
    tmp_path / "hf", "sequence", num_labels=num_labels
  )
  assert config == CONFIG
  assert labels == names
  assert_params_equal(back, params)


def test_token_classifier_exports_to_transformers(tmp_path):
  params = random_params("token", len(NER), seed=5)
  export_classifier_to_hf(tmp_path / "hf", CONFIG, params, kind="token", label_names=NER)
  model = load_hf("token", tmp_path / "hf")
  assert model.config.id2label == dict(enumerate(NER))
  assert model.config.architectures == ["Data2VecTextForTokenClassification"]
  assert model.config.problem_type is None  # the token classifier's loss does not read it
  assert set(load_file(tmp_path / "hf" / "model.safetensors")) >= {
    "classifier.weight",
    "classifier.bias",
  }
  assert_same_logits("token", params, model, seed=6)
  _, back, labels = classifier_params_from_checkpoint(tmp_path / "hf", "token")
  assert labels == NER
  assert_params_equal(back, params)


def test_default_labels_and_save_hf_dir_backward_compatible(tmp_path):
  params = random_params("sequence", 2, seed=9)
  export_classifier_to_hf(tmp_path / "plain", CONFIG, params)
  cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
  assert cfg["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}
  assert cfg["problem_type"] == "single_label_classification"
  assert "finetuning_task" not in cfg and "classifier_dropout" not in cfg
  assert classifier_params_from_checkpoint(tmp_path / "plain")[2] is None  # placeholders only

  # The old call (no fine-tuning fields) writes what it wrote before: no problem_type.
  save_hf_dir(
    tmp_path / "old",
    CONFIG,
    params["encoder"],
    heads={"classifier": params["classifier"]},
    architecture="Data2VecTextForSequenceClassification",
  )
  cfg = json.loads((tmp_path / "old" / "config.json").read_text())
  assert "problem_type" not in cfg and cfg["label2id"] == {"LABEL_0": 0, "LABEL_1": 1}


# ---------------------------------------------------------------------------------------------
# Import.


@pytest.mark.parametrize("kind", ["sequence", "token"])
def test_hf_fine_tuned_classifier_imports(tmp_path, kind):
  names = MNLI if kind == "sequence" else NER
  model = reference_model(
    CONFIG,
    seed=21,
    architecture=HF_CLASSES[kind],
    id2label=dict(enumerate(names)),
    label2id={n: i for i, n in enumerate(names)},
  )
  model.save_pretrained(tmp_path / "hf")
  config, params, labels = classifier_params_from_checkpoint(
    tmp_path / "hf", kind, num_labels=len(names)
  )
  assert labels == names and config.hidden_size == CONFIG.hidden_size
  assert_same_logits(kind, params, model, seed=22)

  # Round trip through a data2vec-jax model directory: the helper, and plain save_pretrained
  # with the head under 'classifier' (as a training script would write it).
  save_classifier_pretrained(tmp_path / "jax", config, params, kind=kind, label_names=labels)
  save_pretrained(
    tmp_path / "plain",
    config,
    params["encoder"],
    head_params={"classifier": params["classifier"]},
    metadata={"label_names": labels},
  )
  for directory in ("jax", "plain"):
    config2, params2, labels2 = classifier_params_from_checkpoint(tmp_path / directory, kind)
    assert config2 == config and labels2 == names
    assert_params_equal(params2, params)

  # HF -> jax dir -> HF with the conversion CLI is tensor-exact for both heads.
  sys.path.insert(0, REPO)
  try:
    import convert_torch_weights as cli
  finally:
    sys.path.pop(0)
  assert (
    cli.main(["--from", "hf", str(tmp_path / "hf"), "--to", "jax", "--output", f"{tmp_path}/c"])
    == 0
  )
  out = str(tmp_path / "back")
  assert (
    cli.main(
      [
        "--to",
        "hf",
        f"{tmp_path}/c",
        "--output",
        out,
        "--hf-architecture",
        HF_CLASSES[kind],
        "--no-tokenizer",  # the test's HF model was saved without one
      ]
    )
    == 0
  )
  original, exported = (
    load_file(tmp_path / "hf" / "model.safetensors"),
    load_file(f"{out}/model.safetensors"),
  )
  assert original.keys() == exported.keys()
  assert all(np.array_equal(original[k], exported[k]) for k in original)
  assert load_hf(kind, out).config.id2label == dict(enumerate(names))


# ---------------------------------------------------------------------------------------------
# Errors.


def test_export_errors_say_what_is_wrong(tmp_path):
  seq = random_params("sequence", 3, seed=31)
  tok = random_params("token", 3, seed=32)
  out = tmp_path / "out"
  with pytest.raises(CheckpointError, match=r"params have no 'classifier' head .*\['encoder'\]"):
    export_classifier_to_hf(out, CONFIG, {"encoder": seq["encoder"]})
  with pytest.raises(CheckpointError, match="it is a token classifier head: pass kind='token'"):
    export_classifier_to_hf(out, CONFIG, tok, kind="sequence")
  with pytest.raises(
    CheckpointError, match="it is a sequence classifier head: pass kind='sequence'"
  ):
    export_classifier_to_hf(out, CONFIG, seq, kind="token")
  with pytest.raises(CheckpointError, match=r"2 label names \['a', 'b'\] .* with 3 outputs"):
    export_classifier_to_hf(out, CONFIG, seq, label_names=["a", "b"])
  with pytest.raises(CheckpointError, match="not unique"):
    export_classifier_to_hf(out, CONFIG, seq, label_names=["a", "b", "a"])
  with pytest.raises(
    CheckpointError, match="problem_type applies to .*SequenceClassification only"
  ):
    export_classifier_to_hf(out, CONFIG, tok, kind="token", problem_type="regression")
  with pytest.raises(CheckpointError, match="unknown problem_type 'ner'"):
    export_classifier_to_hf(out, CONFIG, seq, problem_type="ner")
  with pytest.raises(CheckpointError, match="single output; one output is 'regression'"):
    export_classifier_to_hf(
      out, CONFIG, random_params("sequence", 1, 3), problem_type="single_label_classification"
    )
  bad = {**seq, "classifier": {**seq["classifier"], "dense": tok["classifier"]}}
  with pytest.raises(CheckpointError, match=r"dense/kernel: got \(48, 3\), expected \(48, 48\)"):
    export_classifier_to_hf(out, CONFIG, bad)
  with pytest.raises(
    CheckpointError, match="no 'token_classifier' head \\(have \\['classifier'\\]\\)"
  ):
    save_hf_dir(
      out,
      CONFIG,
      seq["encoder"],
      heads={"classifier": seq["classifier"]},
      architecture="Data2VecTextForTokenClassification",
    )
  with pytest.raises(CheckpointError, match="has no label output"):
    save_hf_dir(out, CONFIG, seq["encoder"], label_names=["a"])
  assert not out.exists()  # every check runs before anything is written


def test_import_errors_say_what_is_wrong(tmp_path):
  reference_model(CONFIG, seed=41).save_pretrained(tmp_path / "base")
  with pytest.raises(
    CheckpointError, match=r"no sequence classifier head; heads found: \['pooler'\]"
  ):
    classifier_params_from_checkpoint(tmp_path / "base", "sequence")

  reference_model(
    CONFIG, seed=42, architecture="Data2VecTextForTokenClassification", num_labels=4
  ).save_pretrained(tmp_path / "token")
  with pytest.raises(CheckpointError, match="may hold a token classifier: pass kind='token'"):
    classifier_params_from_checkpoint(tmp_path / "token", "sequence")
  with pytest.raises(
    CheckpointError, match="token classifier head has 4 labels, expected num_labels=9"
  ):
    classifier_params_from_checkpoint(tmp_path / "token", "token", num_labels=9)
  assert load_hf_dir(tmp_path / "token").heads.keys() == {"token_classifier"}

  seq = random_params("sequence", 3, seed=43)
  save_pretrained(
    tmp_path / "jax",
    CONFIG,
    seq["encoder"],
    head_params={"classifier": seq["classifier"]},
    metadata={"label_names": ["a", "b"]},
  )
  with pytest.raises(CheckpointError, match=r"2 label names \['a', 'b'\] .* with 3 outputs"):
    classifier_params_from_checkpoint(tmp_path / "jax", "sequence")
  with pytest.raises(CheckpointError, match="may hold a sequence classifier: pass kind='sequence'"):
    classifier_params_from_checkpoint(tmp_path / "jax", "token")
  with pytest.raises(ValueError, match="kind must be one of"):
    classifier_params_from_checkpoint(tmp_path / "jax", "ner")


def test_a_fine_tuning_runs_model_dir_exports_with_the_regression_scale_undone(tmp_path):
  """finetune.py's model/ (metadata: label names, task, STS-B's training target scale 1/5) ->
  `python -m data2vec_jax.finetune.hf_io`: HF predicts on the raw 0-5 scale, i.e. our
  output / 0.2, and the run's settings land in config.json."""
  from data2vec_jax.finetune.hf_io import main as export_main

  params = random_params("sequence", 1, seed=11)
  model_dir = str(tmp_path / "model")
  save_pretrained(
    model_dir,
    CONFIG,
    params["encoder"],
    head_params={"classifier": params["classifier"]},
    metadata={
      "task": "stsb",
      "label_names": None,
      "regression_scale": 0.2,
      "classifier_dropout": 0.0,
    },
  )
  export_main(["--model_dir", model_dir, "--output", str(tmp_path / "hf")])
  model = load_hf("sequence", tmp_path / "hf")
  assert model.config.problem_type == "regression" and model.config.finetuning_task == "stsb"
  assert model.config.classifier_dropout == 0.0
  ids, mask = padded_batch(CONFIG, (9, 5, 7), seed=2)
  close(our_logits("sequence", params, ids) / 0.2, hf_logits(model, ids, mask), "stsb logits")
