"""The padding rows of the embedding tables never move (fairseq's and HF's `padding_idx`).

fairseq builds the token table as `nn.Embedding(V, D, padding_idx=pad)` and the learned position
table with the same `padding_idx` (pads get position `pad`, `encoder.position_ids`); Hugging Face
does the same. Row `pad` of each table therefore gets exactly zero gradient from the lookups.
Two places keep that here:

- the model (`encoder.Embeddings`) stops the lookups' gradient at pad positions, so the loss's
  gradient equals fairseq's, embedding tables included (data2vec 2.0 reads every position's
  embedding through its convolutional decoder and does not zero pad outputs);
- the update (`runtime.optimizer.apply_gradients(..., pad_id=...)`, used by pretraining for every
  objective and by fine-tuning) zeroes row `pad` of both tables' gradients *and* of AdamW's
  update. The gradient alone is not enough: AdamW's decoupled weight decay (`p -= lr * wd * p`)
  moves a non-zero row (an imported HF/fairseq model's may be non-zero), and so would Adam
  moments carried over from an older checkpoint. It also covers the MLM baseline's decoder,
  which is tied to the token table and reads the pad logit: fairseq's RoBERTa lets that move row
  `pad` (a deliberate difference; the pad id is never a target).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# The parameter names (`encoder.Embeddings`) of the tables whose row `pad_id` is frozen.
PAD_ROW_TABLES = ("token_embedding", "position_embedding")


def _is_pad_row_table(path: tuple[Any, ...]) -> bool:
  names = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
  return len(names) >= 2 and names[-1] == "embedding" and names[-2] in PAD_ROW_TABLES


def zero_pad_rows(tree: Any, pad_id: int | None) -> Any:
  """`tree` (parameters' shape: gradients or updates) with row `pad_id` of every
  `.../{token,position}_embedding/embedding` leaf ([V, D] / [P, D]) set to exactly 0; other
  leaves unchanged. `pad_id=None` returns `tree` as it is."""
  if pad_id is None:
    return tree

  def zero(path, leaf):
    if not _is_pad_row_table(path):
      return leaf
    # A mask, not `leaf.at[pad_id].set(0)`: elementwise, it fuses into AdamW's pass and keeps
    # the table's sharding (the scatter, partitioned over a vocab-sharded mesh, zeroed the
    # wrong row: tests/finetune/test_step.py's sharded-mesh test).
    is_pad = (jnp.arange(leaf.shape[0]) == pad_id)[:, None]
    return jnp.where(is_pad, jnp.zeros((), leaf.dtype), leaf)

  return jax.tree_util.tree_map_with_path(zero, tree)
