"""Adding `name=value` settings to a list-valued environment variable, the user's values first.

Both `GLIBC_TUNABLES` (':'-separated) and `XLA_FLAGS` (space-separated) are such variables; the
process reads them once at start-up, so the settings are merged before it starts."""

from __future__ import annotations

import os
from typing import Mapping, Sequence


def with_settings(
  variable: str,
  settings: Sequence[str],
  *,
  separator: str,
  environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
  """A copy of `environ` (default os.environ) with `settings` appended to `variable`.

  A setting whose name (the text before '=') the variable already holds is left out: the
  user's value wins. Empty entries (doubled separators) are dropped.
  """
  env = dict(os.environ if environ is None else environ)
  existing = [s for s in env.get(variable, "").split(separator) if s.strip()]
  have = {_name(s) for s in existing}
  env[variable] = separator.join(existing + [s for s in settings if _name(s) not in have])
  return env


def _name(setting: str) -> str:
  return setting.strip().split("=", 1)[0]
