"""A larger offline English corpus: the docstrings of CPython's standard library, plus the
reference-manual prose of the demo corpus (`data.offline_corpus`), split by document into
pretraining-train, pretraining-held-out and a reserved part that only the held-out evaluation
tasks (`finetune.heldout_tasks`) read.

The stdlib's `.py` files are parsed with `ast`, never imported (importing runs code). One document
per docstring of a module, class or function (id `module:qualname`, e.g. `json.decoder:
JSONDecoder.decode`) and one per manual section (id `manual:<topic>#<k>`). Skipped: test
packages and `test_*.py`, idlelib, turtledemo, encodings (hundreds of near-identical codec
stubs), pydoc_data (the manual, read through `offline_corpus`), site-packages. The prose filter
and sentence splitter are the demo's. Of documents with identical text one is kept (a stdlib or
manual one first, then the smallest id). Each document's part is a hash of its id alone (sha256, no random order), so adding or
removing other documents never moves a document between parts; every sentence of a reserved
document is also removed from the pretraining text, so the tasks' sentences are never pretrained
on, not even as a duplicate elsewhere.

`packages=('numpy', ...)` adds the docstrings of installed packages, parsed the same way (opt-in:
they are not the stdlib, and their text depends on the installed versions, which `stats.json`
records). The tasks never use them.

    python -m data2vec_jax.data.stdlib_corpus OUT_DIR [--packages runtime|dev|numpy,jax,...]
    -> OUT_DIR/train.txt, OUT_DIR/valid.txt (fairseq raw text: one sentence per line, a blank
       line between documents; data.source=text, data.path=OUT_DIR/train.txt,
       validation.path=OUT_DIR/valid.txt), OUT_DIR/stats.json

Measured (CPython 3.11.7, the pinned requirements-dev.txt; 2 cores shared with other jobs, load
12-19, so wall times are upper bounds; sentencepiece tokens with an 8k unigram model trained on
the `runtime` train.txt, 66 s under `nice -n 10`). Train part, then valid (pretraining held-out):

  --packages    documents        sentences        words (whitespace)   sentencepiece     build
  (none)        4,136 / 210      10,788 / 513     150,154 / 6,984      215,911 / 10,248   33 s
  runtime       15,931 / 574     55,007 / 2,076   820,942 / 31,633   1,244,902 / 48,083   87 s
  dev           42,030 / 1,374  168,169 / 5,734  2,741,118 / 93,092  4,769,683 / 158,636 131 s

The reserved part is the same in every row: 2,283 documents, 6,388 sentences, 91,179 words. The
demo corpus (`offline_corpus`) is 52,840 words: the stdlib alone is 2.8x it, `runtime` 16x,
`dev` 52x (the 30-100x the held-out experiment of issue 29 asks for needs `dev`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import sysconfig
import time
from typing import Iterator, Sequence

from data2vec_jax.atomic_files import write_json_atomically, write_text_atomically
from data2vec_jax.data.offline_corpus import _UNDERLINE, named_topic_documents, prose_sentences_of

# Fractions of documents per part, by the hash of the document id.
# The runtime dependencies (pyproject.toml [project]): installed wherever this project is, at the
# versions requirements.txt pins. `--packages runtime` adds their docstrings; `--packages dev`
# also those of the dev environment's (requirements-dev.txt, what `make` installs) larger ones.
RUNTIME_PACKAGES = ("numpy", "jax", "flax", "optax", "orbax", "matplotlib")
DEV_PACKAGES = RUNTIME_PACKAGES + ("scipy", "sklearn", "torch", "transformers")
PACKAGE_SETS = {"runtime": RUNTIME_PACKAGES, "dev": DEV_PACKAGES}
RESERVED_FRACTION = 0.35  # the evaluation tasks' documents
VALID_FRACTION = 0.03  # pretraining held-out
PARTS = ("train", "valid", "reserved")
SKIP_DIRS = frozenset(
  {"test", "tests", "idle_test", "idlelib", "turtledemo", "encodings", "pydoc_data"}
  | {"site-packages", "dist-packages", "__pycache__", "lib-dynload", "ensurepip"}
)
_DOCUMENTED = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclasses.dataclass(frozen=True)
class CorpusDocument:
  """One docstring or manual section.

  doc_id: stable id ('json.decoder:JSONDecoder.decode', 'manual:typesseq#2').
  module: the dotted module ('json.decoder'), or 'manual:<topic>' for the reference manual.
  sentences: its prose sentences, in order.
  origin: 'stdlib', 'manual' or the package's name; only stdlib and manual documents are ever
    reserved for the tasks (a package's documents are all pretraining text).
  """

  doc_id: str
  module: str
  sentences: tuple[str, ...]
  origin: str = "stdlib"


def corpus_part(doc_id: str) -> str:
  """'train', 'valid' or 'reserved': a fixed function of the id (sha256), not of any order."""
  digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
  u = int.from_bytes(digest[:8], "big") / 2**64
  if u < RESERVED_FRACTION:
    return "reserved"
  return "valid" if u < RESERVED_FRACTION + VALID_FRACTION else "train"


# The literal text encodes to the mask id (data/tokenizer.py), which masking refuses in its input:
# a sentence quoting it (transformers' docs on masked language models) is dropped.
MASK_LITERAL = "<mask>"


def prose_sentences(text: str) -> list[str]:
  """The sentences (>= 3 words) of a docstring's prose paragraphs, filtered as the demo's manual
  sections are: headings (a line underlined with ---, ===), literal blocks after '::' and
  paragraphs that are code, tables or doctests are dropped; so are sentences with `<mask>`."""
  lines = [ln for ln in text.splitlines() if not _UNDERLINE.match(ln)]
  return [s for s in prose_sentences_of(lines, skip_doctests=True) if MASK_LITERAL not in s]


def _docstrings(tree: ast.Module) -> Iterator[tuple[str, str]]:
  """(qualname, docstring) of the module ('' ) and of every class and function, in source order."""
  doc = ast.get_docstring(tree)
  if doc:
    yield "", doc
  stack: list[tuple[str, ast.AST]] = [("", tree)]
  while stack:
    prefix, node = stack.pop()
    children = list(ast.iter_child_nodes(node))
    for child in reversed(children):  # reversed onto a stack: visited in source order
      name = prefix
      if isinstance(child, _DOCUMENTED):
        name = f"{prefix}.{child.name}" if prefix else child.name
      stack.append((name, child))
    if isinstance(node, _DOCUMENTED):
      doc = ast.get_docstring(node)
      if doc:
        yield prefix, doc


def _python_files(root: str) -> Iterator[str]:
  """The `.py` files under `root` in sorted order, test and skipped directories left out."""
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS and not d.startswith("config-"))
    for name in sorted(files):
      if name.endswith(".py") and not name.startswith("test_"):
        yield os.path.join(directory, name)


def _module_name(path: str, root: str, prefix: str) -> str:
  parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(([prefix] if prefix else []) + parts)


def source_documents(root: str, prefix: str = "") -> Iterator[CorpusDocument]:
  """One document per docstring with prose, for every module under `root` (parsed, not imported).

  prefix: the package name when `root` is a package's directory ('numpy'), '' for the stdlib."""
  for path in _python_files(root):
    module = _module_name(path, root, prefix)
    with open(path, "rb") as f:
      source = f.read()
    try:
      tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError):  # e.g. a lib2to3 grammar fixture in Python 2 syntax
      continue
    seen: dict[str, int] = {}
    for qualname, doc in _docstrings(tree):
      sentences = prose_sentences(doc)
      if not sentences:
        continue
      seen[qualname] = seen.get(qualname, 0) + 1  # a name defined twice (if/else branches)
      suffix = f"~{seen[qualname]}" if seen[qualname] > 1 else ""
      doc_id = f"{module}:{qualname}{suffix}"
      yield CorpusDocument(doc_id, module, tuple(sentences), prefix or "stdlib")


