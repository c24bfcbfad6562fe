"""The tokenizer a model directory carries next to its weights, and where to find one.

A data2vec-jax model directory (see `pretrained`) with a tokenizer has, in `config.json`,

  "tokenizer": {"kind": "sentencepiece" | "bpe" | "tokenizers_json",
                "files": {role: file name in the directory},
                "vocab": {"vocab_size": V, "pad_id": 1, "bos_id": 0, "eos_id": 2, "unk_id": 3,
                          "mask_id": ...}}

and the files, under fixed names:
  sentencepiece    `sentencepiece.model` + `dict.txt` (the fairseq dictionary of its pieces:
                   `train_sentencepiece` fixes the layout so piece ids *are* the fairseq ids;
                   the copy is checked against the model when read, so it can never disagree);
  bpe              `vocab.json` + `merges.txt` [+ `dict.txt` when `vocab.json` holds GPT-2 ids,
                   as fairseq's files do: the dictionary maps them to the model's ids; a
                   RoBERTa-style `vocab.json` is already in dictionary order and needs none];
  tokenizers_json  `tokenizer.json` (an imported Hugging Face tokenizer without BPE files).

The "vocab" section is checked against the tokenizer when read: a directory whose files were
swapped fails loudly instead of feeding the model the wrong ids.

`find_tokenizer` looks for a tokenizer in (1) a model directory's own section, (2) a Hugging Face
directory's tokenizer files, (3) a pretraining workdir's data config, (4) loose tokenizer files
(`*.model`, `vocab.json` + `merges.txt` [+ `dict.txt`], fairseq's `encoder.json` + `vocab.bpe` +
`dict.txt`, `tokenizer.json`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from typing import Any, Mapping

from data2vec_jax.data.dictionary import Dictionary
from data2vec_jax.data.tokenizer import (
  SentencePieceTokenizer,
  Tokenizer,
  load_tokenizer,
  sentencepiece_dictionary,
)
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.weights.torch_io import CheckpointError

SECTION = "tokenizer"
# role (load_tokenizer's keyword) -> the file's name inside a model directory.
FILE_NAMES = {
  "sentencepiece_model": "sentencepiece.model",
  "vocab_json": "vocab.json",
  "merges_txt": "merges.txt",
  "dict_txt": "dict.txt",
  "tokenizer_json": "tokenizer.json",
}
_VOCAB_FIELDS = ("vocab_size", "pad_id", "bos_id", "eos_id", "unk_id", "mask_id")

TokenizerFiles = tuple[str, dict[str, str | None]]  # (kind, role -> path or None)


def check_tokenizer_fits(tokenizer: Tokenizer, config: EncoderConfig, what: str = "") -> None:
  """The tokenizer's ids must be the model's: same vocabulary size and pad id (ValueError)."""
  vocab = tokenizer.vocab
  if vocab.vocab_size != config.vocab_size or vocab.pad_id != config.pad_id:
    raise ValueError(
      f"{what or 'the tokenizer'} has {vocab.vocab_size} ids (pad {vocab.pad_id}) but the "
      f"model's embedding table has {config.vocab_size} rows (pad {config.pad_id}): use the "
      "tokenizer the model was trained with"
    )


def write_tokenizer(directory: str, tokenizer: Tokenizer, config: EncoderConfig) -> dict[str, Any]:
  """Copies the tokenizer's files into `directory` (fixed names) and returns its config section.

  Raises:
    ValueError: the tokenizer's vocabulary is not the model's (`check_tokenizer_fits`).
  """
  check_tokenizer_fits(tokenizer, config)
  files = {}
  for role, source in tokenizer.files.items():
    name = FILE_NAMES[role]
    target = os.path.join(directory, name)
    if os.path.abspath(source) != os.path.abspath(target):
      shutil.copyfile(source, target)
    files[role] = name
  if isinstance(tokenizer, SentencePieceTokenizer):
    # The piece -> fairseq id mapping, written out (the ids are equal by construction).
    sentencepiece_dictionary(tokenizer).save(os.path.join(directory, FILE_NAMES["dict_txt"]))
    files["dict_txt"] = FILE_NAMES["dict_txt"]
  return {
    "kind": tokenizer.kind,
    "files": files,
    "vocab": {f: int(getattr(tokenizer.vocab, f)) for f in _VOCAB_FIELDS},
  }


def remove_tokenizer_files(directory: str) -> None:
  """Deletes the fixed-name tokenizer files (a model saved without a tokenizer must not keep a
  stale one that discovery would find)."""
  for name in FILE_NAMES.values():
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      os.remove(path)


def read_tokenizer(directory: str, section: Mapping[str, Any]) -> Tokenizer:
  """The tokenizer a model directory's `config.json` section describes, checked against it.

  Raises:
    CheckpointError: a file is missing, the section is malformed, or the files' vocabulary is
      not the one recorded when the directory was written.
  """
  try:
    kind, names, recorded = section["kind"], dict(section["files"]), dict(section["vocab"])
  except (KeyError, TypeError):
    raise CheckpointError(
      f"{directory}/config.json: bad 'tokenizer' section {section!r}; expected kind, files, vocab"
    ) from None
  paths = {role: os.path.join(directory, name) for role, name in names.items()}
  missing = sorted(os.path.basename(p) for p in paths.values() if not os.path.isfile(p))
  if missing:
    raise CheckpointError(
      f"{directory}: config.json names tokenizer files {missing} that are not there; copy the "
      "whole model directory"
    )
  dict_txt = paths.get("dict_txt") if kind == "bpe" else None
  try:
    tokenizer = load_tokenizer(
      kind,
      dict_txt=dict_txt,
      **{r: p for r, p in paths.items() if r != "dict_txt"},
    )
  except (ValueError, OSError) as e:
    raise CheckpointError(f"{directory}: cannot read its {kind} tokenizer: {e}") from None
  actual = {f: int(getattr(tokenizer.vocab, f)) for f in _VOCAB_FIELDS}
  if actual != {f: recorded.get(f) for f in _VOCAB_FIELDS}:
    raise CheckpointError(
      f"{directory}: the tokenizer files give vocabulary {actual} but config.json recorded "
      f"{recorded}; the files were replaced: restore the directory's own"
    )
  if isinstance(tokenizer, SentencePieceTokenizer) and "dict_txt" in paths:
    expected = sentencepiece_dictionary(tokenizer).symbols
    if Dictionary.load(paths["dict_txt"]).symbols != expected:
      raise CheckpointError(
        f"{paths['dict_txt']} does not list the pieces of {paths['sentencepiece_model']} in "
        "id order; the two files are from different tokenizers"
      )
  return tokenizer


def own_section(directory: str) -> dict[str, Any] | None:
  """The "tokenizer" section of a data2vec-jax model directory's config.json, or None."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      document = json.load(f)
  except (OSError, ValueError):
    return None
  if document.get("format") != "data2vec-jax":
    return None
  return document.get(SECTION)


