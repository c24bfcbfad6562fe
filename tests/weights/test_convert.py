"""Weight conversion: HF and fairseq import, HF export, exact round trips, safe unpickling, errors.

Every model here is built locally with random, non-trivial weights (no downloads). fairseq
checkpoints are written in the test with the real key layout (fairseq is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from data2vec_jax.model.config import tiny_config
from data2vec_jax.weights import CheckpointError, load_fairseq, load_hf_dir, save_hf_dir
from data2vec_jax.weights.hf import hf_config_from
from data2vec_jax.weights.layout import flatten
from data2vec_jax.weights.parity import (
  diff_report,
  padded_batch,
  reference_features,
  reference_model,
)
from data2vec_jax.weights.pretrained import encode, load_checkpoint, save_pretrained
from tests.paths import REPO

NON_FINITE = "NaN/Inf values; the checkpoint is corrupt or diverged, load an earlier one"
CONFIG = tiny_config(
  vocab_size=120, hidden_size=48, num_heads=3, intermediate_size=100, num_layers=2, max_positions=20
)


def _params_equal(a, b) -> bool:
  fa, fb = flatten(a), flatten(b)
  return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def _save_hf(model, directory) -> str:
  model.save_pretrained(directory)
  return str(directory)


def _parity(converted, model, max_diff=1e-5):
  ids, mask = padded_batch(converted.config, (9, 4), seed=1)
  ours = encode(converted.config, converted.params, ids, mask)
  report = diff_report(ours, reference_features(model, ids, mask), mask)
  assert report.max_diff <= max_diff, report.table()


# ---------------------------------------------------------------------------------------------
# Hugging Face.


@pytest.mark.parametrize(
  "architecture",
  ["Data2VecTextModel", "Data2VecTextForMaskedLM", "Data2VecTextForSequenceClassification"],
)
def test_hf_round_trip_is_exact_and_loads_cleanly(tmp_path, architecture):
  model = reference_model(CONFIG, seed=3, architecture=architecture)
  src = _save_hf(model, tmp_path / "src")
  converted = load_hf_dir(src)
  assert converted.config == CONFIG.replace(dropout=0.1, attention_dropout=0.1)
  _parity(converted, model)

  # torch -> jax (through a saved data2vec-jax directory) -> torch.
  save_pretrained(
    tmp_path / "jax",
    converted.config,
    converted.params,
    head_params=converted.heads,
    metadata=converted.metadata,
  )
  converted = load_checkpoint(tmp_path / "jax")
  out = tmp_path / "out"
  save_hf_dir(
    out,
    converted.config,
    converted.params,
    heads=converted.heads,
    metadata=converted.metadata,
    architecture=architecture,
  )
  original, exported = load_file(f"{src}/model.safetensors"), load_file(f"{out}/model.safetensors")
  assert original.keys() == exported.keys()
  for key in original:
    assert np.array_equal(original[key], exported[key]), key

  reloaded, info = getattr(transformers, architecture).from_pretrained(
    out, output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info
  for (k, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
    assert torch.equal(a, b), k


def test_roberta_checkpoint_imports_like_data2vec(tmp_path):
  d2v = reference_model(CONFIG, seed=4, architecture="Data2VecTextForMaskedLM")
  hf = d2v.config.to_dict()
  hf.update(model_type="roberta", architectures=["RobertaForMaskedLM"])
  hf.pop("transformers_version", None)
  roberta = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**hf))
  state = {k.replace("data2vec_text.", "roberta."): v for k, v in d2v.state_dict().items()}
  roberta.load_state_dict(state)
  a = load_hf_dir(_save_hf(d2v, tmp_path / "d2v"))
  b = load_hf_dir(_save_hf(roberta, tmp_path / "roberta"))
  assert _params_equal(a.params, b.params) and _params_equal(a.heads, b.heads)
  assert b.metadata["source_architecture"] == "RobertaForMaskedLM"


def test_pytorch_model_bin_is_read_weights_only(tmp_path):
  model = reference_model(CONFIG, seed=5)
  src = _save_hf(model, tmp_path / "st")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
  torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
  a, b = load_hf_dir(src), load_hf_dir(bin_dir)
  assert _params_equal(a.params, b.params)
  assert b.metadata["source_file"] == "pytorch_model.bin"


def test_token_type_row_zero_is_folded_and_other_rows_refused(tmp_path):
  model = reference_model(CONFIG.replace(num_layers=1), seed=6)
  with torch.no_grad():
    model.embeddings.token_type_embeddings.weight.normal_(0, 0.3)  # non-zero row 0
  converted = load_hf_dir(_save_hf(model, tmp_path / "one"))
  assert any("folded" in n for n in converted.notes)
  _parity(converted, model)  # HF with token_type_ids == 0 adds exactly row 0

  hf = model.config.to_dict()
  hf.update(type_vocab_size=2)
  hf.pop("transformers_version", None)
  two = transformers.Data2VecTextModel(transformers.Data2VecTextConfig(**hf)).eval()
  state = model.state_dict()
  state["embeddings.token_type_embeddings.weight"] = torch.cat(
    [state["embeddings.token_type_embeddings.weight"], torch.ones(1, CONFIG.hidden_size)]
  )
  two.load_state_dict(state)
  src = _save_hf(two, tmp_path / "two")
  with pytest.raises(CheckpointError, match="rows >= 1 are non-zero"):
    load_hf_dir(src)
  dropped = load_hf_dir(src, drop_token_type_rows=True)
  assert _params_equal(dropped.params, converted.params)


def _edit_hf_dir(tmp_path, *, config_changes=None, state_edit=None):
  model = reference_model(CONFIG.replace(num_layers=1), seed=7)
  src = _save_hf(model, tmp_path / "edit")
  if config_changes:
    cfg = json.loads((tmp_path / "edit" / "config.json").read_text())
    cfg.update(config_changes)
    (tmp_path / "edit" / "config.json").write_text(json.dumps(cfg))
  if state_edit:
    state = load_file(f"{src}/model.safetensors")
    state_edit(state)
    save_file(state, f"{src}/model.safetensors", metadata={"format": "pt"})
  return src


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"hidden_act": "relu"}, "unsupported hidden_act 'relu'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
    ({"is_decoder": True}, "decoder"),
    ({"architectures": ["Data2VecTextForCausalLM"]}, "unsupported architecture"),
    ({"model_type": "bert", "architectures": ["BertModel"]}, "unsupported model_type 'bert'"),
    ({"layer_norm_eps": None}, r"lacks \['layer_norm_eps'\]"),
  ],
)
def test_unsupported_hf_configs_are_refused(tmp_path, changes, message):
  with pytest.raises(CheckpointError, match=message):
    load_hf_dir(_edit_hf_dir(tmp_path, config_changes=changes))


def test_hf_key_problems_are_all_listed(tmp_path):
  def edit(state):
    del state["encoder.layer.0.output.dense.bias"]
    state["encoder.layer.0.extra.weight"] = np.zeros(3, np.float32)
    state["encoder.layer.0.intermediate.dense.weight"] = np.zeros((99, 48), np.float32)

  with pytest.raises(CheckpointError) as err:
    load_hf_dir(_edit_hf_dir(tmp_path, state_edit=edit))
  message = str(err.value)
  assert "missing keys ['encoder.layer.0.output.dense.bias']" in message
  assert "unexpected keys ['encoder.layer.0.extra.weight']" in message
  assert "encoder.layer.0.intermediate.dense.weight: got (99, 48), expected (100, 48)" in message


def test_truncated_safetensors_gives_a_clear_error(tmp_path):
  src = _edit_hf_dir(tmp_path)
  path = os.path.join(src, "model.safetensors")
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated or corrupt"):
    load_hf_dir(src)


def test_masked_lm_export_needs_an_lm_head(tmp_path):
  converted = load_hf_dir(_save_hf(reference_model(CONFIG, seed=8), tmp_path / "base"))
  with pytest.raises(CheckpointError, match="no LM head"):
    save_hf_dir(
      tmp_path / "out",
      converted.config,
      converted.params,
      heads=converted.heads,
      architecture="Data2VecTextForMaskedLM",
    )


def test_export_without_pooler_writes_zero_pooler(tmp_path):
  model = reference_model(CONFIG, seed=9, architecture="Data2VecTextForMaskedLM")
  converted = load_hf_dir(_save_hf(model, tmp_path / "mlm"))
  notes = save_hf_dir(
    tmp_path / "base",
    converted.config,
    converted.params,
    heads=converted.heads,
    architecture="Data2VecTextModel",
  )
  assert any("zero pooler" in n for n in notes) and any("lm_head" in n for n in notes)
  reloaded, info = transformers.Data2VecTextModel.from_pretrained(
    tmp_path / "base", output_loading_info=True
  )
  assert not any(info.values()), info
  cfg = json.loads((tmp_path / "base" / "config.json").read_text())
  assert cfg["type_vocab_size"] == 1 and cfg["layer_norm_eps"] == CONFIG.layer_norm_eps
  _parity(converted, reloaded.eval())


# ---------------------------------------------------------------------------------------------
# fairseq. The mapping below is written out independently of the library (from the table in the
# reference notes), so a wrong library table would show as a parity failure.

_FS_LAYER = {
  "attention.self.query": "self_attn.q_proj",
  "attention.self.key": "self_attn.k_proj",
  "attention.self.value": "self_attn.v_proj",
  "attention.output.dense": "self_attn.out_proj",
  "attention.output.LayerNorm": "self_attn_layer_norm",
  "intermediate.dense": "fc1",
  "output.dense": "fc2",
  "output.LayerNorm": "final_layer_norm",
}
_FS_EMB = {
  "embeddings.word_embeddings": "embed_tokens",
  "embeddings.position_embeddings": "embed_positions",
  "embeddings.LayerNorm": "layernorm_embedding",
}


def _to_fairseq_names(hf_state):
  """HF base-model state dict -> fairseq `encoder.sentence_encoder`-local names."""
  out = {}
  for key, value in hf_state.items():
    module, leaf = key.rsplit(".", 1)
    if module in _FS_EMB:
      out[f"{_FS_EMB[module]}.{leaf}"] = value.clone()
    elif module.startswith("encoder.layer."):
      _, _, i, rest = module.split(".", 3)
      out[f"layers.{i}.{_FS_LAYER[rest]}.{leaf}"] = value.clone()
  return out


def _fairseq_checkpoint(model, *, head="regression", ema=True, cfg_style="dict"):
  """A fairseq data2vec checkpoint dict built from an HF base model's weights.

  The EMA teacher gets perturbed blocks and deliberately stale embeddings.
  """
  config = model.config
  local = _to_fairseq_names(model.state_dict())
  state = {f"encoder.sentence_encoder.{k}": v for k, v in local.items()}
  state["encoder.sentence_encoder.version"] = torch.tensor([3.0])
  d = config.hidden_size
  gen = torch.Generator().manual_seed(0)
  rand = lambda *s: torch.randn(*s, generator=gen) * 0.05
  if head == "regression":
    state.update(
      {
        "encoder.regression_head.0.weight": rand(2 * d, d),
        "encoder.regression_head.0.bias": rand(2 * d),
        "encoder.regression_head.2.weight": rand(d, 2 * d),
        "encoder.regression_head.2.bias": rand(d),
      }
    )
  else:  # legacy RobertaLMHead of the released nlp_base.pt, decoder tied to embed_tokens
    state.update(
      {
        "encoder.lm_head.dense.weight": rand(d, d),
        "encoder.lm_head.dense.bias": rand(d),
        "encoder.lm_head.layer_norm.weight": 1 + rand(d),
        "encoder.lm_head.layer_norm.bias": rand(d),
        "encoder.lm_head.weight": local["embed_tokens.weight"].clone(),
        "encoder.lm_head.bias": rand(config.vocab_size),
      }
    )
  if ema:
    teacher = {
      k: (v + rand(*v.shape) if k.startswith("layers.") else v * 0 + 7.0) for k, v in local.items()
    }
    teacher["version"] = torch.tensor([3.0])
    state["encoder._ema"] = teacher
  hyper = dict(
    encoder_embed_dim=d,
    encoder_layers=config.num_hidden_layers,
    encoder_attention_heads=config.num_attention_heads,
    encoder_ffn_embed_dim=config.intermediate_size,
    activation_fn="gelu",
    encoder_normalize_before=False,
    layernorm_embedding=True,
    no_scale_embedding=True,
    max_positions=config.max_position_embeddings - 2,
    dropout=0.1,
  )
  checkpoint = {"model": state, "optimizer_history": [], "extra_state": {"epoch": 1}}
  if cfg_style == "dict":  # current data2vec: nested TransformerConfig, interpolated positions
    checkpoint["cfg"] = {
      "task": {"tokens_per_sample": hyper["max_positions"]},
      "model": {
        "_name": "data2vec_text",
        "max_positions": "${task.tokens_per_sample}",
        "transformer": {
          "dropout": 0.1,
          "attention_dropout": 0.1,
          "activation_fn": "gelu",
          "layernorm_embedding": True,
          "no_scale_embedding": True,
          "encoder": {
            "embed_dim": d,
            "layers": config.num_hidden_layers,
            "attention_heads": config.num_attention_heads,
            "ffn_embed_dim": config.intermediate_size,
            "normalize_before": False,
            "learned_pos": True,
          },
        },
      },
    }
  else:
    checkpoint["args"] = argparse.Namespace(**hyper)
  return checkpoint, local


@pytest.fixture(scope="module")
def base_model():
  return reference_model(CONFIG, seed=11)


def test_fairseq_student_teacher_and_regression_head(tmp_path, base_model):
  checkpoint, local = _fairseq_checkpoint(base_model)
  torch.save(checkpoint, tmp_path / "ckpt.pt")
  student = load_fairseq(tmp_path / "ckpt.pt")
  hf = load_hf_dir(_save_hf(base_model, tmp_path / "hf"))
  assert _params_equal(student.params, hf.params)
  _parity(student, base_model)
  assert "encoder.sentence_encoder.version" in student.ignored
  assert any(i.startswith("encoder._ema") for i in student.ignored)
  head = student.heads["regression_head"]
  assert np.array_equal(
    head["dense_0"]["kernel"], checkpoint["model"]["encoder.regression_head.0.weight"].numpy().T
  )

  teacher = load_fairseq(tmp_path / "ckpt.pt", use_ema=True)
  ema = checkpoint["model"]["encoder._ema"]
  fc1 = np.stack([ema[f"layers.{i}.fc1.weight"].numpy().T for i in range(CONFIG.num_layers)])
  assert np.array_equal(teacher.params["layers"]["fc1"]["kernel"], fc1)
  # Embeddings come from the student, not from _ema's stale copies (all 7.0 here).
  assert np.array_equal(
    teacher.params["embeddings"]["token_embedding"]["embedding"],
    local["embed_tokens.weight"].numpy(),
  )
  assert any("_ema's differing embedding entries ignored" in n for n in teacher.notes)
  with pytest.raises(CheckpointError, match="no LM head"):
    save_hf_dir(
      tmp_path / "x",
      student.config,
      student.params,
      heads=student.heads,
      architecture="Data2VecTextForMaskedLM",
    )


def test_fairseq_args_namespace_and_legacy_lm_head(tmp_path, base_model):
  checkpoint, _ = _fairseq_checkpoint(base_model, head="lm_head", ema=False, cfg_style="args")
  torch.save(checkpoint, tmp_path / "legacy.pt")
  converted = load_fairseq(tmp_path / "legacy.pt")
  assert converted.config.num_heads == CONFIG.num_heads
  assert "decoder" not in converted.heads["lm_head"]  # tied to embed_tokens
  save_hf_dir(
    tmp_path / "mlm",
    converted.config,
    converted.params,
    heads=converted.heads,
    metadata=converted.metadata,
    architecture="Data2VecTextForMaskedLM",
  )
  mlm, info = transformers.Data2VecTextForMaskedLM.from_pretrained(
    tmp_path / "mlm", output_loading_info=True
  )
  assert not any(info.values()), info
  assert torch.equal(mlm.lm_head.dense.weight, checkpoint["model"]["encoder.lm_head.dense.weight"])
  assert torch.equal(
    mlm.lm_head.decoder.weight, mlm.data2vec_text.embeddings.word_embeddings.weight
  )
  _parity(converted, mlm.eval())
  with pytest.raises(CheckpointError, match="use_ema=True but the checkpoint has no"):
    load_fairseq(tmp_path / "legacy.pt", use_ema=True)


_FAKE_OMEGACONF = '''
"""A stand-in for omegaconf with the same pickled structure (content dicts of nodes)."""
import enum, typing

class Metadata:
  def __init__(self, ref_type=typing.Any, object_type=None, key=None):
    self.ref_type, self.object_type, self.key, self.optional, self.flags = (
        ref_type, object_type, key, True, {})

class Node:
  def __getstate__(self):
    return dict(self.__dict__)

class AnyNode(Node):
  def __init__(self, value, key=None):
    self._val, self._metadata, self._parent = value, Metadata(key=key), None

class DictConfig(Node):
  def __init__(self, content):
    self._metadata, self._parent = Metadata(object_type=dict), None
    self._content = {k: DictConfig(v) if isinstance(v, dict) else AnyNode(v, k)
                     for k, v in content.items()}

class Choice(enum.Enum):
  C10D = "c10d"
'''


def test_fairseq_omegaconf_cfg_is_read_without_omegaconf(tmp_path, base_model, monkeypatch):
  checkpoint, _ = _fairseq_checkpoint(base_model, ema=False)
  module_dir = tmp_path / "fake_modules"
  module_dir.mkdir()
  (module_dir / "omegaconf.py").write_text(textwrap.dedent(_FAKE_OMEGACONF))
  monkeypatch.syspath_prepend(str(module_dir))
  import omegaconf  # the fake, importable only while saving

  cfg = dict(checkpoint["cfg"])
  cfg["distributed_training"] = {"ddp_backend": omegaconf.Choice.C10D}
  checkpoint["cfg"] = omegaconf.DictConfig(cfg)
  torch.save(checkpoint, tmp_path / "omega.pt")
  monkeypatch.delitem(sys.modules, "omegaconf")
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(module_dir)])

  converted = load_fairseq(tmp_path / "omega.pt")
  assert "omegaconf" not in sys.modules  # nothing was imported, only stand-ins were made
  assert converted.config.num_layers == CONFIG.num_layers
  assert _params_equal(converted.params, load_fairseq_params_from(base_model))


def load_fairseq_params_from(model):
  from data2vec_jax.weights.layout import params_from_reference
  from data2vec_jax.weights.torch_io import to_numpy

  cfg = load_hf_config_from(model)
  return params_from_reference(
    {
      k: to_numpy(v, k)
      for k, v in model.state_dict().items()
      if not k.startswith(("pooler", "embeddings.token_type"))
    },
    cfg,
  )


def load_hf_config_from(model):
  from data2vec_jax.weights.hf import config_from_hf

  return config_from_hf(model.config.to_dict())


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused(tmp_path, base_model, monkeypatch):
  marker = tmp_path / "pwned"
  checkpoint, _ = _fairseq_checkpoint(base_model, ema=False)
  checkpoint["extra_state"] = _Evil(marker)
  torch.save(checkpoint, tmp_path / "evil.pt")
  with pytest.raises(CheckpointError, match=r"refused to unpickle.*system") as err:
    load_fairseq(tmp_path / "evil.pt")
  assert not marker.exists()
  _assert_no_unsafe_advice(str(err.value))

  # Second stage (file also holds omegaconf objects): the restricted unpickler refuses too.
  module_dir = tmp_path / "fake_modules"
  module_dir.mkdir()
  (module_dir / "omegaconf.py").write_text(textwrap.dedent(_FAKE_OMEGACONF))
  monkeypatch.syspath_prepend(str(module_dir))
  import omegaconf

  checkpoint["cfg"] = omegaconf.DictConfig({"model": {"encoder_layers": 2}})
  torch.save(checkpoint, tmp_path / "evil2.pt")
  monkeypatch.delitem(sys.modules, "omegaconf")
  with pytest.raises(CheckpointError, match=r"refus.*system"):
    load_fairseq(tmp_path / "evil2.pt")
  assert not marker.exists()

  # A plain pickle (not a torch zip) with an evil global.
  with open(tmp_path / "plain.pt", "wb") as f:
    pickle.dump(_Evil(marker), f)
  with pytest.raises(CheckpointError):
    load_fairseq(tmp_path / "plain.pt")
  assert not marker.exists()


def test_fairseq_errors_name_the_problem(tmp_path, base_model):
  checkpoint, _ = _fairseq_checkpoint(base_model, ema=False)
  torch.save(checkpoint, tmp_path / "good.pt")
  data = (tmp_path / "good.pt").read_bytes()
  (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated or corrupt"):
    load_fairseq(tmp_path / "trunc.pt")

  bad_cfg = {**checkpoint, "cfg": json.loads(json.dumps(checkpoint["cfg"]))}
  bad_cfg["cfg"]["model"]["transformer"]["encoder"]["layers"] = 3
  torch.save(bad_cfg, tmp_path / "layers.pt")
  with pytest.raises(CheckpointError, match="says 3 layers but the state dict has 2"):
    load_fairseq(tmp_path / "layers.pt")

  no_cfg = {"model": checkpoint["model"]}
  torch.save(no_cfg, tmp_path / "nocfg.pt")
  with pytest.raises(CheckpointError, match="never guessed"):
    load_fairseq(tmp_path / "nocfg.pt")

  state = dict(checkpoint["model"])
  del state["encoder.sentence_encoder.layers.1.fc2.bias"]
  state["encoder.sentence_encoder.layers.0.fc1.weight"] = torch.zeros(7, 48)
  state["encoder.something_else"] = torch.zeros(1)
  torch.save({**checkpoint, "model": state}, tmp_path / "keys.pt")
  with pytest.raises(CheckpointError) as err:
    load_fairseq(tmp_path / "keys.pt")
  message = str(err.value)
  assert "missing keys ['layers.1.fc2.bias']" in message
  assert "unexpected keys ['encoder.something_else']" in message
  assert "layers.0.fc1.weight: got (7, 48), expected (100, 48)" in message

  relu = json.loads(json.dumps(checkpoint["cfg"]))
  relu["model"]["transformer"]["activation_fn"] = "relu"
  torch.save({**checkpoint, "cfg": relu}, tmp_path / "relu.pt")
  with pytest.raises(CheckpointError, match="activation_fn 'relu'"):
    load_fairseq(tmp_path / "relu.pt")


def test_cli_converts_and_reports(tmp_path, base_model, capsys):
  sys.path.insert(0, REPO)
  try:
    import convert_torch_weights as cli
  finally:
    sys.path.pop(0)
  checkpoint, _ = _fairseq_checkpoint(base_model, head="lm_head")
  torch.save(checkpoint, tmp_path / "nlp.pt")
  assert (
    cli.main(
      [
        "--from",
        "fairseq",
        str(tmp_path / "nlp.pt"),
        "--to",
        "jax",
        "--ema",
        "--output",
        str(tmp_path / "jax"),
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert "fairseq (EMA teacher)" in out and "head 'lm_head'" in out and "16 arrays" in out
  assert (
    cli.main(
      [
        "--from",
        "auto",
        str(tmp_path / "jax"),
        "--to",
        "hf",
        "--output",
        str(tmp_path / "hf"),
        "--hf-architecture",
        "Data2VecTextForMaskedLM",
        "--no-tokenizer",  # a fairseq .pt carries no tokenizer files
      ]
    )
    == 0
  )
  assert "wrote 42 tensors" in capsys.readouterr().out
  _, info = transformers.Data2VecTextForMaskedLM.from_pretrained(
    tmp_path / "hf", output_loading_info=True
  )
  assert not any(info.values()), info
  assert (
    cli.main(
      [
        "--from",
        "hf",
        str(tmp_path / "hf"),
        "--to",
        "jax",
        "--ema",
        "--output",
        str(tmp_path / "x"),
      ]
    )
    == 1
  )
  assert "--ema applies to fairseq" in capsys.readouterr().err


def test_folded_token_type_keeps_masked_lm_logits(tmp_path):
  """HF ties the LM decoder to the *unfolded* embeddings; the export must keep those logits."""
  model = reference_model(
    CONFIG.replace(num_layers=1), seed=12, architecture="Data2VecTextForMaskedLM"
  )
  with torch.no_grad():
    model.data2vec_text.embeddings.token_type_embeddings.weight.normal_(0, 0.3)
  converted = load_hf_dir(_save_hf(model, tmp_path / "src"))
  assert "decoder" in converted.heads["lm_head"]
  save_hf_dir(
    tmp_path / "out",
    converted.config,
    converted.params,
    heads=converted.heads,
    architecture="Data2VecTextForMaskedLM",
  )
  exported, info = transformers.Data2VecTextForMaskedLM.from_pretrained(
    tmp_path / "out", output_loading_info=True
  )
  assert not any(info.values()), info
  ids, mask = padded_batch(converted.config, (8, 5), seed=4)
  ids_t, mask_t = torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask)
  with torch.no_grad():
    a = model(ids_t, attention_mask=mask_t).logits
    b = exported.eval()(ids_t, attention_mask=mask_t).logits
  assert (a - b)[mask_t.bool()].abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------
# Bad input: non-finite weights, and files that are not PyTorch checkpoints at all.


def _assert_no_unsafe_advice(message):
  """torch's errors advise re-running with weights_only=False: never relayed, never suggested."""
  assert "weights_only" not in message and "retry" not in message.lower(), message
  assert "re-run" not in message.lower(), message


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_non_finite_hf_weights_are_refused_naming_the_tensor(tmp_path, weights_file):
  src = _edit_hf_dir(tmp_path)
  state = {k: v.copy() for k, v in load_file(f"{src}/model.safetensors").items()}
  path = os.path.join(src, weights_file)

  def write(state):
    if weights_file == "model.safetensors":
      save_file(state, path, metadata={"format": "pt"})
    else:
      (tmp_path / "edit" / "model.safetensors").unlink(missing_ok=True)
      torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)

  write(state)
  assert load_hf_dir(src).metadata["source_file"] == weights_file  # clean: loads
  key = "encoder.layer.0.intermediate.dense.weight"
  state[key][0, 0], state[key][3, 1] = np.nan, -np.inf
  write(state)
  with pytest.raises(CheckpointError) as err:
    load_hf_dir(src)
  assert str(err.value) == f"{path}: tensor '{key}' has 2 {NON_FINITE}"


