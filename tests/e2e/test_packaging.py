"""pyproject.toml alone declares a working package.

1. Every third-party import of the package, the entry scripts and the configs is declared: a
   module-level import by a core dependency, a lazy one (inside a function) by the core or an
   extra (static, fast).
2. A fresh virtual environment holding only the built wheel and the closure of its *declared*
   core dependencies (each dependency's own declared dependencies, recursively; nothing from
   requirements.txt) imports every module of the package, trains a sentencepiece vocabulary and
   runs one train step; `pip check` finds every requirement satisfied and the extras' packages
   (torch, transformers, tensorflow_datasets, pytest) are absent, so an undeclared import fails.
   Its console scripts then run the demo's pretraining (on the demo's corpus binarized by
   d2v-prepare: its tokenizer reaches the model directory with no flag) and fine-tuning (tiny,
   a few steps) with the packaged configs from a directory with no checkout, then d2v-embed;
   `--help` exits 0, and the sweep's `--list` lines name this environment's interpreter.
3. requirements.txt pins exactly pyproject's core dependencies, requirements-dev.txt its extras.

Offline by construction: the closure's distributions are the ones `make` installed in this
project's .venv (requirements.txt's pins, which must lie inside pyproject's ranges), linked file
by file (their RECORD) into the fresh environment instead of being downloaded.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.paths import REPO as REPO_DIR

REPO = pathlib.Path(REPO_DIR)
FIRST_PARTY = {"data2vec_jax", "configs", "bench", "common", "tests"}
# What the package and its entry points import: the wheel's modules, and the scripts and configs
# that the README runs from a checkout.
SCANNED = ["data2vec_jax", "configs", "train.py", "finetune.py", "convert_torch_weights.py"]
EXTRA_ONLY = ("torch", "transformers", "tensorflow_datasets", "pytest")


def _project() -> dict:
  with open(REPO / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]


def _names(requirements: list[str]) -> set[str]:
  return {canonicalize_name(Requirement(r).name) for r in requirements}


def _imports(path: pathlib.Path) -> list[tuple[str, bool, int]]:
  """(top-level module, imported at module level, line) of every absolute import in `path`."""
  tree = ast.parse(path.read_text(), str(path))
  module_level = {id(n) for n in tree.body}
  # try/except ImportError at module level still runs at import time: count it as module level.
  for node in tree.body:
    if isinstance(node, ast.Try):
      module_level |= {id(n) for n in ast.walk(node)}
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      mods = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      mods = [node.module]
    else:
      continue
    out += [(m.split(".")[0], id(node) in module_level, node.lineno) for m in mods]
  return out


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
  return metadata.packages_distributions()


def _distribution_of(module: str) -> set[str]:
  return {canonicalize_name(d) for d in _packages_distributions().get(module, [])}


def test_every_third_party_import_is_declared():
  project = _project()
  core = _names(project["dependencies"])
  extras = {
    name: _names(reqs) - {canonicalize_name(project["name"])}
    for name, reqs in project["optional-dependencies"].items()
  }
  anywhere = core.union(*extras.values())
  problems = []
  files = [
    p for s in SCANNED for p in ([REPO / s] if s.endswith(".py") else (REPO / s).rglob("*.py"))
  ]
  assert len(files) > 50, files
  for path in files:
    for module, at_import, line in _imports(path):
      if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
        continue
      dists = _distribution_of(module)
      where = f"{path.relative_to(REPO)}:{line}: {module}"
      if not dists:
        problems.append(f"{where} is provided by no installed distribution")
      elif at_import and not dists & core:
        problems.append(
          f"{where} ({sorted(dists)}) is imported at module level but not a core dependency"
        )
      elif not dists & anywhere:
        problems.append(f"{where} ({sorted(dists)}) is in no dependency or extra of pyproject.toml")
  assert not problems, "\n".join(problems)


def test_extras_name_the_optional_parts():
  """The README's optional parts each have an extra, and dev pulls the others in."""
  extras = _project()["optional-dependencies"]
  assert {"torch", "transformers"} <= _names(extras["parity"])
  assert {"tensorflow-datasets", "array-record"} <= _names(extras["tfds"])
  assert "data2vec-jax[tfds,parity]" in extras["dev"]
  assert "pytest" in _names(extras["dev"])


