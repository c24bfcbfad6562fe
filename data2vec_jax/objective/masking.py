"""Host-side token masking, a bit-exact port of fairseq's `MaskTokensDataset` (docs/reference/data2vec_text_reference.md §3.2).

One example at a time, in numpy, on the host (the data pipeline calls it per example, so the
mask of an example is a pure function of (seed, epoch, index), independent of batching, sharding
and host count -- which is what makes a resumed or re-sharded run see the same masks).

fairseq draws, from one `np.random.default_rng(int(hash((seed, epoch, index)) % 1e6))`, in this
order (reference: `fairseq/data/mask_tokens_dataset.py`, `__getitem_cached__`, HEAD 3d262bb):

  1. `num_mask = int(mask_prob * sz / mask_multiple_length + rng.random())` (probabilistic
     rounding); `sz` counts every token of the item, BOS and EOS included;
  2. `starts = rng.choice(sz, num_mask, replace=False)`: any position may start a span;
  3. spans: fixed length `mask_multiple_length`, or with `mask_stdev > 0` per-span lengths
     `max(0, int(round(rng.normal(mask_multiple_length, mask_stdev))))`; spans may overlap and
     are clipped at the end of the item (so the masked fraction of (0.35, 4) is ~30.7%, not 35%);
  4. BERT corruption of the selected positions (skipped when both probabilities are 0):
     `rand_or_unmask = selected & (rng.random(sz) < leave_unmasked_prob + random_token_prob)`,
     split by a second `rng.random(sz) < leave_unmasked_prob / (sum)` draw when both are > 0;
     unmasked positions keep their token, random ones get `rng.choice(V, n, p=weights)` with
     weights uniform over ids >= `num_special` (so `<mask>` itself, a regular dictionary entry
     after the 4 specials, can be drawn: probability 1/(V-4) per random token, as in fairseq);
     every other selected position becomes `<mask>`.

fairseq's *target* dataset (`return_masked_tokens=True`) re-runs the same draws and returns the
original token at every selected position (steps 1-3, before step 4), so `selected` here is the
set of positions fairseq's `target_tokens` holds (and what the MLM loss covers), while the
data2vec loss covers only `source == <mask>` (the 80% of BERT masking; see `data2vec_jax/objective/loss.py`).

Not ported: `mask_whole_words`, `freq_weighted_replacement` (both off in every data2vec recipe).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data2vec_jax import strict_config


@dataclasses.dataclass(frozen=True)
class MaskingConfig(strict_config.StrictConfig):
  """fairseq `MaskedLMConfig` masking knobs; defaults are the data2vec text yaml.

  Attributes:
    mask_prob: fraction of tokens to select before span expansion and overlap (fairseq
      `mask_prob`; 0.35 in the yaml / paper "+ wav2vec 2.0 masking" row, 0.15 for BERT masking).
    mask_multiple_length: span length (4 in the yaml; 1 = BERT token masking).
    mask_stdev: > 0 draws each span's length from N(mask_multiple_length, mask_stdev), rounded
      and clipped at 0, as fairseq does.
    leave_unmasked_prob: fraction of selected positions left unchanged (BERT: 0.1).
    random_token_prob: fraction of selected positions replaced by a random non-special token
      (BERT: 0.1).
  """

  mask_prob: float = 0.35
  mask_multiple_length: int = 4
  mask_stdev: float = 0.0
  leave_unmasked_prob: float = 0.0
  random_token_prob: float = 0.0

  def __post_init__(self):
    # fairseq's own asserts (MaskTokensDataset.__init__).
    if not 0.0 < self.mask_prob < 1.0:
      raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
    if self.mask_multiple_length < 1:
      raise ValueError(f"mask_multiple_length must be >= 1, got {self.mask_multiple_length}")
    if self.mask_stdev < 0.0:
      raise ValueError(f"mask_stdev must be >= 0, got {self.mask_stdev}")
    for name in ("leave_unmasked_prob", "random_token_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
    if self.leave_unmasked_prob + self.random_token_prob > 1.0:
      raise ValueError("leave_unmasked_prob + random_token_prob must be <= 1")


def max_selected_per_row(config: MaskingConfig, seq_len: int, multiple: int = 8) -> int:
  """A per-row bound on the positions `mask_tokens` selects in items of <= seq_len tokens.

  num_mask <= floor(mask_prob * sz / L) + 1 spans of L = mask_multiple_length positions each,
  so the bound is exact with `mask_stdev == 0`; with random span lengths it assumes spans of at
  most L + 3 * mask_stdev (a row beyond that is still handled exactly by the objective's
  every-position fallback). Rounded up to `multiple`, capped at seq_len. Used to size the
  gathered head positions (`execution.head_positions`).
  """
  span = config.mask_multiple_length + (
    math.ceil(3 * config.mask_stdev) if config.mask_stdev else 0
  )
  spans = int(config.mask_prob * seq_len / float(config.mask_multiple_length)) + 1
  bound = min(seq_len, spans * max(span, 1))
  return min(seq_len, -(-bound // multiple) * multiple)


def selection_bound_is_exact(config: MaskingConfig) -> bool:
  """Whether `max_selected_per_row` is a guaranteed bound (fixed span lengths), not an estimate."""
  return config.mask_stdev == 0


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """fairseq's per-example generator.

  `hash` of a tuple of Python ints does not depend on PYTHONHASHSEED (only str/bytes hashing is
  randomised), so this is reproducible across processes and hosts. Arguments are converted to
  Python ints first: numpy integers hash equal to them, but being explicit costs nothing.
  """
  return np.random.default_rng(int(hash((int(seed), int(epoch), int(index))) % 1e6))


def mask_tokens(
  tokens: np.ndarray,
  *,
  config: MaskingConfig,
  seed: int,
  epoch: int,
  index: int,
  mask_id: int,
  vocab_size: int,
  num_special: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
  """Masks one example exactly as fairseq's `MaskTokensDataset` (same RNG draws, same order).

  Args:
    tokens: [T] integer ids of ONE example, no padding (BOS/EOS included; every position,
      BOS/EOS too, can be masked, as in fairseq). Must not contain `mask_id`.
    config: the masking knobs.
    seed, epoch, index: the example's identity; the mask is a pure function of them.
    mask_id: id of `<mask>` (50264 in the released dictionary).
    vocab_size: dictionary size V; random replacements are drawn uniformly from
      [num_special, V).
    num_special: leading special ids never drawn as random tokens (fairseq `nspecial`: <s>,
      <pad>, </s>, <unk>).

  Returns:
    source: [T] int32, `tokens` with `<mask>` / random / unchanged substitutions.
    selected: [T] bool, the positions chosen by the masker (before the 80/10/10 split): the
      positions where fairseq's `target_tokens` holds the original token.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"tokens must be one example [T], got shape {tokens.shape}")
  if np.any(tokens == mask_id):
    raise ValueError(f"tokens already contain mask_id={mask_id}")  # fairseq asserts the same
  rng = example_rng(seed, epoch, index)
  # The draws in fairseq's order: span starts (and lengths), then the 80/10/10 split, then the
  # random tokens.
  selected = _selected_positions(rng, len(tokens), config)
  unmask, rand_mask = _unmask_and_random(rng, selected, config)
  to_mask = selected ^ unmask if unmask is not None else selected
  source = np.array(tokens, dtype=np.int32, copy=True)
  source[to_mask] = mask_id
  if rand_mask is not None:
    num_rand = int(rand_mask.sum())
    if num_rand > 0:
      # Same weights vector as fairseq so `rng.choice(..., p=)` consumes the stream identically.
      weights = np.ones(vocab_size)
      weights[:num_special] = 0
      weights = weights / weights.sum()
      source[rand_mask] = rng.choice(vocab_size, num_rand, p=weights)
  return source, selected


