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

                "sha256": {file name: sha256 hex digest of the file as written}}

The section is checked whenever the tokenizer is read (`read_tokenizer`, and `find_tokenizer`
for fine-tuning): a file whose sha256 is not the recorded one (a tokenizer swapped for another,
even of the same size) or a vocabulary other than the recorded one is refused in one line
instead of feeding the model the wrong ids. A directory written before fingerprints were
recorded (no "sha256") is read with a warning that its files cannot be checked; re-saving it
records them.

A Hugging Face directory we export records the sha256 of its tokenizer files in its config.json
(`HF_FINGERPRINT_KEY`), and whenever such a directory's tokenizer is read (`load_model_tokenizer`,
`find_tokenizer`), its files must agree with each other (`check_hf_tokenizer_files`):
`sentencepiece.model`, `dict.txt`, `tokenizer.json` and `vocab.json` + `merges.txt` that are
present must give the same ids for probe texts (including the decoded vocabulary), so a
`transformers` pipeline (which reads `tokenizer.json`) and this library (which reads
`sentencepiece.model` first) cannot tokenise differently.

`find_tokenizer` looks for a tokenizer in (1) a model directory's own section, (2) a pretraining workdir's
data config (only from fine-tuning, `finetune.starting_point`: workdirs are pretraining's), (3) a
Hugging Face directory's or loose tokenizer files
(`*.model`, `vocab.json` + `merges.txt` [+ `dict.txt`], fairseq's `encoder.json` + `vocab.bpe` +
`dict.txt`, `tokenizer.json`).
"""

from __future__ import annotations

import glob
import hashlib
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
# The key of an exported HF config.json that records {file name: sha256} of its tokenizer files.
HF_FINGERPRINT_KEY = "data2vec_jax_tokenizer_sha256"
# Tokenizer files an HF directory may hold (the ones `save_hf_tokenizer` writes, or the Hub's).
HF_TOKENIZER_FILES = (
  "tokenizer.json",
  "vocab.json",
  "merges.txt",
  "sentencepiece.model",
  "dict.txt",
)
# Texts every representation of a directory's tokenizer must encode alike (plus its vocabulary,
# decoded: a tokenizer of the same size trained on other text splits it differently).
_AGREEMENT_PROBES = (
  "The quick brown fox jumps over the lazy dog, 3.14159 times.",
  "  two  spaces,\ttab and\nnewline  ",
  "ünïcödé ñ 日本語 café naïve",
)

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
    "sha256": file_hashes(directory, files.values()),
  }


def file_hashes(directory: str, names) -> dict[str, str]:
  """{name: sha256 hex digest} of the files `names` in `directory` (the tokenizer fingerprint)."""
  out = {}
  for name in sorted(set(names)):
    digest = hashlib.sha256()
    with open(os.path.join(directory, name), "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    out[name] = digest.hexdigest()
  return out


def check_file_hashes(directory: str, recorded: Any, where: str) -> None:
  """The tokenizer files in `directory` are the ones recorded (`where` names the record).

  `recorded` None: a directory written before fingerprints were recorded; accepted with a
  warning. Raises CheckpointError naming the first file whose sha256 differs.
  """
  if recorded is None:
    logging.warning(
      "%s: %s records no sha256 of the tokenizer files (written before fingerprints were "
      "recorded), so a swapped tokenizer of the same size cannot be detected; re-save the "
      "directory to record one",
      directory,
      where,
    )
    return
  if not isinstance(recorded, Mapping):
    raise CheckpointError(f"{directory}: {where} has a malformed tokenizer sha256 record")
  actual = file_hashes(
    directory, [n for n in recorded if os.path.isfile(os.path.join(directory, n))]
  )
  # The tokenizer's own files first: dict.txt only restates a sentencepiece model's pieces.
  for name, digest in sorted(recorded.items(), key=lambda item: (item[0] == "dict.txt", item[0])):
    if actual.get(name) != digest:
      now = f"sha256 {actual[name][:12]}..." if name in actual else "missing"
      raise CheckpointError(
        f"{directory}/{name} is not the tokenizer file written with the model ({now}, "
        f"{where} recorded {str(digest)[:12]}...): the files were replaced; restore the "
        "directory's own tokenizer files (the model only works with the tokenizer it was "
        "trained with)"
      )


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
  _check_section_files(directory, section, paths)
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


def _check_section_files(
  directory: str, section: Mapping[str, Any], paths: Mapping[str, str]
) -> None:
  """The files a model directory's section names are there and are the recorded ones."""
  missing = sorted(os.path.basename(p) for p in paths.values() if not os.path.isfile(p))
  if missing:
    raise CheckpointError(
      f"{directory}: config.json names tokenizer files {missing} that are not there; copy the "
      "whole model directory"
    )
  check_file_hashes(directory, section.get("sha256"), "config.json")


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
  return check_hf_tokenizer_files(directory, found)


def search_directories(path: str, *, search_parent: bool = True) -> list[str]:
  """The directories `find_tokenizer` looks in for `path`: its own (a model directory, or the
  one holding a file such as a fairseq `.pt`) and, with `search_parent`, the one above (a
  workdir's `model/`, a checkpoint file)."""
  if not path:
    return []
  path = os.path.abspath(os.path.expanduser(path))
  here = path if os.path.isdir(path) else os.path.dirname(path)
  return [here, os.path.dirname(here)] if search_parent else [here]


def section_tokenizer_files(directory: str) -> TokenizerFiles | None:
  """(kind, files) a data2vec-jax model directory's own section names (checked), or None."""
  section = own_section(directory)
  if section is None or not isinstance(section.get("files"), Mapping):
    return None
  files = {r: os.path.join(directory, n) for r, n in section["files"].items()}
  _check_section_files(directory, section, files)
  if section.get("kind") != "bpe":
    files.pop("dict_txt", None)  # informational for sentencepiece; not a load argument
  return section["kind"], files


def loose_tokenizer_files(directory: str) -> TokenizerFiles | None:
  """(kind, files) of a Hugging Face directory's or loose tokenizer files (checked to agree with
  each other), or None."""
  found = tokenizer_files_in(directory)
  if found is not None:
    check_hf_tokenizer_files(directory, found)
  return found


def find_tokenizer(path: str, *, search_parent: bool = True) -> TokenizerFiles | None:
  """(kind, files) of the tokenizer next to `path`, a model directory or a file in one, or None.

  Looks in each of `search_directories` for a model directory's own section, then for Hugging
  Face or loose tokenizer files. A pretraining workdir's data config is pretraining's to read:
  fine-tuning's `starting_point.find_tokenizer` adds it between the two.
  """
  for directory in search_directories(path, search_parent=search_parent):
    found = section_tokenizer_files(directory) or loose_tokenizer_files(directory)
    if found is not None:
      return found
  return None


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


def check_hf_tokenizer_files(directory: str, found: TokenizerFiles) -> Tokenizer:
  """The tokenizer `found` in an HF (or loose-files) directory, after checking that every
  tokenizer file there agrees with it (module docstring) and, when the directory's config.json
  records their sha256 (`HF_FINGERPRINT_KEY`), that they are the recorded files.

  Raises:
    CheckpointError: a file differs from the record, two files give different ids, or a file
      cannot be read; the message names the files.
  """
  kind, files = found
  try:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
      recorded = json.load(f).get(HF_FINGERPRINT_KEY)
  except (OSError, ValueError, AttributeError):
    recorded = None
  if recorded is not None:
    check_file_hashes(directory, recorded, "config.json")
  try:
    primary = load_tokenizer(kind, **files)
  except (ValueError, OSError) as e:
    raise CheckpointError(f"{directory}: cannot read its {kind} tokenizer: {e}") from None
  name = ", ".join(sorted(os.path.basename(p) for p in files.values() if p))
  others = _other_hf_tokenizers(directory, kind)
  if isinstance(primary, SentencePieceTokenizer):
    _check_dict_txt_lists_pieces(directory, primary, files["sentencepiece_model"])
  for other_name, other in others:
    _check_same_ids(directory, (name, primary), (other_name, other))
  return primary


def _other_hf_tokenizers(directory: str, kind: str) -> list[tuple[str, Tokenizer]]:
  """(file names, tokenizer) of each tokenizer file set in `directory` other than `kind`'s
  that transformers may read: `tokenizer.json`, and RoBERTa-style `vocab.json` + `merges.txt`."""
  others: list[tuple[str, Tokenizer]] = []
  join = lambda n: os.path.join(directory, n)  # noqa: E731
  try:
    if kind != "tokenizers_json" and os.path.isfile(join("tokenizer.json")):
      others.append(
        ("tokenizer.json", load_tokenizer("tokenizers_json", tokenizer_json=join("tokenizer.json")))
      )
    bpe_files = [join("vocab.json"), join("merges.txt")]
    if kind != "bpe" and all(map(os.path.isfile, bpe_files)) and _is_roberta_vocab(bpe_files[0]):
      # (A vocab.json of GPT-2 ids needs a dict.txt of them: not an HF directory's file.)
      others.append(
        (
          "vocab.json + merges.txt",
          load_tokenizer("bpe", vocab_json=bpe_files[0], merges_txt=bpe_files[1]),
        )
      )
  except (ValueError, OSError) as e:
    raise CheckpointError(f"{directory}: cannot read a tokenizer file: {e}") from None
  return others


def _check_dict_txt_lists_pieces(
  directory: str, primary: SentencePieceTokenizer, model_file: str
) -> None:
  """A `dict.txt` beside the sentencepiece model lists its pieces in id order, or is refused."""
  dict_txt = os.path.join(directory, "dict.txt")
  if not os.path.isfile(dict_txt):
    return
  expected = sentencepiece_dictionary(primary).symbols
  if Dictionary.load(dict_txt).symbols != expected:
    raise CheckpointError(
      f"{dict_txt} does not list the pieces of {model_file} in id "
      "order; the two files are from different tokenizers: keep the files the model was "
      "exported with"
    )


def _check_same_ids(
  directory: str, primary: tuple[str, Tokenizer], other: tuple[str, Tokenizer]
) -> None:
  """The (file names, tokenizer) `other` has `primary`'s vocabulary size and gives its ids for
  the probe texts (including the decoded vocabulary), or CheckpointError naming both."""
  (name, ours), (other_name, theirs) = primary, other
  size = ours.vocab.vocab_size
  probes = list(_AGREEMENT_PROBES) + [ours.decode(range(4, min(size - 1, 400)))]
  problem = None
  if theirs.vocab.vocab_size != size:
    problem = f"{theirs.vocab.vocab_size} ids there, {size} in {name}"
  else:
    for text in probes:
      our_ids, their_ids = ours.encode(text).tolist(), theirs.encode(text).tolist()
      if our_ids != their_ids:
        problem = f"{text[:30]!r} is {their_ids[:6]}... there but {our_ids[:6]}... with {name}"
        break
  if problem is not None:
    raise CheckpointError(
      f"{directory}: {other_name} and {name} are different tokenizers ({problem}); "
      "transformers reads one, this library the other: keep the files the model was "
      "exported with"
    )
