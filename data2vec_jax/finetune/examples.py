"""What every fine-tuning data source returns: one split of labelled examples.

A source gives either texts (GLUE TSV, TFDS, a user's TSV/JSONL: tokenized later with the
pretrained model's own tokenizer) or token ids already in the model's dictionary (fairseq's
binarized GLUE layout). `finetune.encoding` turns both into model inputs
(`<s> A </s></s> B </s>`).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class LabeledSplit:
  """One split of a task.

  Attributes:
    task: task name (e.g. 'rte', or a user's name for a generic task).
    split: split name ('train', 'validation', 'validation_matched', ...).
    texts: one tuple of strings per text column ([N] each: sentence A, and B for pair tasks);
      None when `token_ids` is given.
    labels: int64 [N] label ids (0..num_labels-1), or float32 [N] targets for regression.
    token_ids: one tuple per text column of int32 arrays of dictionary ids, without `<s>` and
      without the trailing `</s>` (fairseq-binarized data); None when `texts` is given.
    skipped: rows the source skipped, each counted (e.g. QQP's malformed lines).
    label_names: names of the label ids in id order (None for regression).
    path, lines: the file the rows were read from and int64 [N] the 1-based line of each row
      in it (the header counted), for errors a user can look up; None when the source has no
      lines (TFDS, binarized data).
  """

  task: str
  split: str
  texts: tuple[tuple[str, ...], ...] | None
  labels: np.ndarray
  skipped: int = 0
  token_ids: tuple[tuple[np.ndarray, ...], ...] | None = None
  label_names: tuple[str, ...] | None = None
  path: str | None = None
  lines: np.ndarray | None = None

  def __post_init__(self) -> None:
    columns = self.texts if self.texts is not None else self.token_ids
    if (self.texts is None) == (self.token_ids is None):
      raise ValueError("a LabeledSplit holds either texts or token_ids, exactly one of them")
    for column in columns:
      if len(column) != len(self.labels):
        raise ValueError(
          f"{self.task}/{self.split}: a text column has {len(column)} rows but there are "
          f"{len(self.labels)} labels"
        )

  @property
  def num_columns(self) -> int:
    return len(self.texts if self.texts is not None else self.token_ids)

  def __len__(self) -> int:
    return len(self.labels)

  def where(self, row: int) -> str:
    """Where example `row` (0-based) came from: `file:line` when known, else its index."""
    if self.path is not None and self.lines is not None:
      return f"{self.path}:{int(self.lines[row])} ({self.task}/{self.split})"
    return f"{self.task}/{self.split} example {row} (0-based)"
