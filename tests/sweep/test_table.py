"""The sweep's table and axis plot while cells run (data2vec_jax/sweep/table.py, runner.py):
results.md marked partial until every cell is done and rewritten after each cell; the axis plot
ticks an integer axis at its values, spans at least MIN_Y_SPAN points, shows each seed and the
majority class. tests/sweep/test_definition.py covers the table's numbers; tests/e2e/test_sweep.py the command."""

from __future__ import annotations

import json
import os

import numpy as np

from data2vec_jax.configs.sweeps import demo_top_k
from data2vec_jax.sweep import definition, runner, table
from tests.sweep.test_definition import finish_pretraining, write_run

SCORES = {"1": (0.661, 0.668, 0.672), "2": (0.652, 0.671, 0.640), "4": (0.667, 0.652, 0.662)}


def finish_cell(cell, configs) -> None:
  """The cell's pretraining and its three fine-tuning runs, as finished stages leave them."""
  finish_pretraining(cell, configs.get(cell, "pretrain"))
  for seed, score in enumerate(SCORES[cell.value], start=1):
    write_run(cell.finetune_dir, "python_topics", 1e-3, seed, score)
    path = os.path.join(cell.finetune_dir, "python_topics", f"lr0.001_seed{seed}", "results.json")
    with open(path) as f:
      results = json.load(f)
    results["majority_class"] = {"label": "statements", "score": 0.541, "splits": {}}
    with open(path, "w") as f:
      json.dump(results, f)


def test_results_md_is_written_after_each_cell_and_marked_partial(tmp_path, monkeypatch):
  sweep = demo_top_k.get_config("values=1;2;4")
  workdir = str(tmp_path)
  cells = definition.cells(sweep, workdir)
  configs = runner.StageConfigs(cells)
  seen = []  # results.md as each cell starts

  def fake_run_cell(cell, configs, preemption=None, **_):
    path = os.path.join(workdir, table.RESULTS_MD)
    seen.append(open(path).read() if os.path.exists(path) else None)
    finish_cell(cell, configs)
    return "done"

  monkeypatch.setattr(runner, "run_cell", fake_run_cell)
  outcomes = runner.run_cells(
    cells,
    configs,
    after_cell=lambda cell, outcome: table.write_tables(sweep, cells, configs, workdir),
  )
  assert outcomes == {c.name: "done" for c in cells}
  assert seen[0] is None
  assert "**Partial: 1 of 3 cells done**" in seen[1] and "| 1 | done |" in seen[1]
  assert "| 2 | not started |" in seen[1]
  assert "**Partial: 2 of 3 cells done**" in seen[2] and "| 2 | done |" in seen[2]
  final = open(os.path.join(workdir, table.RESULTS_MD)).read()
  assert "Partial" not in final and "| 4 | done |" in final


def test_axis_plot_integer_ticks_honest_y_range_seeds_and_baseline(tmp_path):
  sweep = demo_top_k.get_config("values=1;2;4")
  cells = definition.cells(sweep, str(tmp_path))
  configs = runner.StageConfigs(cells)
  for cell in cells:
    finish_cell(cell, configs)
  rows = [table.cell_row(sweep, cell, configs) for cell in cells]
  fig = table.axis_figure(sweep, rows)
  (ax,) = fig.axes
  assert list(ax.get_xticks()) == [1.0, 2.0, 4.0]  # the cells' K, not 1.5 / 2.5 / 3.5
  assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
  low, high = ax.get_ylim()
  assert high - low >= table.MIN_Y_SPAN  # a 1-point spread does not fill the plot
  seeds = next(c for c in ax.collections if c.get_label() == "each seed")
  np.testing.assert_allclose(
    sorted(seeds.get_offsets()[:, 1]), sorted(100 * s for v in SCORES.values() for s in v)
  )
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert "majority class (54.1)" in legend and "this sweep: mean ± std over seeds" in legend
  assert low <= 54.1  # the baseline is in view
  assert rows[0]["seed_averages"] == [100 * s for s in SCORES["1"]]
