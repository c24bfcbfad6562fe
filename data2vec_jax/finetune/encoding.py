"""Labelled examples -> model inputs, as RoBERTa / fairseq's `sentence_prediction` task builds them.

Single sentence: `<s> A </s>`; pair: `<s> A </s> </s> B </s>` (fairseq: input0 = BPE(A) + `</s>`
with `<s>` prepended, input1 = BPE(B) + `</s>` with the separator `</s>` prepended; the same ids
as HF `RobertaTokenizer(text, text_pair)`). Texts are tokenized with the pretrained model's own
tokenizer; fairseq-binarized sources already hold dictionary ids.

Sequences longer than the position table (`EncoderConfig.max_sequence_length`, 512 for Base) are
never silently cut: per split, `too_long` chooses
* 'drop': leave the example out (fairseq drops over-long training examples; the default for
  training), counted in `EncodedSplit.num_too_long`;
* 'truncate': cut each text column in turn, longest first, until the example fits (every
  example is scored), counted;
* 'error': stop with the first over-long example's row and length (the default for evaluation
  splits, whose scores would otherwise not be the task's).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from data2vec_jax.finetune.examples import LabeledSplit

TOO_LONG = ("drop", "truncate", "error")


@dataclasses.dataclass
class EncodedSplit:
  """A split ready for batching.

  tokens: N int32 arrays, each `<s> ... </s>` (length <= the model's max_sequence_length).
  labels: [N] int32 class ids or float32 targets (after `label_scale` for regression).
  rows: [N] int64 row of each kept example in the source split.
  num_too_long: examples dropped or truncated for length (see the module docstring).
  """

  task: str
  split: str
  tokens: list[np.ndarray]
  labels: np.ndarray
  rows: np.ndarray
  num_too_long: int
  skipped: int
  label_names: tuple[str, ...] | None

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def max_length(self) -> int:
    return max((len(t) for t in self.tokens), default=0)


def tokenize_columns(split: LabeledSplit, tokenizer) -> tuple[tuple[np.ndarray, ...], ...]:
  """Per text column, the ids of each row without specials (int32 [n_i] each)."""
  if split.token_ids is not None:
    return split.token_ids
  if tokenizer is None:
    raise ValueError(f"{split.task}/{split.split} holds texts: a tokenizer is needed")
  return tuple(tuple(tokenizer.encode_batch(list(column))) for column in split.texts)


def join_pair(columns: Sequence[np.ndarray], *, bos_id: int, eos_id: int) -> np.ndarray:
  """`<s> A </s>` or `<s> A </s> </s> B </s>` (int32) from the columns' ids without specials."""
  parts = [np.asarray([bos_id], np.int32), columns[0], np.asarray([eos_id], np.int32)]
  for column in columns[1:]:
    parts += [np.asarray([eos_id], np.int32), column, np.asarray([eos_id], np.int32)]
  return np.concatenate([np.asarray(p, np.int32) for p in parts])


def _truncate(columns: list[np.ndarray], budget: int) -> list[np.ndarray]:
  """Cuts the longest column one token at a time until the total is <= budget (HF's
  'longest_first' strategy)."""
  lengths = [len(c) for c in columns]
  while sum(lengths) > budget:
    longest = int(np.argmax(lengths))
    lengths[longest] -= 1
  return [c[:n] for c, n in zip(columns, lengths)]


def encode_split(
  split: LabeledSplit,
  tokenizer,
  *,
  bos_id: int,
  eos_id: int,
  max_length: int,
  too_long: str,
  label_scale: float = 1.0,
) -> EncodedSplit:
  """Tokenizes and joins every example of `split`.

  Args:
    tokenizer: the model's tokenizer (`data.tokenizer.Tokenizer`); unused for token-id splits.
    max_length: longest allowed sequence including specials (`max_sequence_length`).
    too_long: 'drop' | 'truncate' | 'error' (module docstring).
    label_scale: regression targets are multiplied by it (fairseq trains STS-B on score / 5).
  Raises:
    ValueError: an over-long example under 'error', an unknown `too_long`, an empty split.
  """
  if too_long not in TOO_LONG:
    raise ValueError(f"too_long={too_long!r}; expected one of {TOO_LONG}")
  if len(split) == 0:
    raise ValueError(f"{split.task}/{split.split} has no examples")
  columns = tokenize_columns(split, tokenizer)
  specials = 2 + 2 * (len(columns) - 1)  # <s> A </s> [</s> B </s>]
  tokens, rows, num_too_long = [], [], 0
  for row in range(len(split)):
    parts = [np.asarray(c[row], np.int32) for c in columns]
    length = specials + sum(len(p) for p in parts)
    if length > max_length:
      num_too_long += 1
      if too_long == "error":
        raise ValueError(
          f"{split.where(row)}: {length} tokens, over the model's "
          f"{max_length} positions; set data.eval_too_long (or data.train_too_long) to "
          f"'truncate' to cut such examples (or 'drop' for training)"
        )
      if too_long == "drop":
        continue
      parts = _truncate(parts, max_length - specials)
    tokens.append(join_pair(parts, bos_id=bos_id, eos_id=eos_id))
    rows.append(row)
  if not tokens:
    raise ValueError(
      f"{split.task}/{split.split}: all {len(split)} examples are over the model's {max_length} "
      "positions"
    )
  labels = split.labels[np.asarray(rows)]
  if split.label_names is None:
    labels = labels.astype(np.float32) * np.float32(label_scale)
  else:
    labels = labels.astype(np.int32)
  return EncodedSplit(
    task=split.task,
    split=split.split,
    tokens=tokens,
    labels=labels,
    rows=np.asarray(rows, np.int64),
    num_too_long=num_too_long,
    skipped=split.skipped,
    label_names=split.label_names,
  )