def test_requirements_pins_lie_inside_the_declared_ranges():
  """requirements*.txt (what `make` installs and the README's commands were tested with) must
  satisfy pyproject's ranges: a lower bound above a tested pin would be a version never run."""
  declared = {
    canonicalize_name(r.name): r
    for r in [Requirement(x) for x in _project()["dependencies"]]
    + [Requirement(x) for v in _project()["optional-dependencies"].values() for x in v]
    if canonicalize_name(r.name) != "data2vec-jax"
  }
  pins = {}
  for name in ("requirements.txt", "requirements-dev.txt"):
    for line in (REPO / name).read_text().splitlines():
      line = line.split("#")[0].strip()
      if line and not line.startswith("-r"):
        req = Requirement(line)
        pins[canonicalize_name(req.name)] = next(iter(req.specifier)).version
  missing = sorted(set(declared) - set(pins))
  assert not missing, f"declared in pyproject.toml but not pinned in requirements*.txt: {missing}"
  outside = {
    n: (pins[n], str(r.specifier)) for n, r in declared.items() if pins[n] not in r.specifier
  }
  assert not outside, outside


def _pinned_names(name: str) -> set[str]:
  names = set()
  for line in (REPO / name).read_text().splitlines():
    line = line.split("#")[0].strip()
    if line and not line.startswith("-r"):
      names.add(canonicalize_name(Requirement(line).name))
  return names


def test_requirements_files_agree_with_pyproject():
  """requirements.txt is the core (pyproject's dependencies, no more: an extra pinned there would
  be a dependency `pip install .` does not install), requirements-dev.txt the extras."""
  project = _project()
  core = _names(project["dependencies"])
  extras = set().union(*(_names(v) for v in project["optional-dependencies"].values()))
  extras -= {canonicalize_name(project["name"])}
  core_pins, dev_pins = _pinned_names("requirements.txt"), _pinned_names("requirements-dev.txt")
  assert core_pins == core, (
    f"requirements.txt but not pyproject's dependencies: {sorted(core_pins - core)}; "
    f"pyproject's dependencies not in requirements.txt: {sorted(core - core_pins)}"
  )
  assert dev_pins <= extras - core, (
    f"requirements-dev.txt pins {sorted(dev_pins - (extras - core))}, in no extra (or core)"
  )
  assert extras - core <= dev_pins, f"extras not pinned: {sorted(extras - core - dev_pins)}"


def test_console_scripts_name_importable_functions():
  """Every [project.scripts] entry names a function of the package (the wheel's commands)."""
  import importlib

  scripts = _project()["scripts"]
  assert {"d2v-train", "d2v-finetune", "d2v-sweep", "d2v-convert", "d2v-embed"} <= set(scripts)
  for name, target in scripts.items():
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function)), name


# ------------------------------------------------------------------------------------------------
# The fresh environment


def _build_wheel(tmp: pathlib.Path) -> pathlib.Path:
  """Builds the wheel from a copy of what pyproject packages (the shared work tree stays
  untouched: setuptools writes build/ and *.egg-info next to the sources)."""
  src = tmp / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  shutil.copytree(
    REPO / "data2vec_jax", src / "data2vec_jax", ignore=shutil.ignore_patterns("__pycache__")
  )
  subprocess.run(
    [
      sys.executable,
      *("-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"),
      *("-w", str(tmp / "dist"), str(src)),
    ],
    check=True,
    timeout=300,
  )
  (wheel,) = (tmp / "dist").glob("data2vec_jax-*.whl")
  return wheel


def _core_requirements(wheel: pathlib.Path) -> list[Requirement]:
  with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
    text = z.read(name).decode()
  reqs = [
    Requirement(line.split(":", 1)[1])
    for line in text.splitlines()
    if line.startswith("Requires-Dist:")
  ]
  env = default_environment() | {"extra": ""}
  return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def _closure(roots: list[Requirement]) -> dict[str, metadata.Distribution]:
  """The installed distributions that `roots` need, recursively by their own metadata; each
  installed version must satisfy the specifier that asked for it."""
  found: dict[str, metadata.Distribution] = {}
  todo = [(r, "pyproject.toml") for r in roots]
  while todo:
    req, by = todo.pop()
    env = default_environment() | {"extra": ""}
    if req.marker is not None and not req.marker.evaluate(env):
      continue
    try:
      dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
      pytest.fail(f"{req} (needed by {by}) is not installed in {sys.prefix}; run `make`")
    assert req.specifier.contains(dist.version, prereleases=True), (
      f"{by} needs {req}, but the tested environment has {dist.version}"
    )
    key = canonicalize_name(dist.metadata["Name"])
    if key in found:
      continue
    found[key] = dist
    todo += [(Requirement(r), key) for r in dist.requires or []]
  return found


