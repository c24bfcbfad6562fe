"""The stdlib docstring corpus: parsed (not imported) with test packages skipped, deterministic,
split by a hash of the document id into parts that share no document and no reserved sentence."""

from __future__ import annotations

import os

from data2vec_jax.data.sources import read_text_documents
from data2vec_jax.data.stdlib_corpus import (
  CorpusDocument,
  corpus_documents,
  corpus_part,
  prose_sentences,
  source_documents,
  split_documents,
  write_stdlib_corpus,
)

PROSE = "This function returns the number of widgets that fit into the given box."


def make_stdlib(root) -> str:
  """A tiny stdlib: 30 documented modules, a test package, a test_*.py and idlelib (skipped)."""
  for i in range(30):
    (root / f"mod{i}.py").write_text(
      f'"""Module {i} helps with widget number {i} in many ways."""\n'
      f"import sys\nsys.exit('never imported')\n"
      f"class Box{i}:\n  '''A box of widgets that holds {i} things at most.'''\n"
      f"  def fit(self):\n    '''{PROSE[:-1]} {i}.\n\n    >>> Box{i}().fit()\n    3\n    '''\n"
    )
  for skipped in ("test", "idlelib"):
    (root / skipped).mkdir()
    (root / skipped / "__init__.py").write_text('"""Tests of everything in the library here."""')
  (root / "test_mod.py").write_text('"""Tests of the widgets in the first module here."""')
  return str(root)


def test_documents_are_docstrings_with_prose_and_skip_tests(tmp_path):
  root = make_stdlib(tmp_path)
  docs = corpus_documents(root, manual=False)
  assert docs == corpus_documents(root, manual=False)  # deterministic
  assert len(docs) == 90 and len({d.doc_id for d in docs}) == 90
  by_id = {d.doc_id: d for d in docs}
  assert by_id["mod3:"].sentences == ("Module 3 helps with widget number 3 in many ways.",)
  assert by_id["mod3:Box3.fit"].sentences == (f"{PROSE[:-1]} 3.",)  # the doctest is dropped
  assert all(not d.module.startswith(("test", "idlelib")) for d in docs)


def test_prose_filter_drops_headings_code_and_literal_blocks():
  doc = (
    f"{PROSE}\n\nParameters\n----------\nx = compute(1, 2)\n\nHere is an example of its use::"
    "\n\n  print(f(x), 'and one more thing.')\n\nThe result is printed on the screen."
  )
  expected = [PROSE, "Here is an example of its use:", "The result is printed on the screen."]
  assert prose_sentences(doc) == expected


def test_prose_filter_drops_sentences_with_a_literal_mask_token():
  # "<mask>" encodes to the mask id, which masking refuses in its input (data/prepare.py).
  doc = f"{PROSE} The model predicts the <mask> token from its context. It is trained so."
  assert prose_sentences(doc) == [PROSE, "It is trained so."]
  assert prose_sentences("A mask such as <mask2> is only text here.") == [
    "A mask such as <mask2> is only text here."
  ]


def test_split_is_by_document_id_and_keeps_reserved_sentences_out_of_pretraining():
  docs = [
    CorpusDocument(f"m{i}:f", f"m{i}", (f"Sentence {i} of the doc.", PROSE)) for i in range(200)
  ]
  parts = split_documents(docs)
  ids = {p: {d.doc_id for d in parts[p]} for p in parts}
  assert sum(len(v) for v in ids.values()) == 200
  assert not (
    ids["train"] & ids["reserved"] or ids["valid"] & ids["reserved"] or ids["train"] & ids["valid"]
  )
  assert all(corpus_part(i) == p for p, v in ids.items() for i in v)  # a function of the id alone
  assert 40 < len(ids["reserved"]) < 100 and ids["valid"]
  # PROSE occurs in reserved documents, so no pretraining document keeps it.
  assert all(PROSE not in d.sentences for p in ("train", "valid") for d in parts[p])
  # A package's document is never reserved.
  packaged = [CorpusDocument(d.doc_id, d.module, d.sentences, "numpy") for d in docs]
  assert not split_documents(packaged)["reserved"]


def test_written_corpus_is_deterministic_fairseq_raw_text(tmp_path):
  (tmp_path / "lib").mkdir()
  root = make_stdlib(tmp_path / "lib")
  stats = write_stdlib_corpus(str(tmp_path / "a"), stdlib_dir=root)
  write_stdlib_corpus(str(tmp_path / "b"), stdlib_dir=root)
  for name in ("train.txt", "valid.txt"):
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  train = list(read_text_documents(str(tmp_path / "a" / "train.txt")))
  assert len(train) == stats["parts"]["train"]["documents"] > 100  # the manual's sections too
  assert sum(map(len, train)) == stats["parts"]["train"]["sentences"]
  assert set(stats["parts"]) == {"train", "valid", "reserved"}


def test_real_stdlib_package_parses_without_importing():
  import json

  docs = list(source_documents(os.path.dirname(json.__file__), prefix="json"))
  assert any(d.doc_id == "json.decoder:JSONDecoder.decode" for d in docs)
  assert all(d.origin == "json" for d in docs)
