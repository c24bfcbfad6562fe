"""The tokenizer a prepared corpus was made with, so that training (and every model directory made
from it) carries it without tokenizer flags.

`data.prepare` records its tokenizer in the corpus's `prepare_stats.json` ("tokenizer": the kind;
"sentencepiece_model": the model it trained as `spm.model` beside the corpus, or the one it was
given; "vocab_json" + "merges_txt": the BPE files, absolute, with the corpus's dict.txt). A pretraining config that reads the corpus (`data.source='fairseq_bin'`) and names no
tokenizer files gets them from there (`with_corpus_tokenizer`): `config.json` of the workdir then
names them, and the model directory exported from it holds the tokenizer (train/export.py).
"""

from __future__ import annotations

import json
import logging
import os

import ml_collections

from data2vec_jax.data.sources import PREPARE_STATS_FILE

TOKENIZER_FIELDS = ("sentencepiece_model", "vocab_json", "merges_txt")


def recorded_tokenizer(prefix: str) -> tuple[str, dict[str, str]] | None:
  """(kind, {role: absolute path}) of the tokenizer recorded beside the binarized corpus `prefix`
  (e.g. 'data/bin/train'), or None when no prepare_stats.json records one whose files exist.

  A recorded sentencepiece path that no longer resolves (a relative path from another working
  directory, a moved corpus) falls back to the file of that name beside the corpus.
  """
  folder = os.path.dirname(os.path.abspath(prefix))
  stats_path = os.path.join(folder, PREPARE_STATS_FILE)
  if not os.path.isfile(stats_path):
    return None
  with open(stats_path, encoding="utf-8") as f:
    stats = json.load(f)
  if stats.get("tokenizer") == "bpe":
    files = {k: stats.get(k) for k in ("vocab_json", "merges_txt")}
    if not all(files.values()) or not all(os.path.isfile(f) for f in files.values()):
      return None  # a corpus from before the BPE files were recorded, or files since moved
    dict_txt = os.path.join(folder, "dict.txt")  # what the corpus's ids mean
    return "bpe", ({**files, "dict_txt": dict_txt} if os.path.isfile(dict_txt) else files)
  if stats.get("tokenizer") != "sentencepiece" or not stats.get("sentencepiece_model"):
    return None
  recorded = str(stats["sentencepiece_model"])
  for candidate in (recorded, os.path.join(folder, os.path.basename(recorded))):
    if os.path.isfile(candidate):
      return "sentencepiece", {"sentencepiece_model": os.path.abspath(candidate)}
  return None


def with_corpus_tokenizer(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with `data.tokenizer` and its files taken from the prepared corpus it reads, when
  `data.source='fairseq_bin'` and the data config names no tokenizer files; otherwise `config`
  unchanged. The paths are absolute (the workdir's config.json is read from other directories).
  """
  data = config.data
  if data.get("source") != "fairseq_bin" or not data.get("path"):
    return config
  if any(data.get(field) for field in TOKENIZER_FIELDS):
    return config  # the user's choice wins
  found = recorded_tokenizer(str(data.path))
  if found is None:
    return config
  kind, files = found
  config = config.copy_and_resolve_references()  # the caller's config stays as it was
  config.data.tokenizer = kind
  for role, path in files.items():
    if not (role == "dict_txt" and config.data.get("dict_txt")):  # a dict.txt given stays
      config.data[role] = path
  logging.info(
    "tokenizer: %s %s, recorded with the corpus in %s",
    kind,
    " ".join(files.values()),
    os.path.join(os.path.dirname(os.path.abspath(str(data.path))), PREPARE_STATS_FILE),
  )
  return config