def _link_distribution(dist: metadata.Distribution, site: pathlib.Path) -> int:
  """Links every file of `dist` that lives in site-packages (its RECORD) into `site`."""
  n = 0
  for f in dist.files or []:
    if f.parts[0] == ".." or f.name == "RECORD":
      continue  # console scripts live outside site-packages; nothing here runs them
    source = pathlib.Path(dist.locate_file(f))
    if not source.is_file():
      continue
    target = site / f
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
      target.symlink_to(source)
      n += 1
  return n


SMOKE = textwrap.dedent(
  """
  import importlib, importlib.util, os, pkgutil, sys
  import data2vec_jax
  assert data2vec_jax.__file__.startswith(sys.prefix), data2vec_jax.__file__
  for name in {extra_only!r}:
    assert importlib.util.find_spec(name) is None, f"{{name}} leaked into the fresh environment"
  modules = [m.name for m in pkgutil.walk_packages(data2vec_jax.__path__, "data2vec_jax.")]
  for name in modules:
    importlib.import_module(name)
  print("imported", len(modules), "modules")

  from data2vec_jax.data.tokenizer import train_sentencepiece
  words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jumbo vats"
  tok = train_sentencepiece([words] * 50, "vocab.model", vocab_size=36, model_type="bpe")
  assert tok.vocab.vocab_size == 36 and len(tok.encode(words)) > 0

  import jax, numpy as np
  from data2vec_jax.model.config import tiny_config
  from data2vec_jax.objective.ema import EMAConfig
  from data2vec_jax.objective.execution import ExecutionPlan
  from data2vec_jax.objective.loss import ObjectiveConfig
  from data2vec_jax.runtime import sharding
  from data2vec_jax.train import state, step
  from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer

  recipe = state.Recipe(
    model=tiny_config(),
    objective=ObjectiveConfig(average_top_k_layers=2, mask_id=999),
    ema=EMAConfig(),
    optimizer=OptimizerConfig(lr=1e-3, warmup_steps=1, max_steps=10),
  )
  rng = np.random.default_rng(0)
  target = rng.integers(4, 999, (2, 16)).astype(np.int32)
  target[:, 0], target[:, -1] = 0, 2
  selected = np.zeros((2, 16), bool)
  selected[:, 3:7] = True
  batch = dict(source=np.where(selected, 999, target).astype(np.int32), target=target, selected=selected)
  plan = ExecutionPlan.for_objective(recipe.objective, 16)
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  tx = make_optimizer(recipe.optimizer)
  with sharding.activate(mesh):
    st, fn = step.new_state_and_step(recipe, plan, tx, mesh, jax.random.PRNGKey(0))
    batch = {{k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}}
    st, metrics = fn(st, batch, None)
  loss = float(metrics["loss"])
  assert np.isfinite(loss) and loss > 0, loss
  print("SMOKE_OK", jax.__version__, loss)
  """
).format(extra_only=EXTRA_ONLY)


