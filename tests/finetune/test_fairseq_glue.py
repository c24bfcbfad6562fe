"""GLUE from fairseq's <TASK>-bin layout (data2vec_jax/finetune/fairseq_glue.py) through the
dispatcher, on tiny binarized data written as fairseq-preprocess writes it."""

from __future__ import annotations

import numpy as np
import pytest

from data2vec_jax.data.dictionary import Dictionary
from data2vec_jax.data.sources import DataError, MMapIndexedDatasetBuilder
from data2vec_jax.finetune.fairseq_glue import check_same_dictionary, fairseq_glue_dictionary
from data2vec_jax.finetune.sources import read_split

WORDS = ["hello", "world", "foo", "bar", "baz"]  # ids 4..8; <mask> = 9


def write_bin(prefix, rows) -> None:
  with MMapIndexedDatasetBuilder(str(prefix), np.uint16) as b:
    for row in rows:
      b.add_item(np.asarray(row, np.int64))


def write_input(directory, name, splits: dict) -> None:
  d = directory / name
  d.mkdir(parents=True, exist_ok=True)
  Dictionary.from_symbols(WORDS, [9, 8, 7, 6, 5], add_mask=False).save(d / "dict.txt")
  for prefix, rows in splits.items():
    write_bin(d / prefix, [list(r) + [2] for r in rows])  # the binarizer's trailing </s>


def write_labels(directory, dict_lines: list[str], splits: dict) -> None:
  """`dict_lines` in fairseq's order (train frequency); labels given as raw strings."""
  d = directory / "label"
  d.mkdir(parents=True, exist_ok=True)
  (d / "dict.txt").write_text("".join(line + "\n" for line in dict_lines))
  symbols = [line.split()[0] for line in dict_lines]
  for prefix, labels in splits.items():
    write_bin(d / prefix, [[4 + symbols.index(label), 2] for label in labels])


@pytest.fixture
def rte_bin(tmp_path):
  d = tmp_path / "RTE-bin"
  write_input(d, "input0", {"train": [[4, 5], [6], [7, 8, 4]], "valid": [[8]]})
  write_input(d, "input1", {"train": [[5], [4, 4], [8]], "valid": [[4, 6]]})
  # fairseq class 0 = not_entailment (the majority), TFDS id 0 = entailment
  write_labels(
    d,
    ["not_entailment 2", "entailment 1"],
    {"train": ["entailment", "not_entailment", "not_entailment"], "valid": ["not_entailment"]},
  )
  return d


def test_fairseq_pair_task_ids_and_labels(rte_bin):
  got = read_split("fairseq_bin", "rte", "train", path=str(rte_bin))
  assert got.texts is None and got.num_columns == 2
  assert [t.tolist() for t in got.token_ids[0]] == [[4, 5], [6], [7, 8, 4]]
  assert [t.tolist() for t in got.token_ids[1]] == [[5], [4, 4], [8]]
  assert all(t.dtype == np.int32 for column in got.token_ids for t in column)
  assert got.labels.dtype == np.int64 and got.labels.tolist() == [0, 1, 1]
  assert got.label_names == ("entailment", "not_entailment")
  valid = read_split("fairseq_bin", "rte", "validation", path=str(rte_bin))
  assert [t.tolist() for t in valid.token_ids[1]] == [[4, 6]] and valid.labels.tolist() == [1]
  dictionary = fairseq_glue_dictionary(str(rte_bin))
  assert dictionary.symbols[4:] == WORDS + ["<mask>"] and dictionary.mask_index == 9
  check_same_dictionary(dictionary, Dictionary.from_symbols(WORDS))
  with pytest.raises(DataError, match="id 5 is 'world' there but 'bar' in the model's"):
    check_same_dictionary(
      dictionary, Dictionary.from_symbols(["hello", "bar", "foo", "world", "baz"])
    )
  with pytest.raises(DataError, match="10 symbols there, 9 in the model's"):
    check_same_dictionary(dictionary, Dictionary.from_symbols(WORDS, add_mask=False))


def test_fairseq_single_task_majority_first(tmp_path):
  d = tmp_path / "SST-2-bin"
  write_input(d, "input0", {"train": [[4], [5, 6], [7]]})
  write_labels(d, ["1 5", "0 3"], {"train": ["0", "1", "1"]})  # fairseq class 0 = '1'
  got = read_split("fairseq_bin", "sst2", "train", path=str(d))
  assert got.num_columns == 1 and got.labels.tolist() == [0, 1, 1]
  assert got.label_names == ("negative", "positive")


