"""A run's labelled data: the configured source's train and dev splits, encoded for the model.

Where `data.path` points, per source: `glue_tsv` the GLUE download (`glue_data/`, holding `RTE/`,
`MNLI/`, ...) or one task's folder; `fairseq_bin` the folder holding `<TASK>-bin/` folders (e.g.
`RTE-bin`) or one of them; `generic` a folder with `train.<format>` and `<split>.<format>` for
each dev split; `tfds` reads `data.tfds_name/<task>` from `data.tfds_data_dir`; `python_topics`
writes the offline demo's task (finetune/demo_task.py) to `<workdir>/task_data` and reads it as
`generic` files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from data2vec_jax.finetune import recipes
from data2vec_jax.finetune import sources as sources_lib
from data2vec_jax.finetune.encoding import EncodedSplit, encode_split
from data2vec_jax.finetune.fairseq_glue import fairseq_glue_dictionary
from data2vec_jax.finetune.settings import RunSettings, comma_list
from data2vec_jax.model.config import EncoderConfig


@dataclasses.dataclass
class TaskData:
  train: EncodedSplit
  evals: dict[str, EncodedSplit]
  settings: RunSettings  # with a generic task's labels filled in from the train split

  def fingerprint(self, settings: RunSettings) -> str:
    """Which examples, labels, batch size and seed a checkpoint was trained with."""
    h = hashlib.sha256()
    h.update(f"{settings.task}|{settings.batch_size}|{settings.seed}|{settings.lr!r}".encode())
    for tokens in self.train.tokens:
      h.update(np.asarray(tokens, np.int32).tobytes())
    h.update(np.ascontiguousarray(self.train.labels).tobytes())
    return h.hexdigest()[:16]

  def summary(self) -> dict[str, Any]:
    """Counts per split: examples used, over-long ones dropped/truncated, source rows skipped."""
    return {
      split.split: {
        "examples": len(split),
        "too_long": split.num_too_long,
        "skipped_rows": split.skipped,
        "max_length": split.max_length,
      }
      for split in (self.train, *self.evals.values())
    }


def task_path(source: str, root: str, task: str) -> str:
  """The task's own folder under `root` when `root` holds the whole benchmark."""
  root = os.path.abspath(os.path.expanduser(root))
  name = recipes.GLUE_DIR_NAMES.get(task)
  if name is None:
    return root
  candidate = {"glue_tsv": name, "fairseq_bin": f"{name}-bin"}.get(source)
  if candidate and os.path.isdir(os.path.join(root, candidate)):
    return os.path.join(root, candidate)
  return root


def read_labeled_split(
  data: ml_collections.ConfigDict,
  task: str,
  split: str,
  label_names: tuple[str, ...] | None,
  *,
  workdir: str = "",
):
  """One split of the configured source: `sources.read_split` with the options `data` gives."""
  source, options = _source_options(data, task, split, label_names, workdir)
  return sources_lib.read_split(source, task, split, **options)


def _source_options(
  data: ml_collections.ConfigDict,
  task: str,
  split: str,
  label_names: tuple[str, ...] | None,
  workdir: str,
) -> tuple[str, dict[str, Any]]:
  """The reader's source and its options, from the run's `data` section (`python_topics`: the
  demo task's TSV files in `<workdir>/task_data`, read as a generic task)."""
  if data.source == "python_topics":
    return "generic", dict(
      path=os.path.join(workdir, "task_data", f"{split}.tsv"),
      text_columns=("sentence",),
      label_column="label",
      label_names=label_names,
      format="tsv",
    )
  if data.source == "tfds":
    return "tfds", dict(data_dir=data.tfds_data_dir or None, builder=data.tfds_name)
  path = task_path(data.source, data.path, task)
  if data.source != "generic":
    return data.source, dict(path=path)
  return "generic", dict(
    path=os.path.join(path, f"{split}.{data.format}"),
    text_columns=text_columns(data.text_columns),
    label_column=data.label_column,
    label_names=label_names,
    regression=bool(data.regression),
    skip_malformed=bool(data.skip_malformed),
    format=data.format,
  )


def text_columns(value) -> tuple[str, ...]:
  """data.text_columns as a tuple; a string is comma-separated (`--config.data.text_columns=a,b`
  on the command line, where ml_collections would otherwise need a Python tuple literal), as
  data.label_names is (`settings.comma_list`)."""
  return comma_list(value)


def load_task_data(
  config: ml_collections.ConfigDict,
  settings: RunSettings,
  tokenizer,
  model_config: EncoderConfig,
  *,
  workdir: str,
  log: bool = True,
) -> TaskData:
  """Reads and encodes the train split and every dev split of `settings.task`."""
  data = config.data
  if settings.source == "python_topics" and not os.path.isfile(
    os.path.join(workdir, "task_data", "validation.tsv")
  ):
    from data2vec_jax.finetune.demo_task import write_topic_task

    counts = write_topic_task(os.path.join(workdir, "task_data"))
    logging.info("python_topics: wrote the demo task to %s/task_data: %s", workdir, counts)
  if settings.source == "fairseq_bin":
    _check_fairseq_dictionary(data, settings.task, model_config)
  encode = lambda split, too_long: encode_split(  # noqa: E731
    split,
    tokenizer,
    bos_id=0 if tokenizer is None else tokenizer.vocab.bos_id,
    eos_id=2 if tokenizer is None else tokenizer.vocab.eos_id,
    max_length=model_config.max_sequence_length,
    too_long=too_long,
    label_scale=settings.regression_scale,
  )
  raw_train = read_labeled_split(
    data, settings.task, "train", settings.label_names, workdir=workdir
  )
  if settings.num_labels == 0:  # a generic task's classes: the train split's labels
    names = raw_train.label_names
    settings = dataclasses.replace(settings, label_names=names, num_labels=len(names))
    if settings.num_labels < 2:
      raise ValueError(
        f"{settings.task}: the train split has {settings.num_labels} distinct label(s); a "
        "classifier needs 2 or more (or set data.regression=True)"
      )
  train = encode(raw_train, data.train_too_long)
  evals = {}
  for split in settings.eval_splits:
    raw = read_labeled_split(data, settings.task, split, settings.label_names, workdir=workdir)
    evals[split] = encode(raw, data.eval_too_long)
  result = TaskData(train=train, evals=evals, settings=settings)
  if log:
    _log_counts(result, data, model_config)
  return result


def _log_counts(
  task_data: TaskData, data: ml_collections.ConfigDict, model_config: EncoderConfig
) -> None:
  """One line per split: examples, the longest, the over-long ones and the skipped rows."""
  for name, counts in task_data.summary().items():
    logging.info(
      "%s/%s: %d examples (longest %d tokens), %d over the %d positions (%s), %d malformed "
      "source rows skipped",
      task_data.settings.task,
      name,
      counts["examples"],
      counts["max_length"],
      counts["too_long"],
      model_config.max_sequence_length,
      data.train_too_long if name == "train" else data.eval_too_long,
      counts["skipped_rows"],
    )


def _check_fairseq_dictionary(data, task: str, model_config: EncoderConfig) -> None:
  """Binarized ids are only the model's with the model's dictionary: sizes must agree."""
  dictionary = fairseq_glue_dictionary(task_path("fairseq_bin", data.path, task))
  if len(dictionary) != model_config.vocab_size:
    raise ValueError(
      f"{data.path}: input0/dict.txt gives {len(dictionary)} ids (with <mask>) but the model has "
      f"{model_config.vocab_size}: the data was binarized with another dictionary than the "
      "model's; re-binarize with the model's dict.txt"
    )
