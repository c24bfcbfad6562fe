"""GLUE TSV reading (data2vec_jax/finetune/glue_tsv.py) on tiny files in the official layouts."""

from __future__ import annotations

import numpy as np
import pytest

from data2vec_jax.finetune.glue_tsv import TASKS, read_glue_split


def write(directory, name: str, rows: list[list[str]]) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / name).write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


def test_every_task_layout(tmp_path):
  d = tmp_path
  write(
    d / "CoLA",
    "dev.tsv",
    [["gj04", "1", "", "Our friends won't buy it."], ["gj04", "0", "*", "They drank the pub."]],
  )
  write(d / "SST-2", "dev.tsv", [["sentence", "label"], ["a gripping film", "1"]])
  write(
    d / "MRPC",
    "dev.tsv",
    [
      ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
      ["0", "1", "2", "He said.", "She said."],
    ],
  )
  write(
    d / "STS-B",
    "dev.tsv",
    [
      [
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
      ],
      ["0", "g", "f", "y", "0", "s1", "s2", "A man.", "A guy.", "4.25"],
    ],
  )
  header = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "s1b",
    "s2b",
    "s1p",
    "s2p",
    "sentence1",
    "sentence2",
    "label1",
    "label2",
    "label3",
    "label4",
    "label5",
    "gold_label",
  ]
  row = [
    "0",
    "1",
    "2",
    "g",
    "",
    "",
    "",
    "",
    "Premise.",
    "Hypothesis.",
    "neutral",
    "",
    "",
    "",
    "",
    "contradiction",
  ]
  write(d / "MNLI", "dev_matched.tsv", [header, row])
  write(
    d / "RTE",
    "dev.tsv",
    [
      ["index", "sentence1", "sentence2", "label"],
      ["0", "It rains.", "It is wet.", "not_entailment"],
    ],
  )

  cola = read_glue_split("cola", str(d / "CoLA"), "validation")  # no header: both rows read
  assert cola.texts == (("Our friends won't buy it.", "They drank the pub."),)
  assert cola.labels.tolist() == [1, 0] and cola.labels.dtype == np.int64
  assert read_glue_split("sst2", str(d / "SST-2"), "validation").labels.tolist() == [1]
  mrpc = read_glue_split("mrpc", str(d / "MRPC"), "validation")
  assert mrpc.texts == (("He said.",), ("She said.",)) and mrpc.labels.tolist() == [0]
  stsb = read_glue_split("stsb", str(d / "STS-B"), "validation")
  assert stsb.labels.dtype == np.float32 and stsb.labels.tolist() == [4.25]
  mnli = read_glue_split("mnli", str(d / "MNLI"), "validation_matched")
  # The gold label is the last column; ids in TFDS/HF order (entailment, neutral, contradiction).
  assert mnli.texts == (("Premise.",), ("Hypothesis.",)) and mnli.labels.tolist() == [2]
  assert read_glue_split("rte", str(d / "RTE"), "validation").labels.tolist() == [1]


def test_qqp_malformed_rows_are_skipped_and_counted(tmp_path):
  header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
  write(
    tmp_path,
    "train.tsv",
    [
      header,
      ["0", "1", "2", "How?", "Why?", "1"],
      ["1", "3", "4", "A question with no pair"],
      ["2", "5", "6", "Q?", "Q!", "0"],
    ],
  )
  split = read_glue_split("qqp", str(tmp_path), "train")
  assert len(split) == 2 and split.skipped == 1 and split.labels.tolist() == [1, 0]


def test_bad_rows_and_files_are_errors_naming_the_line(tmp_path):
  write(
    tmp_path,
    "dev.tsv",
    [
      ["index", "sentence1", "sentence2", "label"],
      ["0", "A.", "B.", "entailment"],
      ["1", "A.", "B.", "maybe"],
    ],
  )
  with pytest.raises(ValueError, match=r"dev.tsv:3: unknown rte label 'maybe'; expected one of"):
    read_glue_split("rte", str(tmp_path), "validation")
  write(tmp_path, "dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "A."]])
  with pytest.raises(
    ValueError, match=r"dev.tsv:2: 2 tab-separated fields, but rte needs at least 4"
  ):
    read_glue_split("rte", str(tmp_path), "validation")
  with pytest.raises(FileNotFoundError, match="train.tsv not found"):
    read_glue_split("rte", str(tmp_path), "train")
  with pytest.raises(ValueError, match="unknown GLUE task 'sts'"):
    read_glue_split("sts", str(tmp_path), "train")
  with pytest.raises(ValueError, match="mnli has no split 'validation'"):
    read_glue_split("mnli", str(tmp_path), "validation")
  write(tmp_path / "sts", "dev.tsv", [["h"] * 10, ["0"] * 9 + ["high"]])
  with pytest.raises(ValueError, match="stsb score 'high' is not a number"):
    read_glue_split("stsb", str(tmp_path / "sts"), "validation")


def test_the_nine_tasks_are_described():
  assert sorted(TASKS) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli"]
