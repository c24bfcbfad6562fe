"""Fine-tuning data sources: GLUE from TFDS, from fairseq's binarized layout, or a user's own task.

Every reader returns one split as a `LabeledSplit` (finetune/examples.py) whose label ids are
TFDS's / Hugging Face's (docs/reference/finetuning_reference.md §4.3), whatever the source:

* `read_tfds_split`: TFDS `glue/<task>` through `tfds.data_source` (ArrayRecord; TensorFlow is
  not needed). Text features and split names per §4.3 (MNLI: `validation_matched` /
  `validation_mismatched`; our split names are TFDS's). The dataset must be prepared beforehand
  (`tfds build glue/<task> --file_format array_record`): nothing is downloaded at run time.
  Rows come back in source-file order (TFDS's `idx` feature), not TFDS's shuffled storage order,
  so TFDS and the GLUE TSVs give the same rows in the same order. TFDS drops QQP's malformed
  rows when it builds the dataset, so their count is not known here (`skipped` counts only
  examples holding a None text at read time, normally 0).
* `read_fairseq_glue_split`: fairseq's `<TASK>-bin` layout (§4.2), already tokenized:
      input0/dict.txt  input0/<prefix>.{bin,idx}     sentence A (+ `</s>` from the binarizer)
      input1/...                                    sentence B, pair tasks only
      label/dict.txt   label/<prefix>.{bin,idx}      classification: `<label symbol> </s>`
      label/<prefix>.label                          STS-B: one float per line, score / 5
  with prefixes train, valid (validation, MNLI validation_matched) and valid1 (MNLI
  validation_mismatched). Token ids come back as `LabeledSplit.token_ids`, without the
  binarizer's trailing `</s>`. fairseq's class ids are the line order of label/dict.txt (by train
  frequency), so each label id is decoded to its raw GLUE value ('0'/'1', 'entailment', ...) and
  re-encoded with `glue_tsv.TASKS[task].labels`: fairseq's class order never leaks out. STS-B
  targets are the file's values x 5, i.e. the raw 0-5 scores, as from the other sources.
  The ids are only meaningful with the dictionary they were binarized with: compare
  `fairseq_glue_dictionary(path)` with the model's (`check_same_dictionary`).
* `read_generic_split`: a user's own task from a TSV file (header row; no quoting, fields are
  split on tabs) or JSONL (one object per line), columns / keys chosen by name. Class labels get
  ids in the order of `label_names`, by default the sorted distinct labels of the train split
  (numerically sorted when they are all integers); an evaluation split must be read with the
  train split's `label_names`. `regression=True` reads labels as float32 targets.
* the GLUE TSVs themselves: `glue_tsv.read_glue_split`.

`read_split(source, task, split, **options)` dispatches to these; `task_splits` names a task's
train and evaluation splits and `num_labels` the size of its head.

Bad data is never passed over silently: an error names the file and line (or split and example)
and the fix. Only `read_generic_split(skip_malformed=True)` skips malformed rows, counted in
`LabeledSplit.skipped` (as glue_tsv counts QQP's).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Sequence

import numpy as np

from data2vec_jax.data.dictionary import Dictionary
from data2vec_jax.data.sources import DataError, MMapIndexedDataset
from data2vec_jax.finetune.examples import LabeledSplit
from data2vec_jax.finetune.glue_tsv import LABEL_NAMES, TASKS, read_glue_split

log = logging.getLogger(__name__)

SOURCES = ("glue_tsv", "tfds", "fairseq_bin", "generic")

# TFDS `glue/<config>` text features of each task, in column order (§4.3).
TFDS_TEXT_FEATURES: dict[str, tuple[str, ...]] = {
  "cola": ("sentence",),
  "sst2": ("sentence",),
  "mrpc": ("sentence1", "sentence2"),
  "qqp": ("question1", "question2"),
  "stsb": ("sentence1", "sentence2"),
  "mnli": ("premise", "hypothesis"),
  "qnli": ("question", "sentence"),
  "rte": ("sentence1", "sentence2"),
  "wnli": ("sentence1", "sentence2"),
}

# Our split name -> TFDS's. The same names; kept as a table so a renamed split fails here.
TFDS_SPLITS = {
  "train": "train",
  "validation": "validation",
  "validation_matched": "validation_matched",
  "validation_mismatched": "validation_mismatched",
}

# Our split name -> the file prefix fairseq-preprocess writes (`--validpref dev_matched,
# dev_mismatched` numbers the second valid set `valid1`).
FAIRSEQ_SPLITS = {
  "train": "train",
  "validation": "valid",
  "validation_matched": "valid",
  "validation_mismatched": "valid1",
}

GENERIC_SPLITS = ("train", "validation")
GENERIC_FORMATS = ("tsv", "jsonl")


# ----------------------------------------------------------------------------------------------
# Task facts
# ----------------------------------------------------------------------------------------------


def _check_glue_task(task: str, split: str | None = None) -> None:
  if task not in TASKS:
    raise DataError(f"unknown GLUE task {task!r}; known: {sorted(TASKS)}")
  if split is not None and split not in TASKS[task].files:
    raise DataError(f"GLUE task {task} has no split {split!r}; known: {list(TASKS[task].files)}")


def task_splits(source: str, task: str) -> dict[str, Any]:
  """The split names of `task`: {'train': 'train', 'evaluation': (eval split names, ...)}.

  GLUE tasks evaluate on 'validation', MNLI on 'validation_matched' and 'validation_mismatched';
  a generic task on 'validation'.
  """
  _check_source(source)
  if source == "generic":
    return {"train": "train", "evaluation": ("validation",)}
  _check_glue_task(task)
  return {"train": "train", "evaluation": tuple(s for s in TASKS[task].files if s != "train")}


def num_labels(
  source: str,
  task: str,
  *,
  label_names: Sequence[str] | None = None,
  regression: bool = False,
) -> int:
  """Outputs of the task's head: the number of classes, or 1 for regression (STS-B).

  A generic task needs `regression=True` or its `label_names` (the train split's
  `LabeledSplit.label_names`).
  """
  _check_source(source)
  if source != "generic":
    _check_glue_task(task)
    return 1 if TASKS[task].labels is None else len(LABEL_NAMES[task])
  if regression:
    return 1
  if not label_names:
    raise DataError(
      f"generic task {task!r}: num_labels needs label_names (the train split's "
      f"LabeledSplit.label_names) or regression=True"
    )
  return len(label_names)


# ----------------------------------------------------------------------------------------------
# TFDS glue/<task>
# ----------------------------------------------------------------------------------------------


def read_tfds_split(
  task: str,
  split: str,
  *,
  data_dir: str | None = None,
  builder: str = "glue",
) -> LabeledSplit:
  """Reads `<builder>/<task>` split `split` from a prepared TFDS directory.

  Args:
    task: a GLUE task name (glue_tsv.TASKS), also the TFDS config name.
    split: 'train', 'validation', or for MNLI 'validation_matched' / 'validation_mismatched'.
    data_dir: the TFDS data directory (None: TFDS's default, ~/tensorflow_datasets).
    builder: the registered TFDS builder name; another name (e.g. a test's tiny builder with the
      same features) must be registered, i.e. its module imported, before the call.

  Returns:
    texts: one tuple of str per text feature (TFDS_TEXT_FEATURES[task]); labels int64 [N] TFDS
    ClassLabel ids, or float32 [N] raw STS-B scores; rows sorted by TFDS's `idx` when present.
  """
  _check_glue_task(task, split)
  import tensorflow_datasets as tfds

  if builder == "glue":
    # TFDS registers a builder when its module is imported; without TensorFlow the lazy imports
    # of `tensorflow_datasets/__init__.py` may leave `glue` unregistered.
    import tensorflow_datasets.text.glue  # noqa: F401

  name = f"{builder}/{task}"
  where = f"data_dir={data_dir!r}" if data_dir else "TFDS's default data_dir"
  build = f"tfds build {name} --file_format array_record" + (
    f" --data_dir {data_dir}" if data_dir else ""
  )
  prepare = (
    f"prepare it once, with network access, with `{build}` (and pass that data_dir); "
    f"nothing is downloaded at run time"
  )
  try:
    ds_builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except Exception as e:  # noqa: BLE001 -- tfds raises many types; re-raise with the context
    raise DataError(
      f"TFDS dataset {name!r} is not available ({type(e).__name__}: {str(e).splitlines()[0]}); "
      f"check the builder name and task (a custom builder's module must be imported first)"
    ) from e
  # Checked before opening: `tfds.data_source` of an unprepared dataset would try to download it
  # (or, with download=False, fail with a misleading file-format error).
  if not ds_builder.is_prepared():
    raise DataError(f"TFDS dataset {name} is not prepared in {where}; {prepare}")
  if TFDS_SPLITS[split] not in ds_builder.info.splits:
    raise DataError(
      f"TFDS dataset {name} in {where} has no split {TFDS_SPLITS[split]!r} (it has "
      f"{sorted(ds_builder.info.splits)}); {prepare}"
    )
  _check_tfds_features(task, name, ds_builder.info.features)
  try:
    source = ds_builder.as_data_source(split=TFDS_SPLITS[split])
  except NotImplementedError as e:  # prepared as TFRecord: no random access without TensorFlow
    raise DataError(
      f"TFDS dataset {name} in {where} is not in ArrayRecord format, which reading without "
      f"TensorFlow needs; {prepare} (into another data_dir, or delete the TFRecord copy)"
    ) from e
  return _tfds_rows(task, split, name, source)


def _check_tfds_features(task: str, name: str, features: Any) -> None:
  """The builder has the task's text features and its label ids mean what TFDS glue's do."""
  missing = [f for f in TFDS_TEXT_FEATURES[task] + ("label",) if f not in features]
  if missing:
    raise DataError(
      f"TFDS dataset {name} lacks the feature(s) {missing} of GLUE {task} (it has "
      f"{sorted(features.keys())}); it is not a glue/{task} dataset"
    )
  label = features["label"]
  if TASKS[task].labels is None:
    if hasattr(label, "names"):
      raise DataError(f"TFDS dataset {name}: 'label' is a ClassLabel, but {task} is a regression")
    return
  names = tuple(getattr(label, "names", ()) or ())
  if names != LABEL_NAMES[task]:
    raise DataError(
      f"TFDS dataset {name}: label names {list(names)} differ from TFDS glue/{task}'s "
      f"{list(LABEL_NAMES[task])}, so its label ids would mean other classes"
    )


def _tfds_rows(task: str, split: str, name: str, source: Any) -> LabeledSplit:
  features = TFDS_TEXT_FEATURES[task]
  regression = TASKS[task].labels is None
  texts: list[list[str]] = [[] for _ in features]
  labels: list[float] = []
  order: list[int] = []
  skipped = 0
  n = len(source)
  chunk = 1024
  for start in range(0, n, chunk):
    keys = list(range(start, min(start + chunk, n)))
    # Batched reads when the data source offers them (one ArrayRecord call per chunk).
    examples = (
      source.__getitems__(keys)
      if hasattr(source, "__getitems__")
      else map(source.__getitem__, keys)
    )
    for i, example in zip(keys, examples):
      values = [example.get(f) for f in features]
      if any(v is None for v in values) or example.get("label") is None:
        skipped += 1  # TFDS's own rule for corrupted rows (QQP), should it reach us
        continue
      label = example["label"]
      # GLUE test splits have label -1; a labelled split never does (a wrong split or builder).
      if float(label) == -1:
        raise DataError(
          f"TFDS {name} split {split!r}: example {i} (idx {example.get('idx')}) has label -1, "
          f"the label of unlabelled test examples; {split} must be labelled (wrong data?)"
        )
      for column, value in zip(texts, values):
        column.append(_decode(value, name, split, i))
      labels.append(float(label) if regression else int(label))
      order.append(int(example["idx"]) if "idx" in example else len(order))
  if skipped:
    log.warning("TFDS %s split %s: skipped %d examples with a None value", name, split, skipped)
  # Source-file order, as the GLUE TSVs and fairseq's files have it (storage order is shuffled).
  perm = np.argsort(np.asarray(order, np.int64), kind="stable")
  return LabeledSplit(
    task,
    split,
    tuple(tuple(column[j] for j in perm) for column in texts),
    np.asarray(labels, np.float32 if regression else np.int64)[perm],
    skipped,
    label_names=None if regression else LABEL_NAMES[task],
  )


def _decode(value: Any, name: str, split: str, i: int) -> str:
  if isinstance(value, str):
    return value
  try:
    return bytes(value).decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"TFDS {name} split {split!r}: example {i} has text that is not UTF-8 ({e})")


# ----------------------------------------------------------------------------------------------
# fairseq <TASK>-bin
# ----------------------------------------------------------------------------------------------

_FAIRSEQ_LAYOUT = (
  "expected fairseq's GLUE layout <TASK>-bin/{input0,input1 (pair tasks)}/{dict.txt,"
  "<split>.bin,<split>.idx} and label/{dict.txt,<split>.bin,<split>.idx} (STS-B: "
  "label/<split>.label), with <split> = train, valid, valid1 (MNLI mismatched), as written by "
  "fairseq's examples/roberta/preprocess_GLUE_tasks.sh"
)


def _need_file(path: str) -> str:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found; {_FAIRSEQ_LAYOUT}")
  return path


def fairseq_glue_dictionary(path: str) -> Dictionary:
  """The dictionary `<path>/input0/dict.txt` was binarized with, plus `<mask>` (as fairseq's
  `SentencePredictionTask.load_dictionary`), so its ids are the model's when both match; check
  with `check_same_dictionary(fairseq_glue_dictionary(path), model_dictionary)`."""
  return Dictionary.load(_need_file(os.path.join(path, "input0", "dict.txt")), add_mask=True)


def check_same_dictionary(
  data: Dictionary, model: Dictionary, *, what: str = "the data", reference: str = "the model's"
) -> None:
  """Raises DataError naming the first id where `data` and `model` differ (token ids of one are
  then not the other's); `what` and `reference` name the two in the message."""
  if data.symbols == model.symbols:
    return
  for i, (a, b) in enumerate(zip(data.symbols, model.symbols)):
    if a != b:
      raise DataError(
        f"{what} was binarized with another dictionary than {reference}: id {i} is {a!r} "
        f"there but {b!r} in {reference}; re-binarize with {reference} dict.txt"
      )
  raise DataError(
    f"{what} was binarized with another dictionary than {reference}: {len(data)} symbols "
    f"there, {len(model)} in {reference}; re-binarize with {reference} dict.txt"
  )


def read_fairseq_glue_split(task: str, path: str, split: str) -> LabeledSplit:
  """Reads one split of fairseq's binarized GLUE layout (`path` = the `<TASK>-bin` directory).

  Returns:
    token_ids: one tuple per input column (input0, and input1 for pair tasks) of int32 [n_i]
    arrays of input0/dict.txt ids, without the trailing `</s>`; labels int64 [N] TFDS/HF ids
    (decoded through label/dict.txt), or float32 [N] raw STS-B scores (the .label values x 5).
  """
  _check_glue_task(task, split)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"fairseq GLUE directory {path} not found; {_FAIRSEQ_LAYOUT}")
  layout = TASKS[task]
  prefix = FAIRSEQ_SPLITS[split]
  inputs = [f"input{c}" for c in range(len(layout.text_columns))]
  if len(inputs) == 1 and os.path.isdir(os.path.join(path, "input1")):
    raise DataError(
      f"{path} has input1/ (a sentence-pair task) but {task} is a single-sentence task; is it "
      f"the {task} data?"
    )
  dictionary = fairseq_glue_dictionary(path)
  for extra in inputs[1:]:
    other = Dictionary.load(_need_file(os.path.join(path, extra, "dict.txt")), add_mask=True)
    check_same_dictionary(other, dictionary, what=os.path.join(path, extra), reference="input0's")
  columns = [_fairseq_tokens(os.path.join(path, c, prefix), dictionary) for c in inputs]
  label_dir = os.path.join(path, "label")
  if layout.labels is None:
    labels = _fairseq_scores(_need_file(os.path.join(label_dir, f"{prefix}.label")))
    label_file = os.path.join(label_dir, f"{prefix}.label")
  else:
    labels = _fairseq_classes(task, label_dir, prefix)
    label_file = os.path.join(label_dir, f"{prefix}.bin")
  counts = {os.path.join(path, c, prefix + ".bin"): len(col) for c, col in zip(inputs, columns)}
  counts[label_file] = len(labels)
  if len(set(counts.values())) != 1:
    raise DataError(
      f"{task} {split}: the files have different row counts "
      f"({', '.join(f'{p}: {n}' for p, n in counts.items())}); they must come from one "
      f"preprocessing run of the same split"
    )
  return LabeledSplit(
    task,
    split,
    None,
    labels,
    token_ids=tuple(columns),
    label_names=None if layout.labels is None else LABEL_NAMES[task],
  )


def _fairseq_rows(prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(int32 tokens [T], start [N], size [N]) of a .bin/.idx pair."""
  _need_file(prefix + ".idx")
  _need_file(prefix + ".bin")
  tokens = MMapIndexedDataset(prefix).token_source()
  sizes = tokens.sizes
  starts = np.zeros(len(sizes), np.int64)
  starts[1:] = np.cumsum(sizes)[:-1]
  return np.asarray(tokens.tokens, np.int32), starts, sizes


def _fairseq_tokens(prefix: str, dictionary: Dictionary) -> tuple[np.ndarray, ...]:
  """Each row's ids without the binarizer's trailing `</s>` (views into one int32 array)."""
  tokens, starts, sizes = _fairseq_rows(prefix)
  eos = dictionary.eos_index
  ends = starts + sizes  # exclusive
  bad = np.flatnonzero((sizes == 0) | (tokens[np.maximum(ends - 1, 0)] != eos))
  if len(bad):
    raise DataError(
      f"{prefix}.bin: row {bad[0]} does not end with </s> ({eos}) as fairseq-preprocess "
      f"writes every line ({len(bad)} such rows); binarize with fairseq-preprocess "
      f"--only-source (which appends </s>)"
    )
  if len(tokens) and int(tokens.max()) >= len(dictionary):
    position = int(np.argmax(tokens >= len(dictionary)))
    row = int(np.searchsorted(ends, position, side="right"))
    raise DataError(
      f"{prefix}.bin: row {row} has id {int(tokens[position])}, outside input0/dict.txt "
      f"({len(dictionary)} symbols with <mask>); the data and dict.txt do not belong together"
    )
  return tuple(tokens[s : e - 1] for s, e in zip(starts.tolist(), ends.tolist()))


def _fairseq_classes(task: str, label_dir: str, prefix: str) -> np.ndarray:
  """label/<prefix>.bin rows (`<label symbol> </s>`) -> int64 TFDS ids via label/dict.txt."""
  dict_path = _need_file(os.path.join(label_dir, "dict.txt"))
  label_dict = Dictionary.load(dict_path, add_mask=False)
  nspecial = 4  # fairseq's OffsetTokensDataset(offset=-nspecial): class = symbol id - 4
  raw_labels = TASKS[task].labels
  symbols = label_dict.symbols[nspecial:]
  unknown = [s for s in symbols if s not in raw_labels]
  if unknown:
    raise DataError(
      f"{dict_path}: label(s) {unknown} are not {task} labels (expected {list(raw_labels)}); "
      f"is it the {task} data?"
    )
  # symbol id -> TFDS id; -1 for the specials, which are never a label.
  to_id = np.full(len(label_dict), -1, np.int64)
  to_id[nspecial:] = [raw_labels.index(s) for s in symbols]
  tokens, starts, sizes = _fairseq_rows(os.path.join(label_dir, prefix))
  bad = np.flatnonzero(sizes != 2)
  if len(bad) == 0 and len(sizes):
    symbol_ids, eos_ids = tokens[starts], tokens[starts + 1]
    bad = np.flatnonzero(
      (eos_ids != label_dict.eos_index) | (symbol_ids < nspecial) | (symbol_ids >= len(label_dict))
    )
  if len(bad):
    row = int(bad[0])
    found = tokens[starts[row] : starts[row] + sizes[row]].tolist()
    raise DataError(
      f"{label_dir}/{prefix}.bin: row {row} is {found}, not one label id of {dict_path} "
      f"followed by </s> ({label_dict.eos_index}); the label files do not belong together"
    )
  return to_id[tokens[starts]] if len(sizes) else np.zeros(0, np.int64)


def _fairseq_scores(path: str) -> np.ndarray:
  """STS-B label/<prefix>.label: one float per line = score / 5 -> float32 raw scores (x 5)."""
  scores = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      try:
        scores.append(float(line.strip()) * 5.0)
      except ValueError:
        raise DataError(
          f"{path}:{number}: {line.strip()!r} is not a number; STS-B .label files hold one "
          f"score / 5 per line"
        ) from None
  return np.asarray(scores, np.float32)


# ----------------------------------------------------------------------------------------------
# Generic TSV / JSONL
# ----------------------------------------------------------------------------------------------


class _Malformed(Exception):
  """A row that `skip_malformed=True` may skip (the message says what is wrong with it)."""


def read_generic_split(
  path: str,
  *,
  text_columns: Sequence[str],
  label_column: str,
  label_names: Sequence[str] | None = None,
  regression: bool = False,
  skip_malformed: bool = False,
  task: str = "generic",
  split: str = "train",
  format: str | None = None,
) -> LabeledSplit:
  """Reads a user's labelled TSV or JSONL file.

  Args:
    path: the file of this split.
    text_columns: 1 or 2 column names (TSV header) / keys (JSONL): sentence A [and B].
    label_column: the label's column name / key.
    label_names: class labels in id order (as written in the file; JSONL integer labels are
      compared as their decimal strings). Default, train split only: the sorted distinct labels
      (numeric order when all are integers). Any other split must pass the train split's
      `LabeledSplit.label_names`, so that ids mean the same classes.
    regression: labels are numbers, returned as float32 targets (label_names must be None).
    skip_malformed: skip rows with a wrong field count, bad JSON, a missing key or an empty
      text/label, counted in `skipped` (default: such a row is an error naming file:line).
    task, split: names recorded in the result.
    format: 'tsv' or 'jsonl'; default from the extension (.tsv; .jsonl / .json).

  Returns:
    texts: one tuple of str per text column ([N] each); labels int64 [N] ids into
    `label_names`, or float32 [N] targets. Blank lines are not rows and are ignored.
  """
  text_columns = tuple(text_columns)
  if len(text_columns) not in (1, 2) or not all(isinstance(c, str) and c for c in text_columns):
    raise DataError(
      f"generic task {task!r}: text_columns must name 1 or 2 columns, got {list(text_columns)}"
    )
  if not isinstance(label_column, str) or not label_column:
    raise DataError(f"generic task {task!r}: label_column must name a column, got {label_column!r}")
  if regression and label_names is not None:
    raise DataError(f"generic task {task!r}: label_names is for classification, not regression")
  if label_names is not None:
    label_names = tuple(str(n) for n in label_names)
    if not label_names or len(set(label_names)) != len(label_names):
      raise DataError(
        f"generic task {task!r}: label_names must be distinct and non-empty, got {label_names}"
      )
  elif not regression and split != "train":
    raise DataError(
      f"generic task {task!r} split {split!r}: pass label_names=<train split>.label_names so "
      f"that label ids mean the train split's classes (only the train split may infer them)"
    )
  fmt = format or _format_of(path)
  if fmt not in GENERIC_FORMATS:
    raise DataError(f"{path}: unknown format {fmt!r}; use one of {list(GENERIC_FORMATS)}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found (generic task {task!r} split {split!r})")
  rows = _tsv_rows if fmt == "tsv" else _jsonl_rows
  texts: list[list[str]] = [[] for _ in text_columns]
  raw: list[str | float] = []
  places: list[int] = []  # line number of each kept row, for label errors
  skipped = 0
  fix = "fix or remove the line, or set skip_malformed=True to skip and count such rows"
  for number, row in rows(path, text_columns, label_column):
    try:
      if isinstance(row, _Malformed):
        raise row
      values, label = row
      for name, value in zip(text_columns, values):
        if not value.strip():
          raise _Malformed(f"the text {name!r} is empty")
      raw.append(_generic_label(label, regression))
    except _Malformed as e:
      if skip_malformed:
        skipped += 1
        continue
      raise DataError(f"{path}:{number}: {e}; {fix}") from None
    for column, value in zip(texts, values):
      column.append(value)
    places.append(number)
  if not raw:
    raise DataError(f"{path}: no rows (after {skipped} malformed ones were skipped)")
  if skipped:
    log.warning("%s: skipped %d malformed rows (skip_malformed=True)", path, skipped)
  if regression:
    labels = np.asarray(raw, np.float32)
  else:
    if label_names is None:
      label_names = _sorted_labels(raw)
    ids = {name: i for i, name in enumerate(label_names)}
    for label, number in zip(raw, places):
      if label not in ids:
        raise DataError(
          f"{path}:{number}: label {label!r} is not one of the {len(ids)} labels "
          f"{list(label_names)}"
          + (" of the train split" if split != "train" else "")
          + "; fix the label, or add it to label_names (and train on it)"
        )
    labels = np.asarray([ids[label] for label in raw], np.int64)
  return LabeledSplit(
    task,
    split,
    tuple(tuple(column) for column in texts),
    labels,
    skipped,
    label_names=None if regression else tuple(label_names),
    path=path,
    lines=np.asarray(places, np.int64),
  )


def _format_of(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext == ".tsv":
    return "tsv"
  if ext in (".jsonl", ".json"):
    return "jsonl"
  raise DataError(f"{path}: cannot tell the format from the extension; pass format='tsv'|'jsonl'")


def _lines(path: str):
  """(line number, text) of a UTF-8 file, without the line end; a BOM at the start is dropped."""
  with open(path, "rb") as f:
    for number, data in enumerate(f, start=1):
      try:
        line = data.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(
          f"{path}:{number}: not valid UTF-8 ({e.reason}); re-encode the file as UTF-8"
        )
      if number == 1:
        line = line.removeprefix("\ufeff")
      yield number, line.rstrip("\r\n")


def _tsv_rows(path: str, text_columns: tuple[str, ...], label_column: str):
  """Yields (line, (texts, label)) or (line, _Malformed) for each non-blank data row."""
  lines = _lines(path)
  first = next(lines, None)
  if first is None:
    raise DataError(f"{path}: empty file; a TSV needs a header row naming its columns")
  header = first[1].split("\t")
  index = {}
  for name in text_columns + (label_column,):
    if header.count(name) != 1:
      problem = "is not in" if name not in header else "appears more than once in"
      raise DataError(
        f"{path}:1: column {name!r} {problem} the header {header}; the first line must name "
        f"the columns, and text_columns/label_column must be among them"
      )
    index[name] = header.index(name)
  for number, line in lines:
    if not line:
      continue
    fields = line.split("\t")
    if len(fields) != len(header):
      yield number, _Malformed(f"{len(fields)} tab-separated fields, the header has {len(header)}")
      continue
    yield number, ([fields[index[c]] for c in text_columns], fields[index[label_column]])


def _jsonl_rows(path: str, text_columns: tuple[str, ...], label_column: str):
  """Yields (line, (texts, label)) or (line, _Malformed) for each non-blank line."""
  for number, line in _lines(path):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      yield number, _Malformed(f"not valid JSON ({e.msg} at column {e.colno})")
      continue
    if not isinstance(obj, dict):
      yield number, _Malformed(f"a JSON {type(obj).__name__}, not an object")
      continue
    missing = [k for k in text_columns + (label_column,) if k not in obj]
    if missing:
      yield number, _Malformed(f"key(s) {missing} missing (keys: {sorted(obj)})")
      continue
    texts = [obj[k] for k in text_columns]
    bad = [k for k, v in zip(text_columns, texts) if not isinstance(v, str)]
    if bad:
      yield number, _Malformed(f"the text {bad[0]!r} is not a string: {obj[bad[0]]!r}")
      continue
    yield number, (texts, obj[label_column])


def _generic_label(value: Any, regression: bool) -> str | float:
  """A file's label -> str (classification) or finite float (regression); _Malformed if bad."""
  if regression:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
      raise _Malformed(f"the label {value!r} is not a number")
    try:
      number = float(value)
    except ValueError:
      raise _Malformed(f"the label {value!r} is not a number") from None
    if not math.isfinite(number):
      raise _Malformed(f"the label {value!r} is not a finite number")
    return number
  # JSON integers count as their decimal strings ('0', '1'), the same labels as a TSV's; floats
  # and booleans are refused: 1.0 and '1' (or true and 'True') would be different classes.
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  if not isinstance(value, str):
    raise _Malformed(f"the label {value!r} is not a string or an integer")
  if not value.strip():
    raise _Malformed("the label is empty")
  return value.strip()


def _sorted_labels(raw: list) -> tuple[str, ...]:
  distinct = set(raw)
  try:
    return tuple(sorted(distinct, key=int))  # '2' before '10'
  except ValueError:
    return tuple(sorted(distinct))


# ----------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------

# source -> (required options, optional options)
_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
  "glue_tsv": (("path",), ()),
  "tfds": ((), ("data_dir", "builder")),
  "fairseq_bin": (("path",), ()),
  "generic": (
    ("path", "text_columns", "label_column"),
    ("label_names", "regression", "skip_malformed", "format"),
  ),
}


def _check_source(source: str) -> None:
  if source not in SOURCES:
    raise DataError(f"unknown fine-tuning data source {source!r}; known: {list(SOURCES)}")


def read_split(source: str, task: str, split: str, **options: Any) -> LabeledSplit:
  """Reads split `split` of `task` from `source`, with TFDS/HF label ids.

  Options per source (see the readers):
    glue_tsv:    path (the GLUE task directory, e.g. glue_data/RTE)  -> glue_tsv.read_glue_split
    tfds:        data_dir=None, builder='glue'                        -> read_tfds_split
    fairseq_bin: path (the <TASK>-bin directory)                      -> read_fairseq_glue_split
    generic:     path (this split's file), text_columns, label_column, label_names=None,
                 regression=False, skip_malformed=False, format=None  -> read_generic_split
  Splits: `task_splits(source, task)`.
  """
  _check_source(source)
  required, optional = _OPTIONS[source]
  unknown = sorted(set(options) - set(required) - set(optional))
  if unknown:
    raise DataError(
      f"source {source!r} has no option(s) {unknown}; it takes {list(required + optional)}"
    )
  missing = [o for o in required if options.get(o) is None]
  if missing:
    raise DataError(f"source {source!r} needs the option(s) {missing} (task {task}, {split})")
  splits = task_splits(source, task)
  known = (splits["train"],) + splits["evaluation"]
  if split not in known:
    raise DataError(f"{source} task {task!r} has no split {split!r}; known: {list(known)}")
  if source == "glue_tsv":
    return read_glue_split(task, options["path"], split)
  if source == "tfds":
    return read_tfds_split(task, split, **options)
  if source == "fairseq_bin":
    return read_fairseq_glue_split(task, options["path"], split)
  return read_generic_split(task=task, split=split, **options)
