"""Weights in and out: model directories and the PyTorch references (fairseq, Hugging Face).

- `pretrained`: data2vec-jax model directories (`load_pretrained`, `save_pretrained`, `encode`).
- `parity`: per-layer differences against `transformers` (the parity notebook and tests).
- `torch_io`: safe reading of `.pt` / `pytorch_model.bin` / safetensors (no code execution).
- `layout`: the exact tensor mapping reference <-> stacked Flax tree; the `Converted` result.
- `hf`: Hugging Face `Data2VecText*` / `Roberta*` directories, import and export.
- `fairseq`: fairseq data2vec-text checkpoints (student or EMA teacher), import.
"""

from data2vec_jax.weights.fairseq import load_fairseq
from data2vec_jax.weights.hf import EXPORT_ARCHITECTURES, load_hf_dir, save_hf_dir
from data2vec_jax.weights.layout import Converted
from data2vec_jax.weights.torch_io import CheckpointError

__all__ = [
  "CheckpointError",
  "Converted",
  "EXPORT_ARCHITECTURES",
  "load_fairseq",
  "load_hf_dir",
  "save_hf_dir",
]
