"""What the commands share: one-line failures, config-flag parsing and help, argparse flags.

Every failure of a launcher ends its output with one line `<prog>: error: ...` (exit 1; 2 for bad
flags; 130 for Ctrl-C). Expected failures print only that line (D2V_TRACEBACK=1 adds the
traceback); unexpected ones print the traceback, then the line.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import traceback
from typing import Any, Callable, Mapping

import ml_collections
from absl import flags
from ml_collections import config_flags

from data2vec_jax import config_files


def fail(prog: str, message: str, code: int = 1) -> None:
  """Ends the run with `message` as the last line of its output (no traceback after it)."""
  sys.stdout.flush()
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")


def prog_name() -> str:
  """The command as the user typed it: 'train.py' (the checkout's script) or 'd2v-train'."""
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "data2vec-jax"


def parse_flags(
  prog: str,
  argv: list[str],
  *,
  config_module: str,
  moved: Mapping[str, str] | None = None,
  doc: str | None = None,
) -> list[str]:
  """absl's parsing for a config-driven command, with one-line errors and a help that exits 0.

  `--config` names a file or a packaged config (`config_files.resolve`). `--help` prints `doc`,
  the command's flags and the fields of the config (the one given, else `config_module`'s: dotted
  below configs/, e.g. 'pretrain', 'sweeps.top_k') with their defaults. An unknown config field
  is one line with the closest field ("did you mean") and the config file actually used.
  `moved`: config fields that were renamed -> what to use now.
  """
  argv, spec = _resolve_config_flag(prog, list(argv))
  if any(a in HELP_FLAGS for a in argv[1:]):
    print_help(prog, doc, spec or config_files.resolve(config_module.replace(".", "/")), argv)
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if "Traceback" in str(e):  # the config file raised: its own message is the last line
      fail(prog, f"{flag_of(e)}: {str(e).strip().splitlines()[-1]}", 2)
    fail(prog, f"{e} ({prog} --help lists the flags and the config's fields)", 2)
  except (AttributeError, KeyError) as e:  # an override of a field the config does not have
    field = unknown_field(e, argv)
    if moved and field in moved:
      fail(prog, f"config field {field!r} moved: use --config.{moved[field]}", 2)
    fail(prog, unknown_field_message(prog, field, spec), 2)
  except (TypeError, ValueError) as e:  # e.g. a string where the field holds a number
    fail(prog, f"bad --config override: {e}", 2)


def _resolve_config_flag(prog: str, argv: list[str]) -> tuple[list[str], str | None]:
  """argv with its --config value made an absolute path (a file here, or a packaged config), and
  that resolved 'path[:args]' (None without --config)."""
  spec = None
  for i, arg in enumerate(argv):
    if arg in ("--config", "-config") and i + 1 < len(argv):
      index, value, template = i + 1, argv[i + 1], "{}"
    elif arg.startswith(("--config=", "-config=")):
      index, value, template = i, arg.partition("=")[2], arg.partition("=")[0] + "={}"
    else:
      continue
    try:
      spec = config_files.resolve(value)
    except config_files.ConfigFileError as e:
      fail(prog, f"--config {value}: {e}", 2)
    argv[index] = template.format(spec)
  return argv, spec


def load_config(spec: str, overrides: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """The config that `--config=spec` and `--config.*` `overrides` give, parsed as the commands
  parse it (its own flag registry: the command's flags stay untouched)."""
  argv = ["load_config", f"--config={spec}", *overrides]
  values = flags.FlagValues()
  # sys_argv: ml_collections reads the override flags from it (default: this process's argv).
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def print_help(prog: str, doc: str | None, spec: str, argv: list[str]) -> None:
  """The command's usage, its flags (all of absl's with --helpfull) and the config's fields."""
  if doc:
    print(doc.strip() + "\n")
  if "--helpfull" in argv:
    print(flags.FLAGS.get_help())
  else:
    print(f"flags of {prog} (--helpfull lists absl's too):")
    for flag in command_flags(flags.FLAGS):
      default = "none" if flag.default is None else flag.default_as_str
      print(f"  --{flag.name}: {flag.help} (default: {default})")
  print(f"\n--config names a file or a packaged config: {', '.join(config_files.packaged_names())}")
  print(f"\nfields of the config {spec} (override any with --config.<field>=<value>):")
  try:
    config = load_config(spec)
  except Exception as e:  # noqa: BLE001 - help must not end in a traceback
    print(f"  (cannot load it: {str(e).strip().splitlines()[-1] if str(e).strip() else e})")
    return
  for line in config_files.field_lines(config):
    print(f"  {line}")


def command_flags(values: flags.FlagValues) -> list[flags.Flag]:
  """The flags the package's modules define (the command's own, not absl's)."""
  seen, out = set(), []
  for module, module_flags in values.flags_by_module_dict().items():
    if module.startswith("data2vec_jax.") or module.endswith("config_flags"):
      for flag in module_flags:
        if flag.name not in seen:
          seen.add(flag.name)
          out.append(flag)
  return out


def unknown_field_message(prog: str, field: str, spec: str | None) -> str:
  """'unknown config field 'x' (did you mean 'y'?); ...' naming the config file in use."""
  hint = ""
  if spec is not None:
    try:
      names = config_files.field_names(load_config(spec))
      close = difflib.get_close_matches(field, names, n=1, cutoff=0.6)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
    except Exception:  # noqa: BLE001 - the suggestion is a courtesy; the error stands without it
      pass
  where = f"the config {spec}" if spec else "the config"
  return (
    f"unknown config field {field!r}{hint}; {where} has no such field "
    f"({prog} --config {spec or 'FILE'} --help lists its fields)"
  )


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


def define_config_and_workdir(workdir_help: str) -> None:
  """--config (a file or packaged config, path[:arg]) and --workdir, both required: the flags of
  the commands that run a config (defined on call: one process runs one command)."""
  config_flags.DEFINE_config_file(
    "config", None, "Config file or packaged config (path[:arg]).", lock_config=True
  )
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config", "workdir"])


def start_jax_command(
  define_flags: Callable[[], None],
  run: Callable[[list[str]], None],
  parse_flags: Callable[[list[str]], list[str]],
) -> None:
  """Start a command that runs JAX steps: the process's malloc settings and the GPU XLA flags
  first (both must precede JAX), then its flags and `run` through absl."""
  from absl import app

  from data2vec_jax.speed import host_malloc, xla_flags

  host_malloc.maybe_reexec()  # before jax starts: see data2vec_jax/speed/host_malloc.py
  xla_flags.apply_gpu_flags()  # before jax starts a backend: XLA reads XLA_FLAGS only then
  define_flags()
  app.run(run, flags_parser=parse_flags)


def add_argument(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
  """`parser.add_argument('--snake_case', ...)` with '--kebab-case' as a hidden alias: the one
  flag convention of the commands, without breaking the old spelling in existing scripts."""
  parser.add_argument(f"--{name}", **kwargs)
  kebab = name.replace("_", "-")
  if kebab != name:
    alias = {k: v for k, v in kwargs.items() if k not in ("help", "required", "default", "dest")}
    parser.add_argument(
      f"--{kebab}",
      dest=kwargs.get("dest", name),
      help=argparse.SUPPRESS,
      default=argparse.SUPPRESS,
      **alias,
    )
