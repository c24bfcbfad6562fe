"""Building frozen config dataclasses from dicts without letting a typo pass silently."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
  """`cls(**values)`, but unknown keys raise a ValueError that lists the known ones."""
  values = dict(values.items())
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known keys: {sorted(known)}")
  return cls(**values)
