"""The training-curve figure (data2vec_jax/train/plots.py): what each panel draws. The curves are
each logged window's mean (`loss_mean`), the held-out loss sits on the loss panel, every axis
is labelled and each legend names what its panel's title says."""

from __future__ import annotations

import json

from data2vec_jax.train import plots, validation

ROWS = [
  {"step": 1, "loss": 4.0, "loss_mean": 4.0, "target_var": 1.0, "pred_var": 0.5, "lr": 1e-4},
  {"step": 10, "loss": 2.5, "loss_mean": 3.1, "target_var": 0.9, "pred_var": 0.6, "lr": 1e-3},
  {
    "step": 20,
    "loss": 2.0,
    "loss_mean": 2.2,
    "target_var": 0.8,
    "pred_var": 0.7,
    "lr": 5e-4,
    "tokens_per_s": 900.0,
    "valid/loss": 2.4,
    "valid/target_var": 0.85,
  },
]


def test_panels_plot_window_means_and_the_held_out_loss():
  assert plots.VALID == validation.PREFIX
  panels = {title: (ylabel, lines) for title, ylabel, lines in plots.curves(ROWS)}
  ylabel, loss = panels["loss"]
  assert ylabel.startswith("loss")
  # The window means (3.1, 2.2), not the windows' last steps (2.5, 2.0).
  assert loss["train (mean of each logged window)"] == ([1, 10, 20], [4.0, 3.1, 2.2])
  assert loss["held-out (dropout off)"] == ([20], [2.4])
  ylabel, spread = panels["std across loss positions (mean over features)"]
  assert ylabel == "std"
  assert spread["teacher targets (target_var)"] == ([1, 10, 20], [1.0, 0.9, 0.8])
  assert spread["student predictions (pred_var)"][1] == [0.5, 0.6, 0.7]
  assert panels["throughput"][1] == {"tokens / s": ([20], [900.0])}


def test_rows_logged_before_loss_mean_fall_back_to_loss():
  old = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": float("nan")}, {"step": 3, "loss": 2.0}]
  assert plots.series(old, "loss_mean") == ([1, 3], [3.0, 2.0])


def test_the_png_has_labelled_axes(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
  out = plots.plot_training_curves(str(path), str(tmp_path / "curves.png"))
  assert (tmp_path / "curves.png").stat().st_size > 10_000 and out.endswith("curves.png")
  fig = plots.training_curves_figure(ROWS)
  for ax in fig.axes:
    assert ax.get_xlabel() == "step" and ax.get_ylabel(), ax.get_title()
  loss_ax = fig.axes[0]
  assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == [
    "train (mean of each logged window)",
    "held-out (dropout off)",
  ]


def test_drawing_does_not_switch_the_pyplot_backend():
  import matplotlib

  before = matplotlib.get_backend()
  plots.training_curves_figure(ROWS)
  assert matplotlib.get_backend() == before
