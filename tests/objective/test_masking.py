"""Masking: bit-exact against a transcription of fairseq's MaskTokensDataset, plus statistics."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from data2vec_jax.objective.masking import MaskingConfig, mask_tokens, max_selected_per_row

V, MASK, PAD = 50265, 50264, 1


def fairseq_get_item(
  item,
  *,
  return_masked_tokens,
  seed,
  epoch,
  index,
  mask_prob,
  mask_multiple_length,
  mask_stdev,
  leave_unmasked_prob,
  random_token_prob,
  vocab_size=V,
  nspecial=4,
  mask_idx=MASK,
  pad_idx=PAD,
):
  """`MaskTokensDataset.__getitem_cached__` (fairseq HEAD 3d262bb), torch and whole-word
  branches removed, otherwise verbatim."""
  weights = np.ones(vocab_size)
  weights[:nspecial] = 0
  weights = weights / weights.sum()

  seed = int(hash((seed, epoch, index)) % 1e6)
  rng = np.random.default_rng(seed)
  sz = len(item)
  mask = np.full(sz, False)
  num_mask = int(mask_prob * sz / float(mask_multiple_length) + rng.random())
  mask_idc = rng.choice(sz, num_mask, replace=False)
  if mask_stdev > 0.0:
    lengths = rng.normal(mask_multiple_length, mask_stdev, size=num_mask)
    lengths = [max(0, int(round(x))) for x in lengths]
    mask_idc = np.asarray(
      [mask_idc[j] + offset for j in range(len(mask_idc)) for offset in range(lengths[j])],
      dtype=np.int64,
    )
  else:
    mask_idc = np.concatenate([mask_idc + i for i in range(mask_multiple_length)])
  mask_idc = mask_idc[mask_idc < len(mask)]
  mask[mask_idc] = True
  if return_masked_tokens:
    new_item = np.full(len(mask), pad_idx)
    new_item[mask] = item[mask]
    return new_item
  rand_or_unmask_prob = random_token_prob + leave_unmasked_prob
  if rand_or_unmask_prob > 0.0:
    rand_or_unmask = mask & (rng.random(sz) < rand_or_unmask_prob)
    if random_token_prob == 0.0:
      unmask = rand_or_unmask
      rand_mask = None
    elif leave_unmasked_prob == 0.0:
      unmask = None
      rand_mask = rand_or_unmask
    else:
      unmask_prob = leave_unmasked_prob / rand_or_unmask_prob
      decision = rng.random(sz) < unmask_prob
      unmask = rand_or_unmask & decision
      rand_mask = rand_or_unmask & (~decision)
  else:
    unmask = rand_mask = None
  if unmask is not None:
    mask = mask ^ unmask
  new_item = np.copy(item)
  new_item[mask] = mask_idx
  if rand_mask is not None:
    num_rand = rand_mask.sum()
    if num_rand > 0:
      new_item[rand_mask] = rng.choice(vocab_size, num_rand, p=weights)
  return new_item


def _example(rng, n):
  return np.concatenate([[0], rng.integers(4, MASK, n - 2), [2]]).astype(np.int64)


CONFIGS = [
  MaskingConfig(),  # data2vec yaml: 0.35, spans of 4
  MaskingConfig(
    mask_prob=0.15, mask_multiple_length=1, leave_unmasked_prob=0.1, random_token_prob=0.1
  ),  # BERT 80/10/10 (paper main row)
  MaskingConfig(mask_prob=0.3, mask_multiple_length=3, mask_stdev=1.5),
  MaskingConfig(mask_prob=0.2, mask_multiple_length=2, leave_unmasked_prob=0.3),
  MaskingConfig(mask_prob=0.2, mask_multiple_length=1, random_token_prob=0.25),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c.to_dict()))
def test_bit_exact_against_fairseq(config):
  rng = np.random.default_rng(0)
  for index in range(60):
    item = _example(rng, int(rng.integers(3, 300)))
    seed, epoch = int(rng.integers(0, 5)), int(rng.integers(0, 4))
    source, selected = mask_tokens(
      item, config=config, seed=seed, epoch=epoch, index=index, mask_id=MASK, vocab_size=V
    )
    kw = dict(seed=seed, epoch=epoch, index=index, **config.to_dict())
    ref_src = fairseq_get_item(item, return_masked_tokens=False, **kw)
    ref_tgt = fairseq_get_item(item, return_masked_tokens=True, **kw)
    assert source.dtype == np.int32 and selected.dtype == bool
    np.testing.assert_array_equal(source, ref_src)
    np.testing.assert_array_equal(selected, ref_tgt != PAD)


def test_span_masked_fraction_is_about_30_7_percent():
  rng = np.random.default_rng(1)
  total = masked = bos = 0
  for index in range(400):
    item = _example(rng, 512)
    source, selected = mask_tokens(
      item, config=MaskingConfig(), seed=1, epoch=0, index=index, mask_id=MASK, vocab_size=V
    )
    np.testing.assert_array_equal(source == MASK, selected)  # no 80/10/10 in the yaml
    total += len(item)
    masked += selected.sum()
    bos += selected[0]
  frac = masked / total
  # 1 - (1 - 0.35/4)^4 = 0.3067 for overlapping spans; clipping at the end lowers it slightly.
  assert abs(frac - 0.3067) < 0.006, frac
  assert bos > 0  # BOS is maskable, as in fairseq


def test_bert_80_10_10_proportions():
  config = CONFIGS[1]
  rng = np.random.default_rng(2)
  counts = {"mask": 0, "same": 0, "random": 0}
  n_sel = n_tok = 0
  for index in range(300):
    item = _example(rng, 256)
    source, selected = mask_tokens(
      item, config=config, seed=3, epoch=1, index=index, mask_id=MASK, vocab_size=V
    )
    assert np.all(source[~selected] == item[~selected])  # nothing changes off the selection
    s, orig = source[selected], item[selected]
    counts["mask"] += np.sum(s == MASK)
    counts["same"] += np.sum(s == orig)
    rand = (s != MASK) & (s != orig)
    counts["random"] += np.sum(rand)
    assert np.all(s[rand] >= 4) and np.all(s[rand] < V)  # never a special token
    n_sel += selected.sum()
    n_tok += len(item)
  assert abs(n_sel / n_tok - 0.15) < 0.005
  assert abs(counts["mask"] / n_sel - 0.8) < 0.015
  assert abs(counts["same"] / n_sel - 0.1) < 0.01
  assert abs(counts["random"] / n_sel - 0.1) < 0.01


def test_deterministic_per_seed_epoch_index_and_across_processes():
  item = _example(np.random.default_rng(3), 200)
  run = lambda **kw: mask_tokens(item, config=CONFIGS[1], mask_id=MASK, vocab_size=V, **kw)
  a = run(seed=1, epoch=2, index=7)
  b = run(seed=1, epoch=2, index=7)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  for other in (
    dict(seed=2, epoch=2, index=7),
    dict(seed=1, epoch=3, index=7),
    dict(seed=1, epoch=2, index=8),
  ):
    assert not np.array_equal(run(**other)[1], a[1])
  # hash() of an int tuple does not depend on PYTHONHASHSEED: a fresh process agrees.
  code = (
    "import numpy as np; from data2vec_jax.objective.masking import *; "
    "item = np.arange(4, 204); "
    "s, m = mask_tokens(item, config=MaskingConfig(), seed=1, epoch=2, index=7, "
    "mask_id=50264, vocab_size=50265); print(''.join('1' if x else '0' for x in m))"
  )
  outs = {
    subprocess.run(
      [sys.executable, "-c", code],
      capture_output=True,
      text=True,
      check=True,
      env={**os.environ, "PYTHONHASHSEED": str(h)},
    ).stdout
    for h in (0, 123)
  }
  assert len(outs) == 1
  _, here = mask_tokens(
    np.arange(4, 204), config=MaskingConfig(), seed=1, epoch=2, index=7, mask_id=MASK, vocab_size=V
  )
  assert outs.pop().strip() == "".join("1" if x else "0" for x in here)


def test_config_validation_and_from_dict():
  assert MaskingConfig.from_dict({"mask_prob": 0.15}).mask_prob == 0.15
  with pytest.raises(ValueError, match="unknown"):
    MaskingConfig.from_dict({"mask_probability": 0.15})
  for bad in (
    dict(mask_prob=0.0),
    dict(mask_multiple_length=0),
    dict(mask_stdev=-1.0),
    dict(leave_unmasked_prob=0.6, random_token_prob=0.6),
  ):
    with pytest.raises(ValueError):
      MaskingConfig(**bad)
  with pytest.raises(ValueError, match="mask_id"):
    mask_tokens(
      np.array([0, MASK, 2]),
      config=MaskingConfig(),
      seed=0,
      epoch=0,
      index=0,
      mask_id=MASK,
      vocab_size=V,
    )


@pytest.mark.parametrize(
  "config",
  [
    MaskingConfig(),
    MaskingConfig(
      mask_prob=0.15, mask_multiple_length=1, leave_unmasked_prob=0.1, random_token_prob=0.1
    ),
    MaskingConfig(mask_prob=0.5, mask_multiple_length=3),
  ],
)
def test_max_selected_per_row_bounds_the_masker(config):
  """The bound the gathered head relies on holds for every item length up to seq_len."""
  seq_len = 64
  bound = max_selected_per_row(config, seq_len)
  assert bound % 8 == 0 or bound == seq_len
  rng = np.random.default_rng(0)
  worst = 0
  for index in range(600):
    n = int(rng.integers(3, seq_len + 1))
    item = np.concatenate([[0], rng.integers(4, 90, n - 2), [2]]).astype(np.int32)
    _, selected = mask_tokens(
      item, config=config, seed=5, epoch=0, index=index, mask_id=99, vocab_size=100
    )
    worst = max(worst, int(selected.sum()))
  assert worst <= bound
  assert worst > bound - 8 - config.mask_multiple_length  # and it is not loose
