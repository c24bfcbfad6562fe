"""Fine-tuning data sources (data2vec_jax/finetune/sources.py) on tiny data in each real format:
a TFDS builder with glue's features, fairseq's <TASK>-bin layout, and a user's TSV / JSONL."""

from __future__ import annotations

import functools
import json
import sys

import numpy as np
import pytest

from data2vec_jax.data.dictionary import Dictionary
from data2vec_jax.data.sources import DataError, MMapIndexedDatasetBuilder
from data2vec_jax.finetune import sources
from data2vec_jax.finetune.sources import (
  check_same_dictionary,
  fairseq_glue_dictionary,
  num_labels,
  read_split,
  task_splits,
)

# ----------------------------------------------------------------------------------------------
# TFDS: a tiny builder with TFDS glue's features, split names and label names
# ----------------------------------------------------------------------------------------------

RTE = {
  "train": [
    ("A man sleeps.", "Nobody sleeps.", "not_entailment"),
    ("Dogs bark.", "Animals make noise.", "entailment"),
    ("naïve café — 東京 😀", "Tabs\tinside", "not_entailment"),
    ("Four.", "Fourth.", "entailment"),
  ],
  "validation": [("It rains.", "It is wet.", "entailment"), ("Sun.", "Moon.", "not_entailment")],
}
STSB = {
  "train": [("A man.", "A guy.", 4.25), ("A cat.", "A car.", 0.0), ("Hi.", "Hello.", 3.8)],
  "validation": [("One.", "Two.", 1.5)],
}
MNLI = {
  "train": [("p0", "h0", "neutral")],
  "validation_matched": [("pm0", "hm0", "contradiction"), ("pm1", "hm1", "entailment")],
  "validation_mismatched": [("pmm0", "hmm0", "neutral")],
}
# wnli is given rte's label order (TFDS wnli's is reversed): the reader must refuse it.
WNLI = {"train": [("a", "b", "entailment")], "validation": [("c", "d", "entailment")]}
# cola with a test-style -1 label in validation.
COLA = {"train": [("Fine.", "acceptable")], "validation": [("Bad bad.", -1)]}

_CONFIGS = {
  "rte": (("sentence1", "sentence2"), ["entailment", "not_entailment"], RTE),
  "stsb": (("sentence1", "sentence2"), None, STSB),
  "mnli": (("premise", "hypothesis"), ["entailment", "neutral", "contradiction"], MNLI),
  "wnli": (("sentence1", "sentence2"), ["entailment", "not_entailment"], WNLI),
  "cola": (("sentence",), ["unacceptable", "acceptable"], COLA),
}


