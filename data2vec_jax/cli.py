"""What the launchers (train.py, finetune.py) share: one-line failures and config-flag parsing.

Every failure of a launcher ends its output with one line `<prog>: error: ...` (exit 1; 2 for bad
flags; 130 for Ctrl-C). Expected failures print only that line (D2V_TRACEBACK=1 adds the
traceback); unexpected ones print the traceback, then the line.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Callable, Mapping

from absl import flags


def fail(prog: str, message: str, code: int = 1) -> None:
  """Ends the run with `message` as the last line of its output (no traceback after it)."""
  sys.stdout.flush()
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(
  prog: str, argv: list[str], *, config_module: str, moved: Mapping[str, str] | None = None
) -> list[str]:
  """absl's parsing, with a bad `--config...` override reported in one line, not a traceback.

  `moved`: config fields that were renamed -> what to use now. `config_module`: the configs/
  module (dotted below configs/) whose fields the message tells the user how to list.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if "Traceback" in str(e):  # the config file raised: its own message is the last line
      fail(prog, f"{flag_of(e)}: {str(e).strip().splitlines()[-1]}", 2)
    fail(prog, f"{e} (python {prog} --helpfull lists the flags)", 2)
  except (AttributeError, KeyError) as e:  # an override of a field the config does not have
    package, _, name = f"configs.{config_module}".rpartition(".")
    field = unknown_field(e, argv)
    if moved and field in moved:
      fail(prog, f"config field {field!r} moved: use --config.{moved[field]}", 2)
    suggestion = re.search(r'Did you mean "(\w+)"', str(e))
    fail(
      prog,
      f"unknown config field {field!r}"
      + (f" (did you mean {suggestion.group(1)!r}?)" if suggestion else "")
      + f"; print the config's fields with: python -c \"from {package} import {name}; "
      f"print({name}.get_config())\"",
      2,
    )
  except (TypeError, ValueError) as e:  # e.g. a string where the field holds a number
    fail(prog, f"bad --config override: {e}", 2)


def flag_of(error: Exception) -> str:
  """'--config=path:arg' from absl's "flag --config=...: Error whilst parsing..." message."""
  match = re.match(r"flag (\S+?):? ", str(error))
  return match.group(1) if match else "--config"


def unknown_field(error: Exception, argv: list[str]) -> str:
  """The --config.* override an unknown-field error (ml_collections' KeyError/AttributeError,
  which quotes only the missing key) belongs to."""
  paths = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  words = re.findall(r"\w+", str(error))
  return next((p for w in words for p in paths if w in p.split(".")), str(error))


def run_reporting_errors(
  prog: str, body: Callable[[], object], expected: tuple[type[BaseException], ...], resume_hint: str
) -> None:
  """Runs `body`; expected errors end in one line, anything else in its traceback + one line."""
  try:
    body()
  except expected as e:
    if os.environ.get("D2V_TRACEBACK"):
      traceback.print_exc()
    fail(prog, str(e))  # the messages say what went wrong and what to do
  except KeyboardInterrupt:
    fail(prog, f"interrupted (Ctrl-C); {resume_hint}", 130)
  except Exception as e:  # noqa: BLE001 - unexpected: the traceback, then the one-line summary
    traceback.print_exc()
    fail(prog, f"{type(e).__name__}: {e}".splitlines()[0])
