"""Training-curve figure from `metrics.jsonl` (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
import math

_PANELS = (
  ("loss", "loss"),
  ("target_var", "target / prediction std"),
  ("lr", "learning rate"),
  ("tokens_per_s", "tokens / s"),
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


def plot_training_curves(metrics_path: str, out_png: str) -> str:
  """Writes a 2x2 figure (loss, target/pred variance, lr, throughput) to `out_png`."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(metrics_path)
  fig, axes = plt.subplots(2, 2, figsize=(10, 7))
  for ax, (key, title) in zip(axes.flat, _PANELS):
    series = [
      (r["step"], r[key])
      for r in rows
      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    if series:
      ax.plot(*zip(*series), label=key, marker="." if len(series) < 50 else None)
    if key == "target_var":
      pred = [(r["step"], r["pred_var"]) for r in rows if isinstance(r.get("pred_var"), float)]
      if pred:
        ax.plot(*zip(*pred), label="pred_var")
      ax.legend()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return out_png
