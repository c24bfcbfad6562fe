"""Where a fine-tuning run starts: the pretrained weights (and their tokenizer).

`init` may be anything `weights.load_checkpoint` reads (a data2vec-jax model directory, a Hugging
Face directory, a fairseq `.pt`) or a pretraining workdir (train.py's `--workdir`), whose newest
intact checkpoint is exported first to `<finetune workdir>/init_model` (the student by default, as
the paper fine-tunes it; the EMA teacher with `init_ema`). The pretraining workdir is only read:
a corrupt newest checkpoint is reported in one line and the previous one is used (nothing is
moved or created there, unlike a resumed pretraining run, which sets it aside).

The tokenizer must be the pretrained model's own. With `tokenizer.kind='auto'` it is found next to
`init` (`weights.model_tokenizer.find_tokenizer`): the tokenizer a model directory carries, a
Hugging Face directory's tokenizer files, a pretraining workdir's data config (its sentencepiece
model, or its BPE files), or tokenizer files in the model directory or its parent (`*.model`
sentencepiece, or `vocab.json` + `merges.txt` [+ `dict.txt`]). Anything else is an error that
says which settings to give.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from typing import Any, Mapping

import jax

from data2vec_jax.data.tokenizer import Tokenizer, load_tokenizer
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.runtime.checkpoint import CorruptCheckpointError, ignore_failed_reads_of
from data2vec_jax.train.export import export_from_checkpoint
from data2vec_jax.train.recipe import RECIPE_FILE
from data2vec_jax.train.workdir_tokenizer import workdir_tokenizer_files
from data2vec_jax.weights import model_tokenizer
from data2vec_jax.weights.pretrained import load_checkpoint
from data2vec_jax.weights.torch_io import CheckpointError

TOKENIZER_KINDS = ("auto", "sentencepiece", "bpe", "none")


@dataclasses.dataclass
class StartingPoint:
  """config: the pretrained encoder's config. encoder_params: numpy tree (None: from scratch).
  heads: the checkpoint's heads (e.g. an HF fine-tuned 'classifier'). source: what was read."""

  config: EncoderConfig
  encoder_params: Any | None
  heads: dict[str, Any]
  metadata: dict[str, Any]
  source: str
  model_path: str  # the model directory / file actually loaded


def is_pretraining_workdir(path: str) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, RECIPE_FILE))


def load_starting_point(
  init: str,
  workdir: str,
  *,
  use_ema: bool = False,
  from_scratch: bool = False,
  drop_token_type_rows: bool = False,
) -> StartingPoint:
  """Reads `init` (see the module docstring). Raises CheckpointError with what to fix.

  `drop_token_type_rows`: an HF model whose token_type_embeddings has non-zero rows >= 1 is
  refused unless this is set (the encoder feeds token type 0 only; `weights.hf`)."""
  if not init:
    raise CheckpointError(
      "config.init is empty: give the pretrained model (a data2vec-jax or Hugging Face model "
      "directory, a fairseq .pt, or a pretraining workdir); with from_scratch=True it still "
      "supplies the architecture and the tokenizer"
    )
  path = os.path.abspath(os.path.expanduser(init))
  if not os.path.exists(path):
    raise CheckpointError(f"config.init={init}: no such file or directory")
  model_path = path
  if is_pretraining_workdir(path):
    model_path = os.path.join(workdir, "init_model" + ("_ema" if use_ema else ""))
    # Exported once per run directory: a resumed run keeps the weights it started from (and
    # does not write a whole model again), even if pretraining has gone on since.
    if not os.path.isfile(os.path.join(model_path, "config.json")):
      if jax.process_index() == 0:
        step = export_pretraining_checkpoint(path, model_path, use_ema=use_ema)
        logging.info(
          "init: %s step %d (%s) exported to %s",
          path,
          step,
          "EMA teacher" if use_ema else "student",
          model_path,
        )
      sync_processes("data2vec_jax: init exported")
    use_ema = False  # the exported directory already holds the chosen weights
  try:
    loaded = load_checkpoint(model_path, use_ema=use_ema, drop_token_type_rows=drop_token_type_rows)
  except CheckpointError as e:
    if "drop_token_type_rows=True" not in str(e):
      raise
    raise CheckpointError(
      str(e).replace(
        "Pass drop_token_type_rows=True", "Set --config.init_drop_token_type_rows=True"
      )
    ) from None
  return StartingPoint(
    config=loaded.config,
    encoder_params=None if from_scratch else loaded.params,
    heads={} if from_scratch else dict(loaded.heads),
    metadata=dict(loaded.metadata),
    source=loaded.source,
    model_path=model_path,
  )


