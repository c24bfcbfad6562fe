"""metrics.jsonl and TensorBoard after a resume read as one uninterrupted run."""

from __future__ import annotations

import glob
import json
import struct

from data2vec_jax.runtime.metrics import MetricWriter


def rows(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def tensorboard_events(workdir) -> list:
  """Every event of every event file (TFRecord framing: length, crc, payload, crc)."""
  from tensorboardX.proto import event_pb2

  events = []
  for path in sorted(glob.glob(str(workdir / "tensorboard" / "events.*"))):
    data = open(path, "rb").read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[offset + 12 : offset + 12 + length])
      events.append(event)
      offset += 12 + length + 4
  return events


def test_a_resumed_run_replaces_the_replayed_steps(tmp_path):
  first = MetricWriter(str(tmp_path))
  for step in range(1, 6):
    first.write(step, {"loss": 10.0 - step})
  first.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "loss": 3.')  # a line cut short by a kill

  # The run resumes from its step-3 checkpoint and replays steps 4 and 5.
  resumed = MetricWriter(str(tmp_path), resume_step=3)
  assert [r["step"] for r in resumed.history] == [1, 2, 3]
  for step in range(4, 7):
    resumed.write(step, {"loss": 100.0 + step})
  resumed.close()
  after = rows(tmp_path)
  assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6]
  assert [r["loss"] for r in after] == [9.0, 8.0, 7.0, 104.0, 105.0, 106.0]

  # TensorBoard hides the first run's events after step 3 (a purge marker at step 4).
  events = tensorboard_events(tmp_path)
  starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == 1]
  assert starts[-1] == 4
  last_run = events[[i for i, e in enumerate(events) if e.HasField("session_log")][-1] :]
  assert [e.step for e in last_run if e.HasField("summary")] == [4, 5, 6]


def test_other_processes_write_nothing(tmp_path):
  writer = MetricWriter(str(tmp_path / "w"), enabled=False, resume_step=5)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert writer.history == [] and not (tmp_path / "w").exists()
