"""Training-curve figure from `metrics.jsonl`: `curves` (the data, per panel) and
`plot_training_curves` (the PNG). matplotlib's object API, no pyplot: drawing a figure never
switches the backend of a notebook or script that imports this.

Every logged row stands for a window of steps (`train.log_every`): the curves show each
window's MEAN (the row's `loss_mean`; older runs logged only `loss`, the window's last step,
which is then used). The held-out loss (`valid/loss`, with `validation.every` > 0) is drawn on
the loss panel.
"""

from __future__ import annotations

import json
import math

VALID = "valid/"  # train/validation.py's PREFIX: the held-out metrics' names

# panel title, y label, [(metrics.jsonl key, legend label)]
PANELS = (
  (
    "loss",
    "loss (smooth L1 per target)",
    [
      ("loss_mean", "train (mean of each logged window)"),
      (VALID + "loss", "held-out (dropout off)"),
    ],
  ),
  (
    "std across loss positions (mean over features)",
    "std",
    [
      ("target_var", "teacher targets (target_var)"),
      ("pred_var", "student predictions (pred_var)"),
      (VALID + "target_var", "held-out targets"),
    ],
  ),
  ("learning rate", "learning rate", [("lr", "lr")]),
  ("throughput", "real tokens / s", [("tokens_per_s", "tokens / s")]),
)


def read_metrics(path: str) -> list[dict]:
  """Rows of a metrics.jsonl; a resumed run's repeated steps keep the newest row."""
  rows = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        row = json.loads(line)
        rows[row["step"]] = row
  return [rows[s] for s in sorted(rows)]


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of `key` over the rows that log a finite value of it; `loss_mean` falls
  back to `loss` in rows without it (runs logged before it existed)."""
  steps, values = [], []
  for row in rows:
    value = row.get(key)
    if value is None and key == "loss_mean":
      value = row.get("loss")
    if isinstance(value, (int, float)) and math.isfinite(value):
      steps.append(int(row["step"]))
      values.append(float(value))
  return steps, values


def curves(rows: list[dict]) -> list[tuple[str, str, dict[str, tuple[list[int], list[float]]]]]:
  """Per panel: (title, y label, {legend label: (steps, values)}), empty series left out."""
  out = []
  for title, ylabel, keys in PANELS:
    lines = {label: series(rows, key) for key, label in keys}
    out.append((title, ylabel, {label: xy for label, xy in lines.items() if xy[0]}))
  return out


def training_curves_figure(rows: list[dict]):
  """A 2x2 matplotlib Figure of `curves(rows)` (shown inline by Jupyter when returned)."""
  from matplotlib.figure import Figure

  fig = Figure(figsize=(11, 7.5), layout="constrained")
  axes = fig.subplots(2, 2)
  for ax, (title, ylabel, lines) in zip(axes.flat, curves(rows)):
    for label, (steps, values) in lines.items():
      held_out = label.startswith("held-out")
      ax.plot(
        steps,
        values,
        label=label,
        marker="o" if held_out or len(steps) < 50 else None,
        markersize=5 if held_out else 3,
        linestyle="--" if held_out else "-",
      )
    if title == "learning rate":
      ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
      ax.legend(fontsize=9)
  return fig


def plot_training_curves(metrics_path: str, out_png: str) -> str:
  """Writes `training_curves_figure` of a metrics.jsonl to `out_png`; returns the path."""
  training_curves_figure(read_metrics(metrics_path)).savefig(out_png, dpi=100)
  return out_png
