"""GLUE from TFDS: `glue/<task>` read through `tfds.data_source` (ArrayRecord; TensorFlow is not
needed), as a `LabeledSplit` (finetune/examples.py) with TFDS's / Hugging Face's label ids.

Text features and split names per docs/reference/finetuning_reference.md §4.3 (MNLI:
`validation_matched` / `validation_mismatched`; our split names are TFDS's). The dataset must be
prepared beforehand (`tfds build glue/<task> --file_format array_record`): nothing is downloaded
at run time. Rows come back in source-file order (TFDS's `idx` feature), not TFDS's shuffled
storage order, so TFDS and the GLUE TSVs give the same rows in the same order. TFDS drops QQP's
malformed rows when it builds the dataset, so their count is not known here (`skipped` counts
only examples holding a None text at read time, normally 0).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from data2vec_jax.data.sources import DataError
from data2vec_jax.finetune.examples import LabeledSplit
from data2vec_jax.finetune.glue_tsv import LABEL_NAMES, TASKS, check_glue_task

log = logging.getLogger(__name__)

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
  check_glue_task(task, split)
  name = f"{builder}/{task}"
  ds_builder = _prepared_builder(builder, name, data_dir)
  source = _open_split(ds_builder, name, task, split, data_dir)
  return _tfds_rows(task, split, name, source)


def _where(data_dir: str | None) -> str:
  return f"data_dir={data_dir!r}" if data_dir else "TFDS's default data_dir"


def _how_to_prepare(name: str, data_dir: str | None) -> str:
  build = f"tfds build {name} --file_format array_record" + (
    f" --data_dir {data_dir}" if data_dir else ""
  )
  return (
    f"prepare it once, with network access, with `{build}` (and pass that data_dir); "
    f"nothing is downloaded at run time"
  )


def _prepared_builder(builder: str, name: str, data_dir: str | None) -> Any:
  """The TFDS builder `name` (`<builder>/<task>`), registered and prepared in `data_dir`."""
  import tensorflow_datasets as tfds

  if builder == "glue":
    # TFDS registers a builder when its module is imported; without TensorFlow the lazy imports
    # of `tensorflow_datasets/__init__.py` may leave `glue` unregistered.
    import tensorflow_datasets.text.glue  # noqa: F401

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
    raise DataError(
      f"TFDS dataset {name} is not prepared in {_where(data_dir)}; "
      f"{_how_to_prepare(name, data_dir)}"
    )
  return ds_builder


def _open_split(ds_builder: Any, name: str, task: str, split: str, data_dir: str | None) -> Any:
  """The split's random-access data source, once the split and the features are checked."""
  where, prepare = _where(data_dir), _how_to_prepare(name, data_dir)
  if TFDS_SPLITS[split] not in ds_builder.info.splits:
    raise DataError(
      f"TFDS dataset {name} in {where} has no split {TFDS_SPLITS[split]!r} (it has "
      f"{sorted(ds_builder.info.splits)}); {prepare}"
    )
  _check_tfds_features(task, name, ds_builder.info.features)
  try:
    return ds_builder.as_data_source(split=TFDS_SPLITS[split])
  except NotImplementedError as e:  # prepared as TFRecord: no random access without TensorFlow
    raise DataError(
      f"TFDS dataset {name} in {where} is not in ArrayRecord format, which reading without "
      f"TensorFlow needs; {prepare} (into another data_dir, or delete the TFRecord copy)"
    ) from e


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
