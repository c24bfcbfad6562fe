"""GLUE from fairseq's binarized `<TASK>-bin` layout (docs/reference/finetuning_reference.md
§4.2), already tokenized, as a `LabeledSplit` (finetune/examples.py) with TFDS's / Hugging
Face's label ids:

    input0/dict.txt  input0/<prefix>.{bin,idx}     sentence A (+ `</s>` from the binarizer)
    input1/...                                    sentence B, pair tasks only
    label/dict.txt   label/<prefix>.{bin,idx}      classification: `<label symbol> </s>`
    label/<prefix>.label                          STS-B: one float per line, score / 5

with prefixes train, valid (validation, MNLI validation_matched) and valid1 (MNLI
validation_mismatched). Token ids come back as `LabeledSplit.token_ids`, without the binarizer's
trailing `</s>`. fairseq's class ids are the line order of label/dict.txt (by train frequency),
so each label id is decoded to its raw GLUE value ('0'/'1', 'entailment', ...) and re-encoded
with `glue_tsv.TASKS[task].labels`: fairseq's class order never leaks out. STS-B targets are the
file's values x 5, i.e. the raw 0-5 scores, as from the other sources. The ids are only
meaningful with the dictionary they were binarized with: compare `fairseq_glue_dictionary(path)`
with the model's (`check_same_dictionary`).
"""

from __future__ import annotations

import os

import numpy as np

from data2vec_jax.data.dictionary import Dictionary
from data2vec_jax.data.sources import DataError, MMapIndexedDataset
from data2vec_jax.finetune.examples import LabeledSplit
from data2vec_jax.finetune.glue_tsv import LABEL_NAMES, TASKS, check_glue_task

# Our split name -> the file prefix fairseq-preprocess writes (`--validpref dev_matched,
# dev_mismatched` numbers the second valid set `valid1`).
FAIRSEQ_SPLITS = {
  "train": "train",
  "validation": "valid",
  "validation_matched": "valid",
  "validation_mismatched": "valid1",
}

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
  check_glue_task(task, split)
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
