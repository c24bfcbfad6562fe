"""data2vec (text) in JAX/Flax."""

from __future__ import annotations

import importlib
from typing import Any

# Public names -> defining module, imported on first use (PEP 562) so that `import data2vec_jax`
# stays cheap and submodules can import each other without cycles.
_LAZY = {
  "encode": "data2vec_jax.weights.pretrained",
  "load_model_tokenizer": "data2vec_jax.weights.model_tokenizer",
  "load_pretrained": "data2vec_jax.weights.pretrained",
  "save_pretrained": "data2vec_jax.weights.pretrained",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'data2vec_jax' has no attribute {name!r}")
