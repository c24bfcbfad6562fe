"""Running a sweep's cells: each stage is the launcher a user would run (train.py, then
finetune.py), in its own process, so a cell behaves exactly as the two commands run by hand
(they resume by themselves) and a crash in one cell cannot take the sweep's process with it.

A cell's stage is skipped when its outputs say it finished (pretraining: summary.json with
stop_reason 'completed' at train.num_steps; fine-tuning: every run of its grid finished), so a
re-run of the sweep costs nothing for finished cells and resumes the interrupted one.

Failure paths:
* kill -9 of the whole job (a scheduler's hard kill): the stages resume from their newest
  checkpoints on the next run.
* kill -9 of the sweep's process alone: its running stage gets SIGTERM from the kernel (Linux
  parent-death signal), saves and exits; a new sweep waits for it (the cell's lock, held by the
  stage too) instead of running the same cell twice.
* SIGTERM (a preemption notice): forwarded to the running stage, which saves and exits; the
  sweep then stops with the cell unfinished.
* A stage that fails: its log's last line is reported and the sweep goes on to the next cell; the
  sweep exits non-zero at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import ml_collections

from data2vec_jax.atomic_files import read_json, write_json_atomically
from data2vec_jax.finetune import grid
from data2vec_jax.runtime.preemption import PreemptionFlag
from data2vec_jax.sweep.definition import REPO, Cell, SweepError, load_stage_config

STAGES = ("pretrain", "finetune")
# command -> (the checkout's script beside the package, the module that implements it)
LAUNCHERS = {
  "pretrain": ("train.py", "data2vec_jax.commands.train"),
  "finetune": ("finetune.py", "data2vec_jax.commands.finetune"),
  "sweep": ("sweep.py", "data2vec_jax.commands.sweep"),
}
STATUS_FILE = "status.json"


def launcher(command: str) -> list[str]:
  """How to start a command in a new process, with absolute paths and this interpreter (so the
  line works from any directory, e.g. a job script's): [python, the checkout's script] in a
  checkout, else [python, -m, the module] (an installed package)."""
  script, module = LAUNCHERS[command]
  path = os.path.join(REPO, script)
  if os.path.isfile(path) and os.path.isdir(os.path.join(REPO, "data2vec_jax")):
    return [sys.executable, path]
  return [sys.executable, "-m", module]


def stage_command(cell: Cell, stage: str) -> list[str]:
  flags = cell.pretrain_flags if stage == "pretrain" else cell.finetune_flags
  return [*launcher(stage), *flags]


def cell_command(config_flags: list[str], workdir: str, cell: Cell) -> str:
  """The shell command that runs one cell (what `--list` prints, one per cell); config_flags:
  the sweep's own --config=... (an absolute path) and --config.*=... flags. It starts with
  `cd <this directory> &&`: paths the user gave relative to it (a definition's `data=`, an
  override's data.path) then mean the same in a job script run from anywhere."""
  words = [*launcher("sweep"), *config_flags, f"--workdir={workdir}", f"--cell={cell.index}"]
  return f"cd {shlex.quote(os.getcwd())} && {shlex.join(words)}"


class StageConfigs:
  """Each cell's two stage configs, parsed once (they decide when a stage is finished)."""

  def __init__(self, cells: list[Cell]):
    self._configs: dict[tuple[str, str], ml_collections.ConfigDict] = {}
    for cell in cells:
      self.get(cell, "pretrain")
      self.get(cell, "finetune")

  def get(self, cell: Cell, stage: str) -> ml_collections.ConfigDict:
    key = (cell.name, stage)
    if key not in self._configs:
      flags = cell.pretrain_flags if stage == "pretrain" else cell.finetune_flags
      what = f"cell {cell.index} ({cell.name}): the {stage} config"
      config = load_stage_config(flags, what)
      if stage == "finetune":
        try:
          grid.grid_runs(config)  # the grid's own checks, before any cell starts
        except grid.FinetuneError as e:
          raise SweepError(f"{what}: {e}") from e
      self._configs[key] = config
    return self._configs[key]


def pretraining_finished(cell: Cell, config: ml_collections.ConfigDict) -> bool:
  summary = read_json(os.path.join(cell.pretrain_dir, "summary.json"))
  return bool(
    summary
    and summary.get("stop_reason") == "completed"
    and int(summary.get("final_step", -1)) >= int(config.train.num_steps)
  )


def finetuning_progress(cell: Cell, config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(finished, planned) fine-tuning runs of the cell."""
  try:
    return grid.progress(config, cell.finetune_dir)
  except grid.FinetuneError as e:
    raise SweepError(f"cell {cell.index} ({cell.name}): the finetune config: {e}") from e


def stage_finished(cell: Cell, stage: str, configs: StageConfigs) -> bool:
  config = configs.get(cell, stage)
  if stage == "pretrain":
    return pretraining_finished(cell, config)
  done, planned = finetuning_progress(cell, config)
  return done == planned


def run_cells(
  cells: list[Cell],
  configs: StageConfigs,
  *,
  stages: tuple[str, ...] = STAGES,
  echo: bool = True,
  after_cell: Callable[[Cell, str], None] | None = None,
) -> dict[str, str]:
  """Runs `stages` of the cells one after another; cell name -> 'kept' | 'done' | 'failed' |
  'preempted'. Stops at a preemption notice (SIGTERM) after the running stage has saved.
  `after_cell(cell, outcome)` runs after each cell (the sweep writes its table there)."""
  outcomes: dict[str, str] = {}
  with PreemptionFlag() as preemption:
    for number, cell in enumerate(cells, start=1):
      logging.info("[cell %d/%d] %s: %s", number, len(cells), cell.name, cell.directory)
      outcomes[cell.name] = run_cell(cell, configs, preemption, stages=stages, echo=echo)
      if after_cell is not None:
        after_cell(cell, outcomes[cell.name])
      if outcomes[cell.name] == "preempted":
        logging.warning("preemption notice: stopped in cell %s; re-run to resume", cell.name)
        break
  return outcomes


def run_cell(
  cell: Cell,
  configs: StageConfigs,
  preemption=None,
  *,
  stages: tuple[str, ...] = STAGES,
  echo: bool = True,
) -> str:
  """The cell's `stages` in order, each skipped if finished; 'kept' when there was nothing to
  do. Fine-tuning needs the pretraining finished (run alone, it checks that first)."""
  os.makedirs(cell.directory, exist_ok=True)
  if all(stage_finished(cell, s, configs) for s in stages):
    logging.info("%s: finished before, kept", cell.name)
    return "kept"
  if "pretrain" not in stages and not stage_finished(cell, "pretrain", configs):
    raise SweepError(f"{cell.name}: its pretraining has not finished; run --stage=pretrain first")
  with _cell_lock(cell) as lock_fd:
    for stage in stages:
      if preemption is not None and preemption.is_set():
        return "preempted"
      if stage_finished(cell, stage, configs):
        logging.info("%s: %s finished before, kept", cell.name, stage)
        continue
      code = _run_stage(cell, stage, lock_fd, preemption, echo=echo)
      finished = stage_finished(cell, stage, configs)
      state = "done" if finished else ("failed" if code else "stopped")
      _write_status(cell, stage, state, code)
      if finished:
        continue
      if code == 0 or (preemption is not None and preemption.is_set()):
        return "preempted"  # the launcher saved and exited at a preemption notice
      log = _log_path(cell, stage)
      logging.error(
        "%s: %s failed (exit %d): %s (log: %s)", cell.name, stage, code, _last(log), log
      )
      return "failed"
  return "done"


def _run_stage(cell: Cell, stage: str, lock_fd: int, preemption, *, echo: bool) -> int:
  """One launcher process, its output appended to <cell>/<stage>.log (and echoed, prefixed)."""
  command = stage_command(cell, stage)
  log_path = _log_path(cell, stage)
  _write_status(cell, stage, "running", None, command)
  logging.info("%s: %s: %s", cell.name, stage, " ".join(command))
  with open(log_path, "ab") as log:
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
    log.flush()
    start = log.tell()
    process = subprocess.Popen(
      command,
      stdout=log,
      stderr=subprocess.STDOUT,
      stdin=subprocess.DEVNULL,
      pass_fds=(lock_fd,),  # the stage holds the cell's lock too, even if the sweep dies first
      preexec_fn=_terminate_with_parent,
    )
  if preemption is not None:
    preemption.child = process
  try:
    with open(log_path, "rb") as reader:
      reader.seek(start)
      while True:
        code = process.poll()
        _echo(reader, f"[{cell.name} {stage}] ", echo)
        if code is not None:
          _echo(reader, f"[{cell.name} {stage}] ", echo)
          return code
        time.sleep(0.5)
  finally:
    if preemption is not None:
      preemption.child = None


def _echo(reader, prefix: str, echo: bool) -> None:
  text = reader.read().decode(errors="replace")
  if echo and text:
    for line in text.splitlines():
      print(prefix + line, flush=True)


def _terminate_with_parent() -> None:
  """In the stage's process before exec: SIGTERM when the sweep's process dies (Linux), so a
  killed sweep leaves no orphan training on; the stage saves and exits as on a preemption."""
  if sys.platform.startswith("linux"):
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def _cell_lock(cell: Cell) -> Iterator[int]:
  """An exclusive lock on the cell for this host: a second sweep (or a job array task given the
  same cell) waits rather than writing into the same workdirs. Per host, so the processes of one
  multi-host cell, which run on different hosts, do not wait for each other."""
  path = os.path.join(cell.directory, f".lock.{socket.gethostname()}")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.warning("%s: another process runs this cell; waiting for it (%s)", cell.name, path)
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield fd
  finally:
    os.close(fd)


def _log_path(cell: Cell, stage: str) -> str:
  return os.path.join(cell.directory, f"{stage}.log")


def _last(path: str) -> str:
  try:
    with open(path, errors="replace") as f:
      lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else "(empty log)"
  except OSError:
    return "(no log)"


def read_status(cell: Cell) -> dict[str, Any]:
  return read_json(os.path.join(cell.directory, STATUS_FILE)) or {}


def _write_status(cell: Cell, stage: str, state: str, code, command=None) -> None:
  status = read_status(cell)
  entry = dict(status.get(stage, {}))
  entry.update(state=state, exit_code=code, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
  if command is not None:
    entry["command"] = command
  entry["log"] = _log_path(cell, stage)
  status[stage] = entry
  write_json_atomically(os.path.join(cell.directory, STATUS_FILE), status)
