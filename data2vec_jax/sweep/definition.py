"""A sweep as data, and the cells it stands for.

A sweep definition is an ml_collections ConfigDict (configs/sweeps/*.py):

  name, description     what the sweep reproduces (and the paper figure or table)
  axis                  what varies: an argument of the pretraining config file (`k` of
                        configs/ablations/top_k.py:k=...), or a dotted config field
                        (`objective.average_top_k_layers`), passed as --config.<axis>=<value>
  label                 the axis's name in the table and in the cell directories ('' = axis)
  axis_values           the axis's values, one cell each (strings, as on a command line)
  pretrain.config       the pretraining config file (train.py --config)
  pretrain.args         its fixed arguments ('model=base,recipe=release'); the axis is added
  pretrain.overrides    'field=value' strings for every cell (--config.field=value)
  finetune.config       the fine-tuning config file and arguments (finetune.py --config)
  finetune.overrides    'field=value' strings for every cell; init is the cell's pretraining
  paper_rows            value -> a row of the paper's Table 4 (data2vec_jax/sweep/paper.py)

Cell i (0-based, in `axis_values` order) lives in `<workdir>/cells/<label>=<value>/`, with `pretrain/`
(train.py's workdir) and `finetune/` (finetune.py's, starting from the pretraining workdir's
newest checkpoint). The directory is named by the value, not the index, so adding values to a
sweep keeps the cells already run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from data2vec_jax import cli, config_files
from data2vec_jax.sweep import paper


class SweepError(Exception):
  """A sweep definition, cell or command that cannot run; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One value of the sweep's axis: its directory and the two commands that fill it."""

  index: int
  value: str
  name: str  # '<label>=<value>': the directory's name and the table's row
  directory: str
  pretrain_flags: tuple[str, ...]  # train.py's flags (--config=..., --workdir=..., overrides)
  finetune_flags: tuple[str, ...]

  @property
  def pretrain_dir(self) -> str:
    return os.path.join(self.directory, "pretrain")

  @property
  def finetune_dir(self) -> str:
    return os.path.join(self.directory, "finetune")


def label(sweep: ml_collections.ConfigDict) -> str:
  return str(sweep.label or sweep.axis)


def cells(sweep: ml_collections.ConfigDict, workdir: str) -> list[Cell]:
  """The sweep's cells under `workdir`, in `axis_values` order (checks the definition's fields)."""
  validate(sweep)
  workdir = os.path.abspath(workdir)
  pretrain_config = resolve_config_path(sweep.pretrain.config, "pretrain.config")
  finetune_config = resolve_config_path(sweep.finetune.config, "finetune.config")
  out = []
  for index, value in enumerate(str(v) for v in sweep.axis_values):
    name = f"{label(sweep)}={value}"
    directory = os.path.join(workdir, "cells", _directory_name(name))
    args = [a for a in str(sweep.pretrain.args).split(",") if a]
    overrides = [f"--config.{o}" for o in sweep.pretrain.overrides]
    if "." in sweep.axis:
      overrides.append(f"--config.{sweep.axis}={value}")
    else:
      args.append(f"{sweep.axis}={value}")
    spec = pretrain_config + (":" + ",".join(args) if args else "")
    pretrain_flags = (
      f"--config={spec}",
      f"--workdir={os.path.join(directory, 'pretrain')}",
      *overrides,
    )
    finetune_flags = (
      f"--config={finetune_config}",
      f"--workdir={os.path.join(directory, 'finetune')}",
      f"--config.init={os.path.join(directory, 'pretrain')}",
      *(f"--config.{o}" for o in sweep.finetune.overrides),
    )
    out.append(Cell(index, value, name, directory, pretrain_flags, finetune_flags))
  return out


REQUIRED = ("name", "axis", "axis_values", "pretrain", "finetune")


def validate(sweep: ml_collections.ConfigDict) -> None:
  """A one-line SweepError for a definition that cannot make cells."""
  missing = [k for k in REQUIRED if k not in sweep]
  if missing:
    raise SweepError(f"the sweep definition has no {missing}; see data2vec_jax/sweep/definition.py")
  values = [str(v) for v in sweep.axis_values]
  if not values:
    raise SweepError("the sweep has no values: set --config.axis_values=('a','b',...)")
  if len(set(values)) != len(values):
    raise SweepError(f"values {values} repeat a value: each value is one cell")
  if not re.fullmatch(r"[A-Za-z_][\w.]*", str(sweep.axis)):
    raise SweepError(f"axis {sweep.axis!r} is neither a config argument nor a dotted field name")
  if "." not in sweep.axis and re.search(rf"(^|,){re.escape(sweep.axis)}=", sweep.pretrain.args):
    raise SweepError(f"pretrain.args {sweep.pretrain.args!r} sets the axis {sweep.axis!r} itself")
  for section in ("pretrain", "finetune"):
    for override in sweep[section].overrides:
      if "=" not in override or override.startswith("-"):
        raise SweepError(f"{section}.overrides: {override!r} is not 'field=value'")
  unknown_rows = [r for r in sweep.get("paper_rows", {}).values() if r not in paper.TABLE4]
  if unknown_rows:
    raise SweepError(f"paper_rows name {unknown_rows}; the paper's rows are {list(paper.TABLE4)}")
  stray = [v for v in sweep.get("paper_rows", {}) if v not in values]
  if stray:
    raise SweepError(f"paper_rows has values {stray} that are not in values {values}")


def resolve_config_path(spec: str, field: str) -> str:
  """A config file 'path[:args]' as an absolute path: relative to the working directory, else a
  packaged config (configs/, shipped in the package: data2vec_jax.config_files)."""
  try:
    return config_files.resolve(spec)
  except config_files.ConfigFileError as e:
    raise SweepError(f"{field}: {e}") from None


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _directory_name(name: str) -> str:
  return re.sub(r"[^\w.=+,-]", "_", name)


def load_stage_config(stage_flags: tuple[str, ...], what: str) -> ml_collections.ConfigDict:
  """The config a stage's launcher will run with: its --config file and --config.* overrides,
  parsed exactly as train.py / finetune.py parse them (so a bad value fails here, before any
  cell starts). `what` names the stage in the error."""
  argv = [sys.argv[0] if sys.argv else "sweep"] + [
    f for f in stage_flags if f.startswith("--config")
  ]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
  try:
    values(argv)
  except (AttributeError, KeyError) as e:
    raise SweepError(f"{what}: unknown config field {cli.unknown_field(e, argv)!r}") from e
  except (flags.Error, TypeError, ValueError) as e:
    # The config file's own error is the last line of ml_collections' traceback text.
    message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise SweepError(f"{what}: {message}") from e
  return values.config
