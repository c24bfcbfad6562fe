"""Fine-tuning data sources: which reader reads a split, and the facts of each source's tasks.

Every reader returns one split as a `LabeledSplit` (finetune/examples.py) whose label ids are
TFDS's / Hugging Face's (docs/reference/finetuning_reference.md §4.3), whatever the source:

* `glue_tsv`: the GLUE download's TSV files, `glue_tsv.read_glue_split`;
* `tfds`: TFDS `glue/<task>`, prepared beforehand, `tfds_glue.read_tfds_split`;
* `fairseq_bin`: fairseq's binarized `<TASK>-bin` layout, already tokenized,
  `fairseq_glue.read_fairseq_glue_split` (check its dictionary with
  `fairseq_glue.check_same_dictionary`);
* `generic`: a task of your own in a TSV or JSONL file, `generic_task.read_generic_split`.

`read_split(source, task, split, **options)` checks the options and the split and calls the
source's reader; `task_splits` names a task's train and evaluation splits and `num_labels` the
size of its head.

Bad data is never passed over silently: an error names the file and line (or split and example)
and the fix. Only `read_generic_split(skip_malformed=True)` skips malformed rows, counted in
`LabeledSplit.skipped` (as glue_tsv counts QQP's).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

from data2vec_jax.data.sources import DataError
from data2vec_jax.finetune.examples import LabeledSplit
from data2vec_jax.finetune.fairseq_glue import read_fairseq_glue_split
from data2vec_jax.finetune.generic_task import read_generic_split
from data2vec_jax.finetune.glue_tsv import LABEL_NAMES, TASKS, check_glue_task, read_glue_split
from data2vec_jax.finetune.tfds_glue import read_tfds_split


class _Reader(NamedTuple):
  read: Callable[..., LabeledSplit]  # (task, split, **options)
  required: tuple[str, ...]  # options
  optional: tuple[str, ...]


_READERS: dict[str, _Reader] = {
  "glue_tsv": _Reader(lambda task, split, path: read_glue_split(task, path, split), ("path",), ()),
  "tfds": _Reader(read_tfds_split, (), ("data_dir", "builder")),
  "fairseq_bin": _Reader(
    lambda task, split, path: read_fairseq_glue_split(task, path, split), ("path",), ()
  ),
  "generic": _Reader(
    lambda task, split, **options: read_generic_split(task=task, split=split, **options),
    ("path", "text_columns", "label_column"),
    ("label_names", "regression", "skip_malformed", "format"),
  ),
}
SOURCES = tuple(_READERS)  # ("glue_tsv", "tfds", "fairseq_bin", "generic")


def _check_source(source: str) -> None:
  if source not in SOURCES:
    raise DataError(f"unknown fine-tuning data source {source!r}; known: {list(SOURCES)}")


def task_splits(source: str, task: str) -> dict[str, Any]:
  """The split names of `task`: {'train': 'train', 'evaluation': (eval split names, ...)}.

  GLUE tasks evaluate on 'validation', MNLI on 'validation_matched' and 'validation_mismatched';
  a generic task on 'validation'.
  """
  _check_source(source)
  if source == "generic":
    return {"train": "train", "evaluation": ("validation",)}
  check_glue_task(task)
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
    check_glue_task(task)
    return 1 if TASKS[task].labels is None else len(LABEL_NAMES[task])
  if regression:
    return 1
  if not label_names:
    raise DataError(
      f"generic task {task!r}: num_labels needs label_names (the train split's "
      f"LabeledSplit.label_names) or regression=True"
    )
  return len(label_names)


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
  reader = _READERS[source]
  unknown = sorted(set(options) - set(reader.required) - set(reader.optional))
  if unknown:
    raise DataError(
      f"source {source!r} has no option(s) {unknown}; it takes "
      f"{list(reader.required + reader.optional)}"
    )
  missing = [o for o in reader.required if options.get(o) is None]
  if missing:
    raise DataError(f"source {source!r} needs the option(s) {missing} (task {task}, {split})")
  splits = task_splits(source, task)
  known = (splits["train"],) + splits["evaluation"]
  if split not in known:
    raise DataError(f"{source} task {task!r} has no split {split!r}; known: {list(known)}")
  return reader.read(task, split, **options)
