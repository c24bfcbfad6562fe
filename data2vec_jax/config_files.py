"""Config files by path or by packaged name, and a config's fields as `field = value` lines.

The project's configs live in the top-level `configs/` directory of a checkout; the package
reaches them as `data2vec_jax/configs` (a link in the checkout, a real folder in the wheel), so an
installed `d2v-train --config demo` finds them without a checkout. `--config SPEC` is
`path[:args]`: a file relative to the working directory wins; otherwise the path names a packaged
config, with or without the `configs/` prefix and the `.py` suffix (`demo`, `configs/demo.py`,
`sweeps/top_k`, `ablations/top_k.py:k=4`).
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Iterator

PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


class ConfigFileError(ValueError):
  """A --config that names no file; the message lists the packaged configs."""


def packaged_names() -> list[str]:
  """The packaged configs as `--config` accepts them ('demo', 'sweeps/top_k', ...)."""
  names = []
  for root, dirs, files in os.walk(PACKAGED):
    dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
    rel = os.path.relpath(root, PACKAGED)
    for f in sorted(files):
      if f.endswith(".py") and not f.startswith("_"):
        names.append(os.path.normpath(os.path.join(rel, f[: -len(".py")])))
  return names


def resolve(spec: str) -> str:
  """'path[:args]' -> '/absolute/path.py[:args]': the file relative to the working directory if
  it exists, else the packaged config of that name. Raises ConfigFileError naming both places."""
  path, colon, args = str(spec).partition(":")
  if os.path.isfile(path):
    return os.path.abspath(path) + colon + args
  name = path[len("configs/") :] if path.startswith("configs/") else path
  name = name[: -len(".py")] if name.endswith(".py") else name
  candidate = os.path.join(PACKAGED, name + ".py")
  if name and os.path.isfile(candidate):
    return candidate + colon + args
  names = packaged_names()
  close = difflib.get_close_matches(name, names, n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  raise ConfigFileError(
    f"no config file {path!r} in {os.getcwd()} and no packaged config {name!r}{hint}; "
    f"packaged configs: {', '.join(names)}"
  )


def field_lines(config: Any, prefix: str = "") -> Iterator[str]:
  """`section.field = value` for every leaf of an ml_collections ConfigDict, in its order."""
  for key in config.keys():
    value = config[key]
    name = f"{prefix}{key}"
    if hasattr(value, "keys") and hasattr(value, "items"):
      if len(value.keys()) == 0:
        yield f"{name} = {{}}"
      yield from field_lines(value, name + ".")
    else:
      yield f"{name} = {value!r}"


def field_names(config: Any) -> list[str]:
  """Every dotted field path of a ConfigDict, sections included ('model', 'model.num_layers')."""
  out = []
  for key in config.keys():
    value = config[key]
    out.append(str(key))
    if hasattr(value, "keys") and hasattr(value, "items"):
      out += [f"{key}.{sub}" for sub in field_names(value)]
  return out
