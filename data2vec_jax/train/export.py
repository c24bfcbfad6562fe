"""Export a model directory from any training checkpoint, on demand (training may be running).

  python -m data2vec_jax.train.export --workdir runs/base --output models/step50k [--step 50000] [--ema]

Writes a data2vec-jax model directory (student weights, or the EMA teacher with `--ema`, plus
the head, plus the tokenizer the workdir's data config names) that `data2vec_jax.load_pretrained`
reads, `python -m data2vec_jax.embed` embeds text with, and `convert_torch_weights.py --to hf`
exports to Hugging Face. The checkpoint is restored onto this host's first device.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

import jax

from data2vec_jax import cli
from data2vec_jax.data.tokenizer import Tokenizer
from data2vec_jax.objective import ema as ema_lib
from data2vec_jax.runtime import checkpoint as checkpoint_lib
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import make_optimizer
from data2vec_jax.train import state as train_state_lib
from data2vec_jax.train.recipe import RECIPE_FILE, recipe_from_dict
from data2vec_jax.train.workdir_tokenizer import workdir_tokenizer
from data2vec_jax.weights.pretrained import save_pretrained


def export_from_checkpoint(
  workdir: str, output: str, *, step: int | None = None, use_ema: bool = False
) -> tuple[str, int]:
  """Restores checkpoint `step` (default: the newest intact one) of `workdir` and writes a
  model directory.

  A corrupt newest step is skipped, saying so, for the next older one, as a resumed run does;
  it is not moved aside (training may be running in the workdir). Returns (output path, step
  exported). Raises FileNotFoundError for a missing workdir or one that is not a run's, and
  `TrainingCheckpointError` for a step that was never kept (the kept ones named), a corrupt
  requested step, no intact step, or a checkpoint of another model.
  """
  if not os.path.isdir(workdir):
    what = "is not a directory" if os.path.exists(workdir) else "does not exist"
    raise FileNotFoundError(f"--workdir {workdir} {what}: give a training run's workdir")
  recipe_path = os.path.join(workdir, RECIPE_FILE)
  if not os.path.exists(recipe_path):
    raise FileNotFoundError(f"{recipe_path} not found: is {workdir} a data2vec-jax workdir?")
  with open(recipe_path) as f:
    recipe, seq_len = recipe_from_dict(json.load(f))
  if use_ema and not recipe.uses_teacher:
    raise ValueError(f"--ema: the {recipe.objective.kind!r} objective has no EMA teacher")
  tx = make_optimizer(recipe.optimizer)
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    with sharding_lib.activate(mesh):
      abstract, _ = train_state_lib.state_shardings(recipe, tx, mesh, seq_len)
      state = _restore(checkpointer, abstract, step)
  finally:
    checkpointer.close()
  tokenizer = workdir_tokenizer(workdir)
  export_model_dir(state, recipe, output, use_ema=use_ema, tokenizer=tokenizer)
  return output, int(jax.device_get(state.step))


def _restore(checkpointer: checkpoint_lib.Checkpointer, abstract: Any, step: int | None) -> Any:
  """The state of checkpoint `step`, or of the newest intact one (`step=None`)."""
  kept = checkpointer.all_steps()
  if not kept:
    raise checkpoint_lib.TrainingCheckpointError(f"no checkpoint in {checkpointer.directory}")
  if step is not None:
    if step not in kept:
      raise checkpoint_lib.TrainingCheckpointError(
        f"no checkpoint of step {step} in {checkpointer.directory}: the kept steps are "
        f"{', '.join(map(str, kept))} (a run keeps its newest train.keep_checkpoints)"
      )
    return checkpointer.restore(step, abstract)[0]
  corrupt = []
  for candidate in reversed(kept):
    try:
      state, _ = checkpointer.restore(candidate, abstract)
    except checkpoint_lib.CorruptCheckpointError as e:
      logging.warning("checkpoint step %d is corrupt (%s); trying the next older one", candidate, e)
      corrupt.append(str(candidate))
      continue
    if corrupt:
      logging.warning(
        "exporting step %d, the newest intact checkpoint (corrupt: step %s)",
        candidate,
        ", ".join(corrupt),
      )
    return state
  raise checkpoint_lib.TrainingCheckpointError(
    f"no intact checkpoint in {checkpointer.directory} (corrupt: steps {', '.join(corrupt)})"
  )


def to_host(tree: Any) -> Any:
  """Global arrays -> numpy, whole. Several processes: a collective (all must call it), since
  a sharded array's other shards live on other hosts."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def export_model_dir(
  state: train_state_lib.TrainState,
  recipe: train_state_lib.Recipe,
  path: str,
  *,
  use_ema: bool = False,
  tokenizer: Tokenizer | None = None,
) -> str:
  """Writes a data2vec-jax model directory (student, or the EMA teacher) for `load_pretrained`,
  with `tokenizer`'s files when given (`train.workdir_tokenizer` finds a workdir's).

  On several processes every one must call it (the parameters are gathered with a collective);
  process 0 writes.
  """
  params = to_host(state.params)
  ema_params = to_host(state.ema_params) if use_ema else None
  step = int(to_host(state.step))
  if jax.process_index() != 0:
    return path
  encoder = params["encoder"]
  if use_ema:  # the teacher: EMA blocks (+ the student's embeddings when only blocks are EMA'd)
    encoder = ema_lib.teacher_params(ema_params, encoder, recipe.ema)
  # Head names shared with the converters: fairseq's regression head / the (HF) LM head /
  # data2vec 2.0's conv decoder (`model.decoder.Decoder1d`, `weights.fairseq_v2`).
  head_name = {"data2vec": "regression_head", "data2vec2": "decoder"}.get(
    recipe.objective.kind, "lm_head"
  )
  save_pretrained(
    path,
    recipe.model,
    encoder,
    head_params={head_name: params["head"]},
    metadata={
      "step": step,
      "objective": recipe.objective.kind,
      "weights": "ema" if use_ema else "student",
    },
    tokenizer=tokenizer,
  )
  return path


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--workdir", required=True, help="training workdir (has checkpoints/)")
  parser.add_argument("--output", required=True, help="model directory to write")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  parser.add_argument("--ema", action="store_true", help="export the EMA teacher's encoder")
  args = parser.parse_args(argv)
  logging.getLogger().setLevel(logging.INFO)

  def export() -> None:
    path, step = export_from_checkpoint(args.workdir, args.output, step=args.step, use_ema=args.ema)
    print(f"exported step {step} ({'EMA teacher' if args.ema else 'student'}) to {path}")

  # Every failure is one line `export: error: ...` (cli.run_reporting_errors).
  cli.run_reporting_errors(
    "export",
    export,
    (checkpoint_lib.TrainingCheckpointError, FileNotFoundError, ValueError, OSError),
    "re-run the same command",
  )


if __name__ == "__main__":
  main()
