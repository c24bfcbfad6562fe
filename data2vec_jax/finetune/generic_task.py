"""A task of your own: a labelled TSV file (header row; no quoting, fields are split on tabs) or
JSONL (one object per line), columns / keys chosen by name, as a `LabeledSplit`
(finetune/examples.py).

Class labels get ids in the order of `label_names`, by default the sorted distinct labels of the
train split (numerically sorted when they are all integers); an evaluation split must be read
with the train split's `label_names`. `regression=True` reads labels as float32 targets.

Bad data is never passed over silently: an error names the file and line and the fix. Only
`skip_malformed=True` skips malformed rows, counted in `LabeledSplit.skipped` (as glue_tsv
counts QQP's).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

from data2vec_jax.data.sources import DataError
from data2vec_jax.finetune.examples import LabeledSplit

log = logging.getLogger(__name__)

GENERIC_SPLITS = ("train", "validation")
GENERIC_FORMATS = ("tsv", "jsonl")


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
  text_columns = _checked_columns(task, text_columns, label_column)
  label_names = _checked_label_names(task, split, label_names, regression)
  rows = _tsv_rows if _checked_format(path, format, task, split) == "tsv" else _jsonl_rows
  texts, raw, places, skipped = _kept_rows(
    path, rows(path, text_columns, label_column), regression, skip_malformed
  )
  if regression:
    labels = np.asarray(raw, np.float32)
  else:
    label_names = label_names or _sorted_labels(raw)
    labels = _class_ids(path, split, raw, places, label_names)
  return LabeledSplit(
    task,
    split,
    texts,
    labels,
    skipped,
    label_names=None if regression else tuple(label_names),
    path=path,
    lines=np.asarray(places, np.int64),
  )


def _checked_columns(task: str, text_columns: Sequence[str], label_column: str) -> tuple[str, ...]:
  """`text_columns` as a tuple, once it and `label_column` are known to name 1-2 and 1 columns."""
  text_columns = tuple(text_columns)
  if len(text_columns) not in (1, 2) or not all(isinstance(c, str) and c for c in text_columns):
    raise DataError(
      f"generic task {task!r}: text_columns must name 1 or 2 columns, got {list(text_columns)}"
    )
  if not isinstance(label_column, str) or not label_column:
    raise DataError(f"generic task {task!r}: label_column must name a column, got {label_column!r}")
  return text_columns


def _checked_label_names(
  task: str, split: str, label_names: Sequence[str] | None, regression: bool
) -> tuple[str, ...] | None:
  """The given class labels as strings; None when the train split is to infer them."""
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
  return label_names


def _checked_format(path: str, format: str | None, task: str, split: str) -> str:
  """'tsv' or 'jsonl' (given, or from the extension), once the file is known to exist."""
  fmt = format or _format_of(path)
  if fmt not in GENERIC_FORMATS:
    raise DataError(f"{path}: unknown format {fmt!r}; use one of {list(GENERIC_FORMATS)}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found (generic task {task!r} split {split!r})")
  return fmt


def _kept_rows(
  path: str, rows: Iterable[tuple[int, Any]], regression: bool, skip_malformed: bool
) -> tuple[tuple[tuple[str, ...], ...], list[str | float], list[int], int]:
  """(texts: one tuple of str per column, raw labels, line number of each kept row, rows
  skipped) from `rows`' (line, (texts, label)) and (line, _Malformed) items."""
  kept: list[list[str]] = []  # each kept row's texts
  raw: list[str | float] = []
  places: list[int] = []  # line number of each kept row, for label errors
  skipped = 0
  fix = "fix or remove the line, or set skip_malformed=True to skip and count such rows"
  for number, row in rows:
    try:
      if isinstance(row, _Malformed):
        raise row
      values, label = row
      raw.append(_generic_label(label, regression))
    except _Malformed as e:
      if skip_malformed:
        skipped += 1
        continue
      raise DataError(f"{path}:{number}: {e}; {fix}") from None
    kept.append(values)
    places.append(number)
  if not raw:
    raise DataError(f"{path}: no rows (after {skipped} malformed ones were skipped)")
  if skipped:
    log.warning("%s: skipped %d malformed rows (skip_malformed=True)", path, skipped)
  return tuple(tuple(column) for column in zip(*kept)), raw, places, skipped


def _class_ids(
  path: str, split: str, raw: list[str | float], places: list[int], label_names: Sequence[str]
) -> np.ndarray:
  """int64 [N] ids of the raw labels in `label_names`; an unknown label names its line."""
  ids = {name: i for i, name in enumerate(label_names)}
  for label, number in zip(raw, places):
    if label not in ids:
      raise DataError(
        f"{path}:{number}: label {label!r} is not one of the {len(ids)} labels "
        f"{list(label_names)}"
        + (" of the train split" if split != "train" else "")
        + "; fix the label, or add it to label_names (and train on it)"
      )
  return np.asarray([ids[label] for label in raw], np.int64)


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
    yield (
      number,
      _row(text_columns, [fields[index[c]] for c in text_columns], fields[index[label_column]]),
    )


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
    yield number, _row(text_columns, texts, obj[label_column])


def _row(text_columns: tuple[str, ...], texts: list[str], label: Any) -> tuple | _Malformed:
  """(texts, label), or _Malformed when a text is empty (only blanks)."""
  for name, value in zip(text_columns, texts):
    if not value.strip():
      return _Malformed(f"the text {name!r} is empty")
  return texts, label


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
