"""One line for a workdir that cannot be written (runtime/workdir_errors.py), found behind the
errors that follow a full disk, and a metric log whose close fails after an error does not
replace that error (runtime/metrics.py)."""

from __future__ import annotations

import errno
import logging

import pytest

from data2vec_jax.runtime import workdir_errors
from data2vec_jax.runtime.metrics import MetricWriter

ORBAX_TEXT = (
  'RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/4.orbax-checkpoint-tmp/x": '
  "No space left on device [os_error_code='28']"
)


def raised(make):
  try:
    make()
  except Exception as e:  # noqa: BLE001 - the test inspects it
    return e
  raise AssertionError("nothing raised")


def test_a_full_disk_behind_a_later_close_error_is_the_line():
  def fail():
    try:
      raise ValueError(ORBAX_TEXT)
    except ValueError:
      raise OSError("handle is closed")  # noqa: B904 - as TensorBoard's close raised it

  problem = workdir_errors.workdir_error(raised(fail), "/w")
  assert str(problem).startswith(
    "disk full writing to /w (RESOURCE_EXHAUSTED: No space left on device writing "
    "/w/checkpoints/4.orbax-checkpoint-tmp/x): free some space"
  )
  assert "re-run the same command to resume" in str(problem)


@pytest.mark.parametrize(
  "error, start",
  [
    (OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"), "disk full writing"),
    (OSError(errno.EROFS, "Read-only file system", "/w/x"), "cannot write /w/x: Read-only"),
    (PermissionError(errno.EACCES, "Permission denied", "/w/x"), "cannot write /w/x: Permission"),
  ],
)
def test_oserrors_that_mean_the_workdir_cannot_be_written(error, start):
  assert str(workdir_errors.workdir_error(error, "/w")).startswith(start)


def test_other_errors_are_left_alone():
  assert workdir_errors.workdir_error(ValueError("bad shape"), "/w") is None
  assert workdir_errors.workdir_error(FileNotFoundError(2, "No such file", "/d"), "/w") is None


def test_check_workdir_creates_it_and_refuses_a_file(tmp_path):
  workdir_errors.check_workdir(str(tmp_path / "a" / "b"))
  assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())
  (tmp_path / "f").write_text("x")
  with pytest.raises(workdir_errors.WorkdirError, match="is a file, not a directory"):
    workdir_errors.check_workdir(str(tmp_path / "f"))


class FailingClose:
  def close(self):
    raise OSError("handle is closed")


def test_a_failing_close_raises_unless_quiet(tmp_path, caplog):
  writer = MetricWriter(str(tmp_path), tensorboard=False)
  writer._tb = FailingClose()
  with pytest.raises(OSError, match="handle is closed"):
    writer.close()
  writer = MetricWriter(str(tmp_path), tensorboard=False)
  writer._tb = FailingClose()
  with caplog.at_level(logging.WARNING):
    writer.close(quiet=True)
  assert "closing the metric logs failed too: OSError: handle is closed" in caplog.text
  assert writer._jsonl.closed