def checkpoint_steps(pretraining: str) -> list[int]:
  """The saved steps of a pretraining workdir, oldest first, read from the directory listing
  (opening the checkpoint manager would create `checkpoints/` when it is missing)."""
  directory = os.path.join(pretraining, "checkpoints")
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def export_pretraining_checkpoint(pretraining: str, target: str, *, use_ema: bool = False) -> int:
  """Writes the newest intact checkpoint of `pretraining` as a model directory `target` (via
  `target.partial`, renamed when complete); returns its step.

  A corrupt step is reported in one line and the previous one is tried; the pretraining workdir
  is never written to. Raises CheckpointError when it has no checkpoint or none is intact.
  """
  steps = checkpoint_steps(pretraining)
  if not steps:
    raise CheckpointError(
      f"config.init={pretraining} is a pretraining workdir without any checkpoint (no "
      f"{os.path.join(pretraining, 'checkpoints', '<step>')}): let pretraining save one, or give "
      "a model directory"
    )
  partial = target + ".partial"
  corrupt = []
  for step in reversed(steps):
    shutil.rmtree(partial, ignore_errors=True)
    step_dir = os.path.join(pretraining, "checkpoints", str(step))
    # Should the step be corrupt, orbax's orphaned reads report it (tracebacks) while the
    # restore fails, before we know: registered first, so only the one line below is shown.
    ignore_failed_reads_of(step_dir)
    try:
      _, exported = export_from_checkpoint(pretraining, partial, step=step, use_ema=use_ema)
    except CorruptCheckpointError as e:
      corrupt.append(step)
      logging.warning(
        "init: checkpoint step %d of %s is corrupt (%s); trying the previous one",
        step,
        pretraining,
        str(e).removeprefix(step_dir + ": "),
      )
      continue
    os.replace(partial, target)
    if corrupt:
      logging.warning(
        "init: %s: step %d exported instead of the newest, corrupt step %d",
        pretraining,
        exported,
        corrupt[0],
      )
    return exported
  shutil.rmtree(partial, ignore_errors=True)
  raise CheckpointError(
    f"config.init={pretraining}: none of its checkpoints is intact (steps {corrupt} are "
    "corrupt; it was left as it is): resume pretraining there to set them aside, or give a "
    "model directory"
  )


def sync_processes(name: str) -> None:
  """Every process waits here until all arrive (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def resolve_tokenizer(settings: Mapping[str, Any], init: str) -> Tokenizer | None:
  """The pretrained model's tokenizer from `settings` (config.tokenizer) and `init`."""
  kind = settings.get("kind", "auto")
  if kind not in TOKENIZER_KINDS:
    raise ValueError(f"tokenizer.kind={kind!r}; expected one of {TOKENIZER_KINDS}")
  if kind == "none":
    return None
  files = {
    k: settings.get(k) or None
    for k in ("sentencepiece_model", "vocab_json", "merges_txt", "dict_txt")
  }
  if kind != "auto":
    return load_tokenizer(kind, **files)
  found = find_tokenizer(init)
  if found is not None:
    kind, files = found
    logging.info("tokenizer: %s %s", kind, {k: v for k, v in files.items() if v})
    return load_tokenizer(kind, **files)
  raise ValueError(
    f"cannot tell which tokenizer {init or 'the model'} was trained with: set "
    "--config.tokenizer.kind=sentencepiece --config.tokenizer.sentencepiece_model=PATH, or "
    "--config.tokenizer.kind=bpe with vocab_json, merges_txt (and dict_txt for GPT-2 ids)"
  )


def find_tokenizer(init: str) -> tuple[str, dict[str, str | None]] | None:
  """(kind, files) of the tokenizer found next to `init` (module docstring), or None.

  In `init`'s directory and the one above, in order: a model directory's own tokenizer section,
  a pretraining workdir's data config, Hugging Face or loose tokenizer files.
  """
  for directory in model_tokenizer.search_directories(init, search_parent=True):
    found = (
      model_tokenizer.section_tokenizer_files(directory)
      or workdir_tokenizer_files(directory)
      or model_tokenizer.loose_tokenizer_files(directory)
    )
    if found is not None:
      return found
  return None


def check_tokenizer_fits(tokenizer: Tokenizer | None, config: EncoderConfig) -> None:
  """The tokenizer's ids must be the model's: same vocabulary size and pad id."""
  if tokenizer is not None:
    model_tokenizer.check_tokenizer_fits(tokenizer, config)