def test_fairseq_mnli_valid1_and_stsb_scores(tmp_path):
  d = tmp_path / "MNLI-bin"
  write_input(d, "input0", {"valid": [[4]], "valid1": [[5], [6]]})
  write_input(d, "input1", {"valid": [[7]], "valid1": [[8], [8]]})
  write_labels(
    d,
    ["contradiction 3", "entailment 2", "neutral 1"],
    {"valid": ["contradiction"], "valid1": ["entailment", "neutral"]},
  )
  matched = read_split("fairseq_bin", "mnli", "validation_matched", path=str(d))
  mismatched = read_split("fairseq_bin", "mnli", "validation_mismatched", path=str(d))
  assert matched.labels.tolist() == [2] and [t.tolist() for t in matched.token_ids[0]] == [[4]]
  assert mismatched.labels.tolist() == [0, 1]
  assert [t.tolist() for t in mismatched.token_ids[0]] == [[5], [6]]

  s = tmp_path / "STS-B-bin"
  write_input(s, "input0", {"train": [[4], [5], [6]]})
  write_input(s, "input1", {"train": [[4], [5], [6]]})
  (s / "label").mkdir()
  (s / "label" / "train.label").write_text("0.85\n0.0\n0.76\n")  # score / 5, as awk writes it
  got = read_split("fairseq_bin", "stsb", "train", path=str(s))
  assert got.labels.dtype == np.float32 and got.label_names is None
  np.testing.assert_array_equal(got.labels, np.float32([4.25, 0.0, 3.8]))
  (s / "label" / "train.label").write_text("0.85\nx\n0.76\n")
  with pytest.raises(DataError, match=r"train\.label:2: 'x' is not a number"):
    read_split("fairseq_bin", "stsb", "train", path=str(s))
  (s / "label" / "train.label").write_text("0.85\n0.76\n")
  with pytest.raises(
    DataError, match=r"different row counts .*input0/train\.bin: 3.*train\.label: 2"
  ):
    read_split("fairseq_bin", "stsb", "train", path=str(s))


def test_fairseq_errors(rte_bin, tmp_path):
  path = str(rte_bin)
  with pytest.raises(FileNotFoundError, match=r"nowhere not found; expected fairseq's GLUE layout"):
    read_split("fairseq_bin", "rte", "train", path=str(tmp_path / "nowhere"))
  # a row count that differs between input0 and input1
  write_input(rte_bin, "input1", {"train": [[5], [4, 4]]})
  with pytest.raises(DataError, match=r"input0/train\.bin: 3, .*input1/train\.bin: 2"):
    read_split("fairseq_bin", "rte", "train", path=path)
  # a label dictionary from another task
  write_input(rte_bin, "input1", {"train": [[5], [4, 4], [8]]})
  (rte_bin / "label" / "dict.txt").write_text("0 2\n1 1\n")
  with pytest.raises(DataError, match=r"label\(s\) \['0', '1'\] are not rte labels"):
    read_split("fairseq_bin", "rte", "train", path=path)
  write_labels(rte_bin, ["entailment 2"], {"train": ["entailment"] * 3})
  # a row without the binarizer's </s>
  write_bin(rte_bin / "input0" / "train", [[4, 2], [5], [6, 2]])
  with pytest.raises(DataError, match=r"row 1 does not end with </s> \(2\)"):
    read_split("fairseq_bin", "rte", "train", path=path)
  # an id beyond input0/dict.txt (+ <mask>)
  write_bin(rte_bin / "input0" / "train", [[4, 2], [5, 2], [6, 10, 2]])
  with pytest.raises(DataError, match="row 2 has id 10, outside input0/dict.txt"):
    read_split("fairseq_bin", "rte", "train", path=path)
  # a label row that is not `<label> </s>`
  write_input(rte_bin, "input0", {"train": [[4], [5], [6]]})
  write_bin(rte_bin / "label" / "train", [[4, 2], [4, 2], [2]])
  with pytest.raises(DataError, match=r"train\.bin: row 2 is \[2\], not one label id"):
    read_split("fairseq_bin", "rte", "train", path=path)
  # a missing pair column, named with the layout
  (rte_bin / "input1" / "dict.txt").unlink()
  with pytest.raises(FileNotFoundError, match=r"input1/dict\.txt not found; expected"):
    read_split("fairseq_bin", "rte", "train", path=path)
  with pytest.raises(DataError, match="has input1/ .* but sst2 is a single-sentence task"):
    read_split("fairseq_bin", "sst2", "train", path=path)
  # input1 binarized with another dictionary
  Dictionary.from_symbols(list(reversed(WORDS)), add_mask=False).save(
    rte_bin / "input1" / "dict.txt"
  )
  with pytest.raises(
    DataError, match="input1 was binarized with another dictionary than input0's: id 4 is 'baz'"
  ):
    read_split("fairseq_bin", "rte", "train", path=path)
  write_input(rte_bin, "input1", {"valid": [[4, 6]]})
  (rte_bin / "label" / "valid.bin").unlink()
  with pytest.raises(FileNotFoundError, match=r"label/valid\.bin not found"):
    read_split("fairseq_bin", "rte", "validation", path=path)
