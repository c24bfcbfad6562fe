"""The GLUE tasks' TSV files (as `download_glue_data.py` writes them) -> texts and label ids.

Column layouts, headers and label names follow docs/reference/finetuning_reference.md §4.1;
label ids are TFDS's / Hugging Face's (§4.3), e.g. MNLI 0 entailment, 1 neutral, 2
contradiction. STS-B targets are the raw scores in [0, 5].

Bad rows are never passed over silently:
* QQP's known malformed lines (not exactly 6 fields) are skipped and counted in
  `GlueSplit.skipped`, as fairseq (`awk NF==6`), HF and TFDS skip them;
* in every other task, a row without the needed columns, or a label outside the task's label
  set, is an error naming the file, the line and the fix.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from data2vec_jax.data.sources import DataError
from data2vec_jax.finetune.examples import LabeledSplit


@dataclasses.dataclass(frozen=True)
class TaskLayout:
  """Where a task's columns are. Indices are 0-based; label -1 = the last column."""

  files: dict[str, str]  # split -> file name
  text_columns: tuple[int, ...]
  label_column: int
  labels: tuple[str, ...] | None  # raw label values in id order; None = regression (float)
  header: bool = True
  exact_fields: int | None = None  # rows with another field count are skipped and counted


_DEV = {"train": "train.tsv", "validation": "dev.tsv"}
TASKS: dict[str, TaskLayout] = {
  "cola": TaskLayout(_DEV, (3,), 1, ("0", "1"), header=False),
  "sst2": TaskLayout(_DEV, (0,), 1, ("0", "1")),
  "mrpc": TaskLayout(_DEV, (3, 4), 0, ("0", "1")),
  "qqp": TaskLayout(_DEV, (3, 4), 5, ("0", "1"), exact_fields=6),
  "stsb": TaskLayout(_DEV, (7, 8), 9, None),
  "mnli": TaskLayout(
    {
      "train": "train.tsv",
      "validation_matched": "dev_matched.tsv",
      "validation_mismatched": "dev_mismatched.tsv",
    },
    (8, 9),
    -1,
    ("entailment", "neutral", "contradiction"),
  ),
  "qnli": TaskLayout(_DEV, (1, 2), 3, ("entailment", "not_entailment")),
  "rte": TaskLayout(_DEV, (1, 2), 3, ("entailment", "not_entailment")),
  "wnli": TaskLayout(_DEV, (1, 2), 3, ("0", "1")),
}


GlueSplit = LabeledSplit  # the name this module used first


def check_glue_task(task: str, split: str | None = None) -> None:
  """DataError unless `task` is a GLUE task (and `split`, when given, one of its splits)."""
  if task not in TASKS:
    raise DataError(f"unknown GLUE task {task!r}; known: {sorted(TASKS)}")
  if split is not None and split not in TASKS[task].files:
    raise DataError(f"GLUE task {task} has no split {split!r}; known: {list(TASKS[task].files)}")


def read_glue_split(task: str, directory: str, split: str) -> LabeledSplit:
  """Reads `<directory>/<file of split>` for `task` (a GLUE task directory, e.g. glue_data/RTE)."""
  if task not in TASKS:
    raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(TASKS)}")
  layout = TASKS[task]
  if split not in layout.files:
    raise ValueError(f"{task} has no split {split!r}; known: {sorted(layout.files)}")
  path = os.path.join(directory, layout.files[split])
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"{path} not found: point the {task} data at the GLUE task directory that holds "
      f"{', '.join(layout.files.values())}"
    )
  needed = max(max(layout.text_columns), layout.label_column) + 1
  texts: list[list[str]] = [[] for _ in layout.text_columns]
  labels: list[float | int] = []
  lines: list[int] = []
  skipped = 0
  with open(path, encoding="utf-8", newline="") as f:
    for number, line in enumerate(f, start=1):
      if number == 1 and layout.header:
        continue
      fields = line.rstrip("\r\n").split("\t")
      if layout.exact_fields is not None and len(fields) != layout.exact_fields:
        skipped += 1
        continue
      if len(fields) < needed:
        raise ValueError(
          f"{path}:{number}: {len(fields)} tab-separated fields, but {task} needs at least "
          f"{needed} (text columns {list(layout.text_columns)}, label column "
          f"{layout.label_column}); fix or remove the line"
        )
      for column, values in zip(layout.text_columns, texts):
        values.append(fields[column])
      labels.append(_label(fields[layout.label_column], layout, path, number, task))
      lines.append(number)
  dtype = np.float32 if layout.labels is None else np.int64
  return LabeledSplit(
    task,
    split,
    tuple(tuple(v) for v in texts),
    np.asarray(labels, dtype),
    skipped,
    label_names=_label_names(task, layout),
    path=path,
    lines=np.asarray(lines, np.int64),
  )


def _label(value: str, layout: TaskLayout, path: str, number: int, task: str) -> float | int:
  value = value.strip()
  if layout.labels is None:
    try:
      return float(value)
    except ValueError:
      raise ValueError(f"{path}:{number}: {task} score {value!r} is not a number") from None
  if value not in layout.labels:
    raise ValueError(
      f"{path}:{number}: unknown {task} label {value!r}; expected one of {list(layout.labels)}"
    )
  return layout.labels.index(value)


# TFDS / HF ClassLabel names of each task's label ids (docs/reference/finetuning_reference.md §4.3).
LABEL_NAMES: dict[str, tuple[str, ...]] = {
  "cola": ("unacceptable", "acceptable"),
  "sst2": ("negative", "positive"),
  "mrpc": ("not_equivalent", "equivalent"),
  "qqp": ("not_duplicate", "duplicate"),
  "mnli": ("entailment", "neutral", "contradiction"),
  "qnli": ("entailment", "not_entailment"),
  "rte": ("entailment", "not_entailment"),
  "wnli": ("not_entailment", "entailment"),
}


def _label_names(task: str, layout: TaskLayout) -> tuple[str, ...] | None:
  return None if layout.labels is None else LABEL_NAMES[task]