def _selected_positions(rng: np.random.Generator, sz: int, config: MaskingConfig) -> np.ndarray:
  """[sz] bool: the masker's span choice (fairseq's `mask_idc`), drawn from `rng`."""
  num_mask = int(config.mask_prob * sz / float(config.mask_multiple_length) + rng.random())
  starts = rng.choice(sz, num_mask, replace=False)
  if config.mask_stdev > 0.0:
    lengths = rng.normal(config.mask_multiple_length, config.mask_stdev, size=num_mask)
    lengths = [max(0, int(round(x))) for x in lengths]
    idc = np.asarray(
      [starts[j] + offset for j in range(len(starts)) for offset in range(lengths[j])],
      dtype=np.int64,
    )
  else:
    idc = np.concatenate([starts + i for i in range(config.mask_multiple_length)])
  idc = idc[idc < sz]
  selected = np.zeros(sz, dtype=bool)
  selected[idc] = True
  return selected


def _unmask_and_random(
  rng: np.random.Generator, selected: np.ndarray, config: MaskingConfig
) -> tuple[np.ndarray | None, np.ndarray | None]:
  """The selected positions left unchanged and those given a random token ([sz] bool each, None
  when that probability is 0), drawn from `rng` as fairseq does."""
  unmask = rand_mask = None
  rand_or_unmask_prob = config.random_token_prob + config.leave_unmasked_prob
  if rand_or_unmask_prob > 0.0:
    sz = len(selected)
    rand_or_unmask = selected & (rng.random(sz) < rand_or_unmask_prob)
    if config.random_token_prob == 0.0:
      unmask = rand_or_unmask
    elif config.leave_unmasked_prob == 0.0:
      rand_mask = rand_or_unmask
    else:
      decision = rng.random(sz) < config.leave_unmasked_prob / rand_or_unmask_prob
      unmask = rand_or_unmask & decision
      rand_mask = rand_or_unmask & ~decision
  return unmask, rand_mask
