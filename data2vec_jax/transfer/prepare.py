"""The experiment's data, built once: the standard-library corpus, the held-out tasks for every
seed, and the corpus binarized with one 8k sentencepiece model (train and held-out valid).

Each part is skipped when its last file exists (the corpus's stats.json, a task seed's last
train.tsv, the bin's prepare_stats.json, which `data.prepare` writes last), so a re-run after a
kill redoes only the part that was cut short; every writer below replaces its files atomically.
"""

from __future__ import annotations

import logging
import os
import time

from data2vec_jax.data import prepare as prepare_bin
from data2vec_jax.data.stdlib_corpus import reserved_documents, write_stdlib_corpus
from data2vec_jax.finetune import heldout_tasks
from data2vec_jax.transfer.plan import Plan

VOCAB_SIZE = 8000


def prepare_data(plan: Plan) -> None:
  corpus = os.path.join(plan.data_dir, "corpus")
  if not os.path.isfile(os.path.join(corpus, "stats.json")):
    start = time.perf_counter()
    logging.info("prepare: the corpus (stdlib + %d packages' docstrings)", len(plan.packages))
    stats = write_stdlib_corpus(corpus, stdlib_dir=plan.stdlib_dir, packages=plan.packages)
    logging.info(
      "prepare: corpus %s words (train) in %.0f s",
      f"{stats['parts']['train']['words']:,}",
      time.perf_counter() - start,
    )
  _write_tasks(plan)
  bins = os.path.join(plan.data_dir, "bin")
  spm_model = os.path.join(bins, "spm.model")
  if not os.path.isfile(os.path.join(bins, "prepare_stats.json")):
    logging.info("prepare: sentencepiece (%d pieces) and the binarized train split", VOCAB_SIZE)
    prepare_bin.main(
      ["--source", "text", "--path", os.path.join(corpus, "train.txt"),
       "--tokenizer", "sentencepiece", "--spm_vocab_size", str(VOCAB_SIZE),
       "--workers", "2", "--output_dir", bins]
    )  # fmt: skip
  valid = os.path.join(plan.data_dir, "valid_bin")
  if not os.path.isfile(os.path.join(valid, "prepare_stats.json")):
    prepare_bin.main(
      ["--source", "text", "--path", os.path.join(corpus, "valid.txt"),
       "--tokenizer", "sentencepiece", "--sentencepiece_model", spm_model, "--output_dir", valid]
    )  # fmt: skip


def _write_tasks(plan: Plan) -> None:
  missing = [
    seed
    for seed in plan.seeds
    if not all(
      os.path.isfile(os.path.join(plan.task_dir(task, max(plan.budgets), seed), "train.tsv"))
      for task in plan.tasks
    )
  ]
  if not missing:
    return
  docs = reserved_documents(plan.stdlib_dir)
  for seed in missing:
    for task in plan.tasks:
      counts = heldout_tasks.write_task(
        os.path.join(plan.data_dir, "tasks"), task, docs, seed=seed, budgets=plan.budgets
      )
      logging.info("prepare: task %s seed %d: %s", task, seed, counts)
