"""bench/gpu_session.sh: the one-shot GPU session, by its CPU dry run (`--allow-cpu`: every part
but the GPU-only check, with the tiny model), its wheel installation and its budget."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

from tests.paths import REPO as REPO_DIR
from tests.xla_env import xla_flags

REPO = pathlib.Path(REPO_DIR)
SCRIPT = REPO / "bench" / "gpu_session.sh"
RESULTS = REPO / "bench" / "results.jsonl"


def _run(tmp_path, *args, timeout=1800, **env):
  environ = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "D2V_"))}
  environ.update(XLA_FLAGS=xla_flags(), PYTHON=sys.executable, OUT=str(tmp_path / "out"), **env)
  return subprocess.run(
    ["bash", str(SCRIPT), *args],
    env=environ,
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=tmp_path,
  )


def _wheel(directory: pathlib.Path, name: str, version: str) -> pathlib.Path:
  """A minimal pure-Python wheel: module `name` with VERSION = version."""
  path = directory / f"{name}-{version}-py3-none-any.whl"
  info = f"{name}-{version}.dist-info"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{name}.py", f"VERSION = {version!r}\n")
    z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    z.writestr(
      f"{info}/WHEEL",
      "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    )
    z.writestr(f"{info}/RECORD", "")
  return path


def test_unknown_argument_is_one_line_error(tmp_path):
  proc = _run(tmp_path, "--gpu")
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
    "gpu_session.sh: error: unknown argument '--gpu' (use --allow-cpu or --help)"
  )


def test_installs_only_missing_wheels_outside_the_environment(tmp_path):
  """A carried wheel of a distribution the Python already has (here numpy) is never installed:
  the image's packages cannot be shadowed; a missing one goes to D2V_SITE, not site-packages."""
  house = tmp_path / "house"
  house.mkdir()
  _wheel(house, "d2v_probe", "1.0")
  _wheel(house, "numpy", "0.0.1")
  site = tmp_path / "site"
  proc = _run(
    tmp_path,
    "--allow-cpu",
    D2V_WHEELHOUSE=str(house),
    D2V_SITE=str(site),
    D2V_SESSION_PARTS="none",
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (site / "d2v_probe.py").is_file()
  assert not (site / "numpy").exists()
  assert f"installing {house}/d2v_probe-1.0-py3-none-any.whl into {site}" in proc.stdout
  summary = (tmp_path / "out" / "summary.md").read_text()
  assert "| checks | not selected | - |" in summary


def test_spent_budget_skips_parts_instead_of_running_them(tmp_path):
  proc = _run(tmp_path, "--allow-cpu", D2V_SESSION_BUDGET_S="0", timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  summary = (tmp_path / "out" / "summary.md").read_text()
  for part in ("versions", "checks", "ratio", "largest_batch", "remat"):
    assert f"| {part} | skipped (budget) | - |" in summary
  assert not (tmp_path / "out" / "results.jsonl").exists()


def test_dry_run(tmp_path):
  before = RESULTS.read_bytes() if RESULTS.exists() else b""
  proc = _run(tmp_path, "--allow-cpu", D2V_SESSION_BUDGET_S="3000")
  out = tmp_path / "out"
  log = (out / "session.log").read_text()
  assert proc.returncode == 0, log[-6000:]
  assert "gpu_session.sh: all parts passed" in proc.stdout
  # The repo's records are untouched; the session's go to $OUT.
  assert (RESULTS.read_bytes() if RESULTS.exists() else b"") == before

  versions = json.loads((out / "versions.json").read_text())
  assert versions["versions"]["jax"] and versions["jax_devices"] == ["cpu:cpu"]

  checks = {c["name"]: c for c in json.loads((out / "checks.json").read_text())["checks"]}
  assert set(checks) == {"parity_fp32", "parity_bf16", "train_step", "cudnn_attention"}
  assert all(c["ok"] for c in checks.values())
  assert checks["cudnn_attention"]["skipped"]
  assert checks["parity_fp32"]["max_diff"] <= checks["parity_fp32"]["bound"]

  records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  notes = [r["note"] for r in records]
  assert notes == [
    "gpu_session: side by side",
    "gpu_session: largest batch",
    "gpu_session: attention dropout 0",
    "gpu_session: remat",
    "gpu_session: XLA defaults",
    "gpu_session: lax.cond fallback",
  ]
  side = records[0]["results"]
  assert {r["framework"] for r in side} == {"jax", "torch"}
  (jax_point,) = [r for r in side if r["framework"] == "jax"]
  torch_point = next(r for r in side if r["framework"] == "torch")
  assert jax_point["ratio_jax_over_torch"] == pytest.approx(
    jax_point["tokens_per_s"] / torch_point["tokens_per_s"]
  )
  assert torch_point["autocast"] == "bfloat16" and torch_point["adamw"] in ("fused", "foreach")
  assert [r["batch"] for r in records[1]["results"]] == [2, 4]
  assert {r["remat"] for r in records[3]["results"]} == {"dots_no_batch", "full"}
  summary = (out / "summary.md").read_text()
  assert "| gpu_session: side by side | jax | none | 0.1 | 2 |" in summary