def manual_documents() -> Iterator[CorpusDocument]:
  """The demo corpus's reference-manual sections, id 'manual:<topic>#<k>'."""
  counts: dict[str, int] = {}
  for topic, sentences in named_topic_documents():
    counts[topic] = counts.get(topic, 0) + 1
    doc_id = f"manual:{topic}#{counts[topic]}"
    yield CorpusDocument(doc_id, f"manual:{topic}", tuple(sentences), "manual")


def package_root(name: str) -> str:
  """The directory of an installed top-level package, found without importing it."""
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(f"{name!r} is not an installed package (a directory with __init__.py)")
  return list(spec.submodule_search_locations)[0]


def corpus_documents(
  stdlib_dir: str | None = None, *, manual: bool = True, packages: Sequence[str] = ()
) -> list[CorpusDocument]:
  """Every document, sorted by id; of identical texts one is kept: a stdlib or manual one first
  (so that packages never change the reserved part), then the smallest id.

  stdlib_dir: default this Python's stdlib (`sysconfig`); tests pass a small tree."""
  stdlib_dir = stdlib_dir or sysconfig.get_paths()["stdlib"]
  docs = list(source_documents(stdlib_dir))
  if manual:
    docs += manual_documents()
  for name in packages:
    docs += source_documents(package_root(name), prefix=name)
  unique: dict[tuple[str, ...], CorpusDocument] = {}
  for doc in sorted(docs, key=lambda d: (d.origin not in ("stdlib", "manual"), d.doc_id)):
    unique.setdefault(doc.sentences, doc)
  return sorted(unique.values(), key=lambda d: d.doc_id)


