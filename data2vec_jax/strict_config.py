"""Building frozen config dataclasses from dicts without letting a typo pass silently."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound="StrictConfig")


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
  """`cls(**values)`, but unknown keys raise a ValueError that lists the known ones."""
  values = dict(values.items())
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known keys: {sorted(known)}")
  return cls(**values)


class StrictConfig:
  """Mixin for frozen config dataclasses: `from_dict` (unknown keys refused) and `to_dict`."""

  @classmethod
  def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """Builds the config from a mapping (e.g. an ml_collections section), refusing unknown keys."""
    return from_dict(cls, values)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)
