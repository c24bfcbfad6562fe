"""Held-out evaluation tasks built only from the reserved documents of `data.stdlib_corpus`: text
that the corpus never writes into pretraining text, not even as a sentence repeated elsewhere.

* `stdlib_area` (topic-like, one sentence): which area of the standard library a docstring
  sentence comes from, by its module's top-level package (`AREAS`, an explicit map; other
  modules are left out). Six classes, balanced in dev and in every label budget.
* `same_docstring` (sentence pair): do two sentences come from the same docstring? A negative's
  second sentence comes from another docstring of the same top-level module when there is one
  (so the topic alone does not give the answer). Labels `same` / `different`, balanced.

Sentences have 6 to 40 words. Reserved documents are split into task-train and dev by a hash of
their id (`DEV_FRACTION`), so train and dev share no document; dev is fixed and balanced
(`DEV_PER_LABEL` examples per label, fewer if a label has fewer; the first in a fixed order) and
the train pool is everything else. A label budget (50 / 200 / 1000) is a prefix of the pool's
order for a seed: labels taken in turn, each in a seeded random order, so the budgets of one seed
are nested and balanced.

  python -m data2vec_jax.finetune.heldout_tasks OUT_DIR [--seed S]
  -> OUT_DIR/<task>/dev.tsv and OUT_DIR/<task>/<budget>/{train,validation}.tsv (seed 0;
     <budget>-seed<S> for another seed); validation.tsv is a copy of dev.tsv, so that
     `data.source=generic data.path=OUT_DIR/<task>/<budget>` reads the budget as it is
     (stdlib_area: data.text_columns=sentence; same_docstring: sentence1,sentence2).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import os
import shutil
from typing import Sequence

import numpy as np

from data2vec_jax.atomic_files import write_text_atomically
from data2vec_jax.data.stdlib_corpus import CorpusDocument, reserved_documents

BUDGETS = (50, 200, 1000)
DEV_FRACTION = 0.35
DEV_PER_LABEL = {"stdlib_area": 70, "same_docstring": 300}
MIN_WORDS, MAX_WORDS = 6, 40
POOL_SEED = 1234  # the fixed order dev and the pair task's pairs are drawn in

AREAS: dict[str, tuple[str, ...]] = {  # area -> top-level stdlib modules
  "files": tuple(
    "os posixpath ntpath genericpath pathlib shutil glob fnmatch tempfile stat filecmp "
    "fileinput io _pyio zipfile tarfile gzip bz2 lzma".split()
  ),
  "network": tuple(
    "socket ssl http urllib email smtplib imaplib poplib ftplib mailbox socketserver xmlrpc "
    "wsgiref ipaddress selectors nntplib telnetlib mimetypes webbrowser".split()
  ),
  # Text processing and data formats are one class: each alone has too few reserved sentences.
  "text_formats": tuple(
    "string re sre_compile sre_parse sre_constants textwrap difflib codecs locale gettext "
    "stringprep shlex unicodedata json csv xml html plistlib configparser pickle pickletools "
    "copyreg base64 quopri uu tomllib netrc struct".split()
  ),
  "concurrency": tuple(
    "threading multiprocessing concurrent asyncio queue sched subprocess signal "
    "_threading_local contextvars".split()
  ),
  "numbers": tuple("math cmath decimal _pydecimal fractions numbers random statistics".split()),
  "introspection": tuple(
    "ast dis inspect typing importlib pkgutil tokenize symtable compileall py_compile code "
    "codeop pdb bdb traceback types".split()
  ),
}
TASKS = ("stdlib_area", "same_docstring")
TEXT_COLUMNS = {"stdlib_area": ("sentence",), "same_docstring": ("sentence1", "sentence2")}


@dataclasses.dataclass(frozen=True)
class Example:
  """texts: 1 or 2 sentences; label: the class name; doc_ids: the documents it comes from."""

  texts: tuple[str, ...]
  label: str
  doc_ids: tuple[str, ...]


def is_dev_document(doc_id: str) -> bool:
  """Whether a reserved document belongs to the tasks' dev split (a fixed hash of its id)."""
  digest = hashlib.sha256(f"heldout-dev/{doc_id}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < DEV_FRACTION


def _task_sentences(doc: CorpusDocument) -> list[str]:
  return [s for s in doc.sentences if MIN_WORDS <= len(s.split()) <= MAX_WORDS and "\t" not in s]


def area_examples(docs: Sequence[CorpusDocument]) -> list[Example]:
  """One example per task-length sentence of a document whose top-level module has an area."""
  area_of = {m: area for area, modules in AREAS.items() for m in modules}
  out = []
  for doc in docs:
    area = area_of.get(doc.module.split(".")[0])
    if area:
      out += [Example((s,), area, (doc.doc_id,)) for s in _task_sentences(doc)]
  return out


def pair_examples(docs: Sequence[CorpusDocument]) -> list[Example]:
  """Per document with 2+ task sentences: one `same` pair and one `different` pair (its first
  sentence with one of another document, of the same top-level module when there is one)."""
  rng = np.random.default_rng(POOL_SEED)
  usable = [(d, _task_sentences(d)) for d in docs]
  usable = [(d, s) for d, s in usable if s]
  by_top: dict[str, list[int]] = {}
  for i, (doc, _) in enumerate(usable):
    by_top.setdefault(doc.module.split(".")[0], []).append(i)
  out = []
  for i, (doc, sentences) in enumerate(usable):
    if len(sentences) < 2:
      continue
    a, b = rng.choice(len(sentences), size=2, replace=False)
    out.append(Example((sentences[a], sentences[b]), "same", (doc.doc_id,)))
    others = [j for j in by_top[doc.module.split(".")[0]] if j != i] or [
      j for j in range(len(usable)) if j != i
    ]
    other, other_sentences = usable[others[rng.integers(len(others))]]
    t = other_sentences[rng.integers(len(other_sentences))]
    out.append(Example((sentences[a], t), "different", (doc.doc_id, other.doc_id)))
  return out


def _label_round_robin(examples: Sequence[Example], rng: np.random.Generator) -> list[Example]:
  """Each label's examples in a random order, then labels taken in turn (sorted label order)."""
  by_label: dict[str, list[Example]] = {}
  for ex in examples:
    by_label.setdefault(ex.label, []).append(ex)
  queues = [
    [group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_label.items())
  ]
  out = []
  for rank in range(max(len(q) for q in queues)):
    out += [q[rank] for q in queues if rank < len(q)]
  return out


def task_splits(task: str, docs: Sequence[CorpusDocument]) -> dict[str, list[Example]]:
  """{'dev': the fixed dev examples (balanced), 'pool': every task-train example}, each built
  from its own documents (`is_dev_document`); a dev example with a sentence that also occurs in
  the pool (another docstring repeating it) is left out."""
  build = area_examples if task == "stdlib_area" else pair_examples
  pool = build([d for d in docs if not is_dev_document(d.doc_id)])
  seen = {text for ex in pool for text in ex.texts}
  dev = build([d for d in docs if is_dev_document(d.doc_id)])
  dev = [ex for ex in dev if not seen.intersection(ex.texts)]
  # Balanced: as many per label as the smallest label has, at most DEV_PER_LABEL.
  per_label = min([DEV_PER_LABEL[task], *collections.Counter(ex.label for ex in dev).values()])
  ordered = _label_round_robin(dev, np.random.default_rng(POOL_SEED))
  counts: dict[str, int] = {}
  fixed_dev = []
  for ex in ordered:
    counts[ex.label] = counts.get(ex.label, 0) + 1
    if counts[ex.label] <= per_label:
      fixed_dev.append(ex)
  return {"dev": fixed_dev, "pool": pool}


def budget_examples(pool: Sequence[Example], budget: int, seed: int) -> list[Example]:
  """The first `budget` examples of the pool's balanced order for `seed` (nested in budget)."""
  if budget > len(pool):
    raise ValueError(f"label budget {budget} exceeds the {len(pool)} training examples")
  return _label_round_robin(pool, np.random.default_rng(seed))[:budget]


def write_tsv(path: str, task: str, examples: Sequence[Example]) -> None:
  """The generic fine-tuning source's TSV: a header row, then texts and label per line."""
  header = "\t".join(TEXT_COLUMNS[task] + ("label",))
  rows = ["\t".join(ex.texts + (ex.label,)) + "\n" for ex in examples]
  write_text_atomically(path, header + "\n" + "".join(rows))


def write_task(
  out_dir: str,
  task: str,
  docs: Sequence[CorpusDocument],
  *,
  seed: int = 0,
  budgets: Sequence[int] = BUDGETS,
) -> dict[str, int]:
  """Writes OUT_DIR/<task>/dev.tsv and one folder per budget; returns example counts."""
  splits = task_splits(task, docs)
  task_dir = os.path.join(out_dir, task)
  os.makedirs(task_dir, exist_ok=True)
  dev_path = os.path.join(task_dir, "dev.tsv")
  write_tsv(dev_path, task, splits["dev"])
  counts = {"dev": len(splits["dev"]), "pool": len(splits["pool"])}
  for budget in budgets:
    name = str(budget) if seed == 0 else f"{budget}-seed{seed}"
    os.makedirs(os.path.join(task_dir, name), exist_ok=True)
    write_tsv(
      os.path.join(task_dir, name, "train.tsv"), task, budget_examples(splits["pool"], budget, seed)
    )
    shutil.copyfile(dev_path, os.path.join(task_dir, name, "validation.tsv"))
    counts[name] = budget
  return counts


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("output_dir")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  docs = reserved_documents()
  for task in TASKS:
    counts = write_task(args.output_dir, task, docs, seed=args.seed)
    print(f"{task}: {counts}")


if __name__ == "__main__":
  main()