def split_documents(docs: Sequence[CorpusDocument]) -> dict[str, list[CorpusDocument]]:
  """{'train', 'valid', 'reserved': documents} by `corpus_part` (a package's document that
  would be reserved is train). Sentences of reserved documents are removed from train and valid
  documents (a document left empty is dropped)."""
  parts: dict[str, list[CorpusDocument]] = {p: [] for p in PARTS}
  for doc in docs:
    part = corpus_part(doc.doc_id)
    if part == "reserved" and doc.origin not in ("stdlib", "manual"):
      part = "train"
    parts[part].append(doc)
  reserved = {s for doc in parts["reserved"] for s in doc.sentences}
  for part in ("train", "valid"):
    kept = (
      dataclasses.replace(d, sentences=tuple(s for s in d.sentences if s not in reserved))
      for d in parts[part]
    )
    parts[part] = [d for d in kept if d.sentences]
  return parts


def reserved_documents(stdlib_dir: str | None = None) -> list[CorpusDocument]:
  """The reserved part of the stdlib + manual corpus: the evaluation tasks' only text."""
  return split_documents(corpus_documents(stdlib_dir))["reserved"]


def _write_raw_text(path: str, docs: Sequence[CorpusDocument]) -> None:
  write_text_atomically(path, "\n\n".join("\n".join(d.sentences) for d in docs) + "\n")


def _part_stats(docs: Sequence[CorpusDocument]) -> dict[str, int]:
  return {
    "documents": len(docs),
    "sentences": sum(len(d.sentences) for d in docs),
    "words": sum(len(s.split()) for d in docs for s in d.sentences),
  }


def write_stdlib_corpus(
  out_dir: str, *, stdlib_dir: str | None = None, packages: Sequence[str] = ()
) -> dict:
  """Writes OUT_DIR/{train,valid}.txt and stats.json; returns the stats (per part: documents,
  sentences, whitespace words; the Python version, package versions, seconds to build)."""
  start = time.perf_counter()
  parts = split_documents(corpus_documents(stdlib_dir, packages=packages))
  if not parts["train"]:
    raise RuntimeError(f"no docstring prose found under {stdlib_dir or 'the stdlib'}")
  os.makedirs(out_dir, exist_ok=True)
  for part in ("train", "valid"):
    _write_raw_text(os.path.join(out_dir, f"{part}.txt"), parts[part])
  stats = {
    "python": sys.version.split()[0],
    "packages": {name: _version(name) for name in packages},
    "parts": {part: _part_stats(docs) for part, docs in parts.items()},
    "seconds": round(time.perf_counter() - start, 1),
  }
  write_json_atomically(os.path.join(out_dir, "stats.json"), stats)
  return stats


def _version(package: str) -> str:
  for dist in importlib.metadata.packages_distributions().get(package, [package]):
    try:
      return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      continue
  return "unknown"


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("output_dir", help="folder for train.txt, valid.txt, stats.json")
  p.add_argument(
    "--packages",
    default="",
    help="comma list of installed packages to add; 'runtime' and 'dev' name the sets "
    + "; ".join(f"{name}={','.join(names)}" for name, names in PACKAGE_SETS.items()),
  )
  args = p.parse_args(argv)
  names = [n for n in args.packages.split(",") if n]
  packages = [p for n in names for p in PACKAGE_SETS.get(n, (n,))]
  json.dump(write_stdlib_corpus(args.output_dir, packages=packages), sys.stdout, indent=1)
  print()


if __name__ == "__main__":
  main()