def test_fresh_environment_from_pyproject_alone(tmp_path):
  wheel = _build_wheel(tmp_path)
  with zipfile.ZipFile(wheel) as z:
    packaged = {n for n in z.namelist() if n.startswith("data2vec_jax/")}
  sources = {
    p.relative_to(REPO).as_posix()
    for p in (REPO / "data2vec_jax").rglob("*")
    if p.is_file() and "__pycache__" not in p.parts
  }
  assert not sources - packaged, f"files the wheel leaves out: {sorted(sources - packaged)}"

  dists = _closure(_core_requirements(wheel))
  assert {"jax", "flax", "optax", "orbax-checkpoint", "ml-collections"} <= set(dists)
  assert not {canonicalize_name(n) for n in EXTRA_ONLY} & set(dists), sorted(dists)

  venv = tmp_path / "venv"
  # The base interpreter, not .venv's: nothing of .venv is visible but what is linked below.
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  site = pathlib.Path(
    subprocess.run(
      [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True,
      capture_output=True,
      text=True,
    ).stdout.strip()
  )
  assert sum(_link_distribution(d, site) for d in dists.values()) > 100
  pip = [sys.executable, "-m", "pip", "--python", str(python)]
  subprocess.run(
    [*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300
  )
  check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=120)
  assert check.returncode == 0, check.stdout + check.stderr

  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA_", "JAX_"))}
  env["JAX_PLATFORMS"] = "cpu"
  run = subprocess.run(
    [python, "-c", SMOKE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
  )
  assert run.returncode == 0 and "SMOKE_OK" in run.stdout, run.stdout + run.stderr[-4000:]
  _run_the_demo_with_the_installed_commands(venv, tmp_path, env)


# The demo's model and run, shrunk to a few seconds of compute.
TINY_PRETRAIN = [
  "--config.model.num_layers=2",
  "--config.model.hidden_size=32",
  "--config.model.num_heads=2",
  "--config.model.intermediate_size=64",
  "--config.objective.average_top_k_layers=2",
  "--config.data.global_batch_size=8",
  "--config.data.tokens_per_sample=64",
  "--config.train.plot=False",
  "--config.execution.pack_buckets=4",
]
TINY_FINETUNE = [
  "--config.grid.seeds=(1,)",
  "--config.grid.from_scratch=(False,)",
  "--config.optimizer.max_epochs=1",
  # A 512-piece vocabulary (the demo's own is larger) makes a few dev sentences over 128 tokens.
  "--config.data.train_too_long=truncate",
  "--config.data.eval_too_long=truncate",
]


def _run_the_demo_with_the_installed_commands(venv: pathlib.Path, tmp: pathlib.Path, env: dict):
  """`make demo` with the wheel's console scripts and packaged configs, from a directory that is
  not a checkout (no configs/ or train.py beside it): prepare -> train -> fine-tune -> embed,
  with no tokenizer flag anywhere."""
  work = tmp / "elsewhere"
  work.mkdir()
  bin_dir = venv / "bin"

  def command(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(
      [bin_dir / name, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{name} {args}: " + out.stdout[-2000:] + out.stderr[-4000:]
    return out

  shown = command("d2v-train", "--help", timeout=120).stdout
  assert "--workdir" in shown and "train.num_steps = 1000000" in shown, shown[-2000:]
  shown = command("d2v-finetune", "--config", "finetune_demo", "--help", timeout=120).stdout
  assert "init = 'demo_out'" in shown and "finetune_demo.py" in shown, shown[-2000:]
  listed = command(
    "d2v-sweep", "--config", "sweeps/demo_top_k", "--workdir", "sweep", "--list", timeout=120
  )
  for line in listed.stdout.strip().splitlines():
    python = venv / "bin" / "python"
    assert line.startswith(f"cd {work} && {python} -m data2vec_jax.commands.sweep"), line
    assert f"--workdir={work / 'sweep'}" in line and "site-packages" in line, line

  # The demo's corpus (the Python reference manual) through d2v-prepare: the pretraining then
  # takes the corpus's tokenizer with no tokenizer flag (issue 28: the tokenizer follows the
  # data), and its model directory carries it to d2v-embed below.
  command(
    "d2v-prepare",
    *("--source", "offline", "--max_documents", "40", "--tokenizer", "sentencepiece"),
    *("--spm_vocab_size", "512", "--output_dir", "data/bin"),
  )
  trained = command(
    "d2v-train",
    *("--config", "demo:steps=2", "--workdir", "demo_out", *TINY_PRETRAIN),
    *("--config.data.source=fairseq_bin", "--config.data.path=data/bin/train"),
    "--config.validation.every=0",
  )
  assert "recorded with the corpus" in trained.stderr
  assert "names no tokenizer files" not in trained.stderr
  spm = (work / "data" / "bin" / "spm.model").read_bytes()
  assert (work / "demo_out" / "model" / "sentencepiece.model").read_bytes() == spm
  command("d2v-finetune", "--config", "finetune_demo", "--workdir", "demo_out/ft", *TINY_FINETUNE)
  results = json.loads((work / "demo_out" / "ft" / "results.json").read_text())  # one run
  assert results["task"] == "python_topics", results
  (work / "texts.txt").write_text("The for statement iterates.\nA list is a sequence.\n")
  command("d2v-embed", *("--model", "demo_out/model", "--input", "texts.txt", "--output", "f.npy"))
  assert (work / "f.npy").is_file()
