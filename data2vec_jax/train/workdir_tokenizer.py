"""The tokenizer a pretraining workdir trained with, read from its `config.json` data section.

A workdir is pretraining's own layout (recipe.json, config.json, data/), so reading one lives
here, not in `weights/`: the export (`train.export`) gives the model directory this tokenizer, and
fine-tuning (`finetune.starting_point`) finds it when `init` is a workdir or its `model/`.
"""

from __future__ import annotations

import json
import logging
import os

from data2vec_jax.data.tokenizer import Tokenizer, load_tokenizer
from data2vec_jax.data.training_input import python_docs_sentencepiece_path
from data2vec_jax.train.recipe import RECIPE_FILE
from data2vec_jax.weights.model_tokenizer import TokenizerFiles


def workdir_tokenizer_files(workdir: str) -> TokenizerFiles | None:
  """(kind, files) of the tokenizer a pretraining workdir's data config used, or None (not a
  workdir, or its data names no tokenizer files, e.g. binarized data with only a dict.txt)."""

  config_path = os.path.join(workdir, "config.json")
  if not (os.path.isfile(os.path.join(workdir, RECIPE_FILE)) and os.path.isfile(config_path)):
    return None
  with open(config_path, encoding="utf-8") as f:
    data = json.load(f).get("data", {})
  if data.get("source") == "python_docs":  # the offline demo's corpus and vocabulary
    size = int(data["sentencepiece_vocab_size"])
    model = python_docs_sentencepiece_path(os.path.join(workdir, "data"), size)
    if not os.path.isfile(model):  # a demo workdir from before the held-out split
      model = os.path.join(workdir, "data", f"spm{size}.model")
    return "sentencepiece", {"sentencepiece_model": model}
  kind = data.get("tokenizer") or "bpe"
  files = {
    k: data.get(k) or None for k in ("sentencepiece_model", "vocab_json", "merges_txt", "dict_txt")
  }
  if kind == "sentencepiece":
    return (
      (kind, {"sentencepiece_model": files["sentencepiece_model"]})
      if files["sentencepiece_model"]
      else None
    )
  if not (files["vocab_json"] and files["merges_txt"]):
    return None
  if not files["dict_txt"] and data.get("source") == "fairseq_bin" and data.get("path"):
    # The pipeline's default: the dictionary next to the binarized data.
    default = os.path.join(os.path.dirname(os.path.abspath(data["path"])), "dict.txt")
    files["dict_txt"] = default if os.path.isfile(default) else None
  return kind, {k: files[k] for k in ("vocab_json", "merges_txt", "dict_txt")}


def workdir_tokenizer(workdir: str) -> Tokenizer | None:
  """The tokenizer a pretraining workdir trained with, or None (logged) when it names none."""
  found = workdir_tokenizer_files(workdir)
  if found is None:
    logging.warning(
      "%s: the data config names no tokenizer files; the model directory gets none (add one "
      "with convert_torch_weights.py --to jax --tokenizer PATH)",
      workdir,
    )
    return None
  return load_tokenizer(found[0], **found[1])