def load_model_tokenizer(path: str | os.PathLike[str]) -> Tokenizer | None:
  """The tokenizer that belongs to the model at `path`, or None when it carries none.

  `path`: a data2vec-jax model directory (its own tokenizer), a Hugging Face directory (its
  tokenizer files) or a fairseq `.pt` (tokenizer files next to it). Parent directories are not
  searched: a model is used with its own tokenizer or none.
  Raises:
    CheckpointError: the directory names a tokenizer that cannot be read as recorded.
  """
  path = os.path.abspath(os.fspath(path))
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  section = own_section(directory)
  if section is not None:
    return read_tokenizer(directory, section)
  found = tokenizer_files_in(directory)
  if found is None:
    return None
  kind, files = found
  try:
    return load_tokenizer(kind, **files)
  except (ValueError, OSError) as e:
    raise CheckpointError(f"{directory}: cannot read its {kind} tokenizer: {e}") from None


def find_tokenizer(path: str, *, search_parent: bool = True) -> TokenizerFiles | None:
  """(kind, files) of the tokenizer next to `path` (module docstring), or None.

  `path` is a model directory, a file in one (a fairseq `.pt`) or a pretraining workdir; with
  `search_parent` the directory above is tried too (a workdir's `model/`, a checkpoint file).
  """
  if not path:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  here = path if os.path.isdir(path) else os.path.dirname(path)
  for directory in [here, os.path.dirname(here)] if search_parent else [here]:
    section = own_section(directory)
    if section is not None and isinstance(section.get("files"), Mapping):
      files = {r: os.path.join(directory, n) for r, n in section["files"].items()}
      if section.get("kind") != "bpe":
        files.pop("dict_txt", None)  # informational for sentencepiece; not a load argument
      return section["kind"], files
    found = workdir_tokenizer_files(directory) or tokenizer_files_in(directory)
    if found is not None:
      return found
  return None


def workdir_tokenizer_files(workdir: str) -> TokenizerFiles | None:
  """(kind, files) of the tokenizer a pretraining workdir's data config used, or None (not a
  workdir, or its data names no tokenizer files, e.g. binarized data with only a dict.txt)."""
  from data2vec_jax.data.training_input import python_docs_sentencepiece_path
  from data2vec_jax.train.recipe import RECIPE_FILE

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


def _is_roberta_vocab(vocab_json: str) -> bool:
  with open(vocab_json, encoding="utf-8") as f:
    return json.load(f).get("<pad>") == 1


def tokenizer_files_in(directory: str) -> TokenizerFiles | None:
  """(kind, files) of loose tokenizer files in `directory`, or None. Order: a single `*.model`
  (sentencepiece), `vocab.json` + `merges.txt` (with `dict.txt` only when `vocab.json` holds
  GPT-2 ids: a RoBERTa-style one is already in dictionary order), fairseq's `encoder.json` +
  `vocab.bpe` + `dict.txt`, `tokenizer.json`."""
  models = sorted(glob.glob(os.path.join(directory, "*.model")))
  if len(models) == 1:
    return "sentencepiece", {"sentencepiece_model": models[0]}
  join = lambda name: os.path.join(directory, name)  # noqa: E731
  dict_txt = join("dict.txt") if os.path.isfile(join("dict.txt")) else None
  for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
    if os.path.isfile(join(vocab)) and os.path.isfile(join(merges)):
      gpt2_ids = not _is_roberta_vocab(join(vocab))
      return "bpe", {
        "vocab_json": join(vocab),
        "merges_txt": join(merges),
        "dict_txt": dict_txt if gpt2_ids else None,
      }
  if os.path.isfile(join("tokenizer.json")):
    return "tokenizers_json", {"tokenizer_json": join("tokenizer.json")}
  return None
