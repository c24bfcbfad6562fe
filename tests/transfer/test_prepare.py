"""The experiment's data on a tiny stdlib tree: corpus, held-out tasks for every seed and the
binarized corpus are written once; a second call finds them and rewrites nothing."""

from __future__ import annotations

import os

import pytest

from data2vec_jax.atomic_files import read_json
from data2vec_jax.finetune.heldout_tasks import AREAS, TASKS
from data2vec_jax.transfer import prepare
from data2vec_jax.transfer.plan import Plan
from data2vec_jax.transfer.probe import read_tsv

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi".split()
BUDGET = 12


def make_stdlib(root) -> str:
  """One module per area (its first module name), 30 documented functions of two 8-word
  sentences each: enough reserved sentences for every area's dev and train labels."""
  for area, modules in sorted(AREAS.items()):
    lines = [f'"""The {area} module does many useful things for everyone here."""']
    for i in range(30):
      lines.append(
        f"def f{i}():\n  '''The {area} function {WORDS[i % 14]} number {i} returns a value.\n\n"
        f"  It uses {WORDS[(i + 3) % 14]} and {WORDS[(i + 5) % 14]} for item {i} too.'''\n"
      )
    (root / f"{modules[0]}.py").write_text("\n".join(lines), encoding="utf-8")
  return str(root)


def outputs(plan: Plan) -> dict[str, float]:
  """Every file under the data folder -> its mtime (ns)."""
  out = {}
  for folder, _, names in os.walk(plan.data_dir):
    for name in names:
      path = os.path.join(folder, name)
      out[path] = os.stat(path).st_mtime_ns
  return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("lib")
  plan = Plan(workdir=str(tmp_path_factory.mktemp("exp")), stdlib_dir=make_stdlib(root),
              packages=(), budgets=(BUDGET,), seeds=(0, 1))  # fmt: skip
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(prepare, "VOCAB_SIZE", 400)  # the tiny corpus holds fewer than 8k pieces
    prepare.prepare_data(plan)
  return plan


def test_prepare_writes_corpus_tasks_and_bins(prepared):
  plan = prepared
  data = plan.data_dir
  stats = read_json(os.path.join(data, "corpus", "stats.json"))
  assert stats["parts"]["train"]["words"] > 0 and stats["packages"] == {}
  for task in TASKS:
    for seed in plan.seeds:
      folder = plan.task_dir(task, BUDGET, seed)
      texts, labels = read_tsv(os.path.join(folder, "train.tsv"))
      assert len(labels) == BUDGET
      dev_texts, dev_labels = read_tsv(os.path.join(folder, "validation.tsv"))
      assert dev_labels and not set(dev_texts) & set(texts)
    assert read_tsv(plan.task_dir(task, BUDGET, 0) + "/train.tsv") != read_tsv(
      plan.task_dir(task, BUDGET, 1) + "/train.tsv"
    )  # another seed, another label subset
  area_labels = read_tsv(os.path.join(plan.task_dir("stdlib_area", BUDGET, 0), "train.tsv"))[1]
  assert set(area_labels) == set(AREAS)
  for name in ("bin", "valid_bin"):
    bin_stats = read_json(os.path.join(data, name, "prepare_stats.json"))
    assert bin_stats, name
    assert os.path.isfile(os.path.join(data, name, "train.bin"))
  assert os.path.isfile(os.path.join(data, "bin", "spm.model"))


def test_second_prepare_skips_every_part(prepared, monkeypatch):
  before = outputs(prepared)

  def fail(*args, **kwargs):
    raise AssertionError("rebuilt a part that was already there")

  monkeypatch.setattr(prepare, "write_stdlib_corpus", fail)
  monkeypatch.setattr(prepare, "reserved_documents", fail)
  monkeypatch.setattr(prepare.prepare_bin, "main", fail)
  prepare.prepare_data(prepared)
  assert outputs(prepared) == before


def test_a_missing_seed_is_written_alone(prepared, tmp_path):
  plan = prepared
  seed1 = os.path.join(plan.task_dir("same_docstring", BUDGET, 1), "train.tsv")
  seed0 = os.path.join(plan.task_dir("same_docstring", BUDGET, 0), "train.tsv")
  kept = open(seed1, encoding="utf-8").read()
  os.remove(seed1)
  mtime0 = os.stat(seed0).st_mtime_ns
  prepare._write_tasks(plan)
  assert open(seed1, encoding="utf-8").read() == kept  # the same subset, written again
  assert os.stat(seed0).st_mtime_ns == mtime0  # seed 0 was complete: not rewritten