@functools.lru_cache(maxsize=None)  # a builder class registers its name once per process
def _glue_like_builder_cls():
  import tensorflow_datasets as tfds

  class GlueForD2vTest(tfds.core.GeneratorBasedBuilder):
    """TFDS glue's features (text features, ClassLabel / float32 label, idx) for a few configs."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in _CONFIGS]

    def _info(self):
      text, label_names, _ = _CONFIGS[self.builder_config.name]
      features = {name: tfds.features.Text() for name in text}
      features["label"] = tfds.features.ClassLabel(names=label_names) if label_names else np.float32
      features["idx"] = np.int32
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      return {
        split: self._generate_examples(split) for split in _CONFIGS[self.builder_config.name][2]
      }

    def _generate_examples(self, split):
      text, _, data = _CONFIGS[self.builder_config.name]
      for i, row in enumerate(data[split]):
        yield i, {**dict(zip(text, row[:-1])), "label": row[-1], "idx": i}

  return GlueForD2vTest


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  cls = _glue_like_builder_cls()
  for config in _CONFIGS:
    cls(config=config, data_dir=str(d), file_format="array_record").download_and_prepare()
  return str(d)


def _tfds(task, split, data_dir):
  return read_split("tfds", task, split, data_dir=data_dir, builder="glue_for_d2v_test")


def test_tfds_pair_task_texts_and_ids(tfds_dir):
  for split, rows in RTE.items():
    got = _tfds("rte", split, tfds_dir)
    # source-file (idx) order, str texts, TFDS label ids
    assert got.texts == (tuple(r[0] for r in rows), tuple(r[1] for r in rows))
    assert got.labels.dtype == np.int64
    assert got.labels.tolist() == [("entailment", "not_entailment").index(r[2]) for r in rows]
    assert got.label_names == ("entailment", "not_entailment") and got.skipped == 0
    assert got.token_ids is None and got.split == split and got.task == "rte"
  assert "tensorflow" not in sys.modules


def test_tfds_regression_and_mnli_splits(tfds_dir):
  got = _tfds("stsb", "train", tfds_dir)
  assert got.labels.dtype == np.float32 and got.label_names is None
  np.testing.assert_array_equal(got.labels, np.float32([4.25, 0.0, 3.8]))
  assert got.texts[1] == ("A guy.", "A car.", "Hello.")
  for split in ("validation_matched", "validation_mismatched"):
    got = _tfds("mnli", split, tfds_dir)
    assert got.texts == tuple(tuple(r[c] for r in MNLI[split]) for c in (0, 1))
    assert got.labels.tolist() == [
      ("entailment", "neutral", "contradiction").index(r[2]) for r in MNLI[split]
    ]
  assert task_splits("tfds", "mnli") == {
    "train": "train",
    "evaluation": ("validation_matched", "validation_mismatched"),
  }


def test_tfds_matches_glue_tsv(tfds_dir, tmp_path):
  """The same rows as GLUE TSV and as TFDS give the same LabeledSplit."""
  rows = [["index", "sentence1", "sentence2", "label"]]
  rows += [[str(i), *r] for i, r in enumerate(RTE["validation"])]
  (tmp_path / "dev.tsv").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
  tsv = read_split("glue_tsv", "rte", "validation", path=str(tmp_path))
  got = _tfds("rte", "validation", tfds_dir)
  assert tsv.texts == got.texts and tsv.labels.tolist() == got.labels.tolist()
  assert tsv.label_names == got.label_names


def test_tfds_errors(tfds_dir, tmp_path):
  with pytest.raises(DataError, match=r"label names \['entailment', 'not_entailment'\] differ"):
    _tfds("wnli", "train", tfds_dir)
  with pytest.raises(DataError, match=r"split 'validation': example 0 \(idx 0\) has label -1"):
    _tfds("cola", "validation", tfds_dir)
  assert _tfds("cola", "train", tfds_dir).texts == (("Fine.",),)
  # Not prepared: one error with the command, and nothing is written or downloaded.
  empty = tmp_path / "empty"
  empty.mkdir()
  for builder in ("glue", "glue_for_d2v_test"):
    with pytest.raises(
      DataError, match=r"not prepared.*tfds build .*rte --file_format array_record"
    ):
      read_split("tfds", "rte", "train", data_dir=str(empty), builder=builder)
  with pytest.raises(DataError, match="nothing is downloaded at run time"):
    read_split("tfds", "rte", "train", data_dir=str(empty))
  assert list(empty.iterdir()) == []
  with pytest.raises(DataError, match="'no_such_glue/rte' is not available"):
    read_split("tfds", "rte", "train", data_dir=str(empty), builder="no_such_glue")
  with pytest.raises(DataError, match="has no split 'validation_matched'"):
    _tfds("rte", "validation_matched", tfds_dir)


# ----------------------------------------------------------------------------------------------
# fairseq <TASK>-bin
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Generic TSV / JSONL
# ----------------------------------------------------------------------------------------------

GENERIC = dict(text_columns=["premise", "hypothesis"], label_column="label")


def write_tsv(path, rows) -> str:
  path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
  return str(path)


def write_jsonl(path, lines) -> str:
  path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
  return str(path)


def test_generic_tsv(tmp_path):
  header = ["id", "premise", "label", "hypothesis"]
  train = write_tsv(
    tmp_path / "train.tsv",
    [header, ["1", "a b", "yes", "c"], ["2", "d", "no", "e f"], [], ["3", "g", "maybe", "h"]],
  )
  got = read_split("generic", "mine", "train", path=train, **GENERIC)
  assert got.texts == (("a b", "d", "g"), ("c", "e f", "h"))
  assert got.label_names == ("maybe", "no", "yes") and got.labels.tolist() == [2, 1, 0]
  assert got.task == "mine" and got.skipped == 0
  assert num_labels("generic", "mine", label_names=got.label_names) == 3
  dev = write_tsv(tmp_path / "dev.tsv", [header, ["1", "x", "no", "y"], ["2", "z", "perhaps", "w"]])
  with pytest.raises(DataError, match=r"dev\.tsv:3: label 'perhaps' is not one of the 3 labels"):
    read_split("generic", "mine", "validation", path=dev, label_names=got.label_names, **GENERIC)
  with pytest.raises(DataError, match=r"pass label_names=<train split>\.label_names"):
    read_split("generic", "mine", "validation", path=dev, **GENERIC)
  dev = write_tsv(tmp_path / "dev.tsv", [header, ["1", "x", "no", "y"], ["2", "z", "yes", "w"]])
  got = read_split(
    "generic", "mine", "validation", path=dev, label_names=got.label_names, **GENERIC
  )
  assert got.labels.tolist() == [1, 2] and got.label_names == ("maybe", "no", "yes")

  bad = write_tsv(
    tmp_path / "bad.tsv",
    [header, ["1", "a", "yes", "b"], ["2", "only three", "no"], ["3", " ", "no", "x"]],
  )
  with pytest.raises(
    DataError,
    match=r"bad\.tsv:3: 3 tab-separated fields, the header has 4; fix or remove the line, or "
    r"set skip_malformed=True",
  ):
    read_split("generic", "mine", "train", path=bad, **GENERIC)
  got = read_split("generic", "mine", "train", path=bad, skip_malformed=True, **GENERIC)
  assert got.skipped == 2 and got.texts == (("a",), ("b",)) and got.label_names == ("yes",)
  with pytest.raises(DataError, match=r"column 'sentence' is not in the header"):
    read_split(
      "generic", "mine", "train", path=bad, text_columns=["sentence"], label_column="label"
    )


def test_generic_jsonl(tmp_path):
  rows = [
    {"a": "one", "b": "uno", "y": 10},
    {"a": "two", "b": "dos", "y": 2},
    {"a": "three", "b": "tres", "y": "0"},
  ]
  options = dict(text_columns=["a", "b"], label_column="y")
  got = read_split("generic", "t", "train", path=write_jsonl(tmp_path / "t.jsonl", rows), **options)
  assert got.label_names == ("0", "2", "10") and got.labels.tolist() == [2, 1, 0]  # numeric order
  assert got.texts == (("one", "two", "three"), ("uno", "dos", "tres"))
  bad = write_jsonl(
    tmp_path / "bad.jsonl", [rows[0], '{"a": "x", "b": ', {"a": "x", "y": 2}, rows[1]]
  )
  with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
    read_split("generic", "t", "train", path=bad, **options)
  got = read_split("generic", "t", "train", path=bad, skip_malformed=True, **options)
  assert got.skipped == 2 and got.texts == (("one", "two"), ("uno", "dos"))
  bad = write_jsonl(tmp_path / "bad2.jsonl", [rows[0], {"a": "x", "y": 2}])
  with pytest.raises(DataError, match=r"bad2\.jsonl:2: key\(s\) \['b'\] missing"):
    read_split("generic", "t", "train", path=bad, **options)
  bad = write_jsonl(tmp_path / "bad3.jsonl", [{"a": "x", "b": "y", "y": 1.0}])
  with pytest.raises(
    DataError, match=r"bad3\.jsonl:1: the label 1\.0 is not a string or an integer"
  ):
    read_split("generic", "t", "train", path=bad, **options)

  scores = [{"a": "x", "b": "y", "y": 0.5}, {"a": "z", "b": "w", "y": "4"}]
  path = write_jsonl(tmp_path / "r.jsonl", scores)
  got = read_split("generic", "r", "validation", path=path, regression=True, **options)
  assert got.labels.dtype == np.float32 and got.labels.tolist() == [0.5, 4.0]
  assert got.label_names is None and num_labels("generic", "r", regression=True) == 1
  path = write_jsonl(tmp_path / "r2.jsonl", scores + [{"a": "x", "b": "y", "y": "high"}])
  with pytest.raises(DataError, match=r"r2\.jsonl:3: the label 'high' is not a number"):
    read_split("generic", "r", "train", path=path, regression=True, **options)


# ----------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------


def test_dispatcher_errors_and_task_facts(tmp_path):
  with pytest.raises(DataError, match=r"unknown fine-tuning data source 'hf'; known: \['glue_tsv'"):
    read_split("hf", "rte", "train")
  with pytest.raises(DataError, match=r"source 'fairseq_bin' needs the option\(s\) \['path'\]"):
    read_split("fairseq_bin", "rte", "train")
  with pytest.raises(DataError, match=r"source 'tfds' has no option\(s\) \['path'\]"):
    read_split("tfds", "rte", "train", path="x")
  with pytest.raises(
    DataError, match=r"has no split 'validation'; known: \['train', 'validation_matched'"
  ):
    read_split("fairseq_bin", "mnli", "validation", path="x")
  with pytest.raises(DataError, match=r"unknown GLUE task 'squad'"):
    read_split("glue_tsv", "squad", "train", path="x")
  with pytest.raises(DataError, match=r"generic task 'mine' has no split 'test'"):
    read_split("generic", "mine", "test", path="x", **GENERIC)
  with pytest.raises(DataError, match="num_labels needs label_names"):
    num_labels("generic", "mine")
  assert task_splits("glue_tsv", "rte") == {"train": "train", "evaluation": ("validation",)}
  assert task_splits("generic", "anything")["evaluation"] == ("validation",)
  assert [num_labels("tfds", t) for t in ("mnli", "stsb", "cola")] == [3, 1, 2]
  assert sources.SOURCES == ("glue_tsv", "tfds", "fairseq_bin", "generic")
