"""An English corpus that needs no download: the Python reference-manual topics shipped with
CPython (`pydoc_data.topics.topics`, ~465 KB of text), as fairseq raw text.

Each section of each topic (split at reST-style underlined headings) is a document; its prose
paragraphs (code examples, grammar productions and tables are skipped) are split into one sentence
per line; documents are separated by a blank line. Deterministic: same Python -> same corpus.

    python -m data2vec_jax.data.offline_corpus /tmp/corpus.txt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from data2vec_jax.data.sources import split_sentences

_UNDERLINE = re.compile(r"^\s*([*=\-~^\"'`#+])\1{3,}\s*$")


def _is_prose(paragraph: str) -> bool:
  text = " ".join(paragraph.split())
  if len(text.split()) < 4 or text.startswith((">>>", "...", "|", "+-")) or "::=" in text:
    return False
  if text[-1] not in ".?!:)\"":
    return False
  letters = sum(c.isalpha() or c.isspace() for c in text)
  return letters / len(text) >= 0.8


def prose_sentences_of(lines: list[str], *, skip_doctests: bool = False) -> list[str]:
  """The sentences (>= 3 words) of the prose paragraphs of `lines` (paragraphs end at blank
  lines): literal blocks after '::' and paragraphs that are code, grammar productions or tables
  are dropped, and with `skip_doctests` any paragraph holding '>>>'."""
  sentences: list[str] = []
  para: list[str] = []
  after_literal = False  # a paragraph ending in "::" introduces a code block
  for line in lines + [""]:
    if line.strip():
      para.append(line)
      continue
    if not para:
      continue
    text = "\n".join(para)
    indent = min(len(ln) - len(ln.lstrip()) for ln in para)
    para = []
    if after_literal and indent > 0:
      continue  # still inside the literal block
    after_literal = text.rstrip().endswith("::")
    if (skip_doctests and ">>>" in text) or not _is_prose(text):
      continue
    prose = " ".join(text.split())
    if prose.endswith("::"):
      prose = prose[:-1]
    sentences.extend(s for s in split_sentences(prose) if len(s.split()) >= 3)
  return sentences


def topic_documents(max_docs: int | None = None) -> list[list[str]]:
  """Documents (lists of sentences) of the Python reference-manual topics, in sorted topic order."""
  return [sentences for _, sentences in named_topic_documents(max_docs)]


def named_topic_documents(max_docs: int | None = None) -> list[tuple[str, list[str]]]:
  """`topic_documents`, each with the name of the pydoc topic it comes from (e.g. 'typesseq')."""
  from pydoc_data.topics import topics

  docs: list[tuple[str, list[str]]] = []
  for name in sorted(topics):
    lines = topics[name].splitlines()
    # Split into sections at headings: a text line followed by an underline of one character.
    sections: list[list[str]] = [[]]
    for i, line in enumerate(lines):
      if _UNDERLINE.match(line):
        continue
      if i + 1 < len(lines) and _UNDERLINE.match(lines[i + 1]) and line.strip():
        sections.append([])  # the heading itself is not prose
        continue
      sections[-1].append(line)
    for sec in sections:
      sentences = prose_sentences_of(sec)
      if sentences:
        docs.append((name, sentences))
        if max_docs is not None and len(docs) >= max_docs:
          return docs
  return docs


def write_offline_corpus(path: str | os.PathLike, max_docs: int | None = None) -> dict:
  """Write the corpus to `path` in fairseq raw layout; return stats
  {'documents', 'sentences', 'words', 'bytes', 'path'}."""
  docs = topic_documents(max_docs)
  if not docs:
    raise RuntimeError("pydoc_data.topics yielded no prose; is this a stripped Python build?")
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n\n".join("\n".join(d) for d in docs))
    f.write("\n")
  return {
    "documents": len(docs),
    "sentences": sum(len(d) for d in docs),
    "words": sum(len(s.split()) for d in docs for s in d),
    "bytes": os.path.getsize(path),
    "path": path,
  }


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("output", help="text file to write")
  p.add_argument("--max_docs", type=int, default=None)
  args = p.parse_args(argv)
  json.dump(write_offline_corpus(args.output, args.max_docs), sys.stdout)
  print()


if __name__ == "__main__":
  main()