def test_non_finite_fairseq_weights_are_refused_naming_the_tensor(tmp_path, base_model):
  checkpoint, _ = _fairseq_checkpoint(base_model)
  torch.save(checkpoint, tmp_path / "clean.pt")
  load_fairseq(tmp_path / "clean.pt", use_ema=True)  # clean: loads

  # The EMA teacher is read only with use_ema, so only then does its Inf matter.
  checkpoint["model"]["encoder._ema"]["layers.1.fc2.bias"][5] = float("inf")
  torch.save(checkpoint, tmp_path / "ema.pt")
  load_fairseq(tmp_path / "ema.pt")
  with pytest.raises(CheckpointError) as err:
    load_fairseq(tmp_path / "ema.pt", use_ema=True)
  assert str(err.value) == (
    f"{tmp_path / 'ema.pt'}: tensor 'encoder._ema[layers.1.fc2.bias]' has 1 {NON_FINITE}"
  )

  key = "encoder.sentence_encoder.layers.0.fc1.weight"
  checkpoint["model"][key][0, :3] = float("nan")
  torch.save(checkpoint, tmp_path / "nan.pt")
  with pytest.raises(CheckpointError) as err:
    load_checkpoint(tmp_path / "nan.pt")
  assert str(err.value) == f"{tmp_path / 'nan.pt'}: tensor '{key}' has 3 {NON_FINITE}"


