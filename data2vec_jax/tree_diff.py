"""One report of how a tree of arrays differs from the expected one: missing keys, unexpected
keys and shape mismatches, all at once. Used for weights files (`convert.layout`) and training
checkpoints (`checkpoint`)."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence


def shape_problems(
  found: Mapping[str, Sequence[int]],
  expected: Mapping[str, Sequence[int]],
  *,
  extra_unexpected: Iterable[str] = (),
  limit: int | None = None,
) -> list[str]:
  """['missing keys [...]', 'unexpected keys [...]', 'shape mismatches [...]'], the empty ones
  left out (an empty list: the trees agree).

  found / expected: leaf name -> shape. extra_unexpected: more unexpected names (leftovers the
  caller found). limit: list at most this many names per kind (then '(+N more)').
  """
  missing = sorted(set(expected) - set(found))
  unexpected = sorted((set(found) - set(expected)) | set(extra_unexpected))
  mismatched = [
    f"{k}: got {tuple(found[k])}, expected {tuple(expected[k])}"
    for k in sorted(set(found) & set(expected))
    if tuple(found[k]) != tuple(expected[k])
  ]
  problems = []
  for label, names in (
    ("missing keys", missing),
    ("unexpected keys", unexpected),
    ("shape mismatches", mismatched),
  ):
    if names:
      shown = names if limit is None else names[:limit]
      more = len(names) - len(shown)
      problems.append(f"{label} {shown}" + (f" (+{more} more)" if more else ""))
  return problems
