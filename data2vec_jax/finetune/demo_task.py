"""An offline classification task for the demo: which part of the Python reference manual is this
sentence from?

Built from the demo's own corpus (the reference manual's prose in `pydoc_data`, shipped with
CPython; `data.offline_corpus`), so it needs no download. Three classes by the pydoc topic of the
sentence's section: `statements` (if, for, try, import, class, ...), `types` (the built-in types
and their methods) and `datamodel` (special method names, attribute access, ...); topics in none
of them are left out. Sentences of 6 to 40 words.

It is a low-resource task on purpose (a few hundred labelled sentences, like RTE or MRPC): the
point of the demo is how much a pretrained encoder adds when labels are few. The demo splits by
sentence (`split_by='sentence'`: a sixth of each class's sentences, drawn at random, are dev);
`split_by='document'` holds out whole documents instead, a harder, out-of-distribution test
whose score depends much on which documents land in dev. Either way a dev sentence that also
occurs among the training sentences (the manual repeats itself) is left out of dev. The
pretraining corpus contains the dev text, unlabelled: the comparison is in-domain pretraining vs
none.

  python -m data2vec_jax.finetune.demo_task OUT_DIR  ->  OUT_DIR/{train,validation}.tsv
  (generic TSV with the header `sentence<TAB>label`: data.source=generic)
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from data2vec_jax.atomic_files import write_text_atomically
from data2vec_jax.data.offline_corpus import named_topic_documents

TOPIC_CLASSES: dict[str, tuple[str, ...]] = {
  "statements": (
    "assert",
    "assignment",
    "async",
    "augassign",
    "await",
    "break",
    "class",
    "compound",
    "continue",
    "del",
    "else",
    "for",
    "function",
    "global",
    "if",
    "import",
    "nonlocal",
    "pass",
    "raise",
    "return",
    "try",
    "while",
    "with",
    "yield",
  ),
  "types": (
    "bltin-code-objects",
    "bltin-ellipsis-object",
    "bltin-null-object",
    "bltin-type-objects",
    "dict",
    "formatstrings",
    "string-methods",
    "types",
    "typesfunctions",
    "typesmapping",
    "typesmethods",
    "typesmodules",
    "typesseq",
    "typesseq-mutable",
  ),
  "datamodel": (
    "attribute-access",
    "context-managers",
    "customization",
    "numeric-types",
    "objects",
    "sequence-types",
    "specialattrs",
    "specialnames",
  ),
}
MIN_WORDS, MAX_WORDS = 6, 40


def topic_examples(
  *, dev_fraction: float = 1 / 6, seed: int = 0, split_by: str = "document"
) -> dict[str, list[tuple[str, str]]]:
  """{'train': [(sentence, class)], 'validation': [...]}, each shuffled (fixed by `seed`).

  split_by: 'document' (dev documents unseen in training) or 'sentence' (dev sentences drawn from
  the same documents as the training ones: an in-distribution split)."""
  if split_by not in ("document", "sentence"):
    raise ValueError(f"split_by={split_by!r}; expected 'document' or 'sentence'")
  rng = np.random.default_rng(seed)
  topic_class = {t: c for c, topics in TOPIC_CLASSES.items() for t in topics}
  by_class: dict[str, list[list[str]]] = {c: [] for c in TOPIC_CLASSES}
  for topic, sentences in named_topic_documents():
    if topic in topic_class:
      kept = [s for s in sentences if MIN_WORDS <= len(s.split()) <= MAX_WORDS]
      if kept:
        by_class[topic_class[topic]].append(kept)
  train: list[tuple[str, str]] = []
  dev: list[tuple[str, str]] = []
  for label, documents in by_class.items():
    if split_by == "sentence":
      documents = [[s] for doc in documents for s in doc]
    order = rng.permutation(len(documents))
    n_dev = max(1, int(round(dev_fraction * len(documents))))
    for rank, i in enumerate(order):
      (dev if rank < n_dev else train).extend((s, label) for s in documents[i])
  seen = {s for s, _ in train}
  dev = [(s, y) for s, y in dev if s not in seen]
  return {
    "train": [train[i] for i in rng.permutation(len(train))],
    "validation": [dev[i] for i in rng.permutation(len(dev))],
  }


def write_topic_task(
  directory: str, *, max_train: int | None = 300, seed: int = 0, split_by: str = "sentence"
) -> dict[str, int]:
  """Writes `<directory>/{train,validation}.tsv` (the first `max_train` training sentences);
  returns the number of examples per split."""
  splits = topic_examples(seed=seed, split_by=split_by)
  splits["train"] = splits["train"][:max_train]
  os.makedirs(directory, exist_ok=True)
  for split, rows in splits.items():
    # No tab inside a field: a sentence's whitespace runs become single spaces.
    lines = [f"{' '.join(s.split())}\t{y}\n" for s, y in rows]
    write_text_atomically(
      os.path.join(directory, f"{split}.tsv"), "sentence\tlabel\n" + "".join(lines)
    )
  return {split: len(rows) for split, rows in splits.items()}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("output_dir")
  parser.add_argument("--max_train", type=int, default=300)
  args = parser.parse_args(argv)
  print(f"wrote {args.output_dir}: {write_topic_task(args.output_dir, max_train=args.max_train)}")


if __name__ == "__main__":
  main()