def _write_non_checkpoint(tmp_path, kind):
  """A file named like a checkpoint that is not one: random bytes, empty, text, truncated."""
  path = tmp_path / f"{kind}.pt"
  if kind == "random":
    path.write_bytes(np.random.default_rng(0).bytes(4096))
  elif kind == "empty":
    path.write_bytes(b"")
  elif kind == "text":
    path.write_text("model weights are in the other folder\n")
  elif kind == "plain pickle":
    path.write_bytes(pickle.dumps({"model": {}}))
  else:  # a real torch.save file, cut in half
    torch.save({"model": {"w": torch.randn(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
  return path


@pytest.mark.parametrize(
  "kind, reason",
  [
    ("random", "neither a zip archive nor a pickle"),
    ("empty", "empty file"),
    ("text", "neither a zip archive nor a pickle"),
    ("plain pickle", "a pickle not written by torch.save"),
    ("truncated", "truncated or corrupt zip archive"),
  ],
)
def test_files_that_are_not_pytorch_checkpoints_say_so(tmp_path, kind, reason):
  path = _write_non_checkpoint(tmp_path, kind)
  with pytest.raises(CheckpointError) as err:
    load_fairseq(path)
  assert str(err.value) == f"{path}: not a PyTorch checkpoint ({reason})"
  _assert_no_unsafe_advice(str(err.value))

  hf_dir = tmp_path / "hf"  # the same refusal for an HF directory's pytorch_model.bin
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text(json.dumps(hf_config_from(CONFIG, "Data2VecTextModel")))
  os.replace(path, hf_dir / "pytorch_model.bin")
  with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: not a PyTorch checkpoint \("):
    load_hf_dir(hf_dir)
