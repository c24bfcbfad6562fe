"""One fine-tuning run: `finetune_and_evaluate(config, workdir)` (launched by finetune.py).

config -> RunSettings (resolved once: finetune/settings.py) -> pretrained weights + tokenizer ->
labelled splits -> sharded state -> jitted update -> dev evaluations (records:
finetune/evaluation.py) -> checkpoints, results.json, model directory. The loop's bookkeeping
(log windows, throughput, ETA, what is due at an update, preemption) is pretraining's
(runtime/progress.py).

Everything a resumed run needs is in the orbax checkpoint (parameters, AdamW state, update count,
dropout key); the batch order is a function of (seed, epoch) and the evaluations so far are read
back from metrics.jsonl, so re-running the same command after a kill continues where the newest
checkpoint left off and reaches the same dev scores as an uninterrupted run.

Outputs in the workdir: metrics.jsonl + tensorboard/ (train loss, lr, grad norm every
`log_every` updates; `dev/...` rows at each evaluation), results.json (every evaluation, the
best and the last, the reported score), checkpoints/, model/ (the reported evaluation's weights
with the classifier head and label names), hf/ (the same as a Hugging Face
Data2VecTextForSequenceClassification directory, with `train.export_hf`) and config.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from data2vec_jax.atomic_files import read_json, write_json_atomically
from data2vec_jax.data.tokenizer import Tokenizer
from data2vec_jax.finetune import batches as batches_lib
from data2vec_jax.finetune import data as data_lib
from data2vec_jax.finetune import evaluation as evaluation_lib
from data2vec_jax.finetune import state as state_lib
from data2vec_jax.finetune import step as step_lib
from data2vec_jax.finetune import step_setup
from data2vec_jax.finetune.hf_io import checkpoint_label_names, export_finetuned_to_hf
from data2vec_jax.finetune.settings import InitSettings, LoopSettings, RunSettings, resolve_settings
from data2vec_jax.finetune.starting_point import (
  StartingPoint,
  check_tokenizer_fits,
  load_starting_point,
  resolve_tokenizer,
)
from data2vec_jax.runtime import checkpoint as checkpoint_lib
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.metrics import MetricWriter, format_progress
from data2vec_jax.runtime.preemption import PreemptionFlag
from data2vec_jax.runtime.progress import Progress, is_due, preemption_due
from data2vec_jax.speed import compile_progress
from data2vec_jax.speed.compile_progress import CompileProgress
from data2vec_jax.train.export import to_host
from data2vec_jax.weights.pretrained import save_pretrained
from data2vec_jax.weights.torch_io import CheckpointError

RESULTS_FILE = "results.json"


class FinetuneError(ValueError):
  """A fine-tuning run cannot start or go on (bad config, data, init); the message says why."""


def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) one fine-tuning run of `config.task` in `workdir`; returns results.json.

  The config is read once, into the run's `RunSettings` (and its data section by
  `data.load_task_data`); everything after reads the settings."""
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  try:
    settings = resolve_settings(config)
  except ValueError as e:
    raise FinetuneError(f"invalid config: {e}") from e
  start, tokenizer = _starting_point(settings.init, workdir)
  model_config = settings.model.encoder_config(start.config)
  try:
    task_data = data_lib.load_task_data(
      config, settings, tokenizer, model_config, workdir=workdir, log=jax.process_index() == 0
    )
  except (ValueError, FileNotFoundError, UnicodeError) as e:
    raise FinetuneError(f"data: {e}") from e
  settings = task_data.settings.with_data(len(task_data.train))
  head_params = _starting_head(settings, start)
  setup = step_setup.from_settings(settings, model_config)
  _check_batches_split(settings, setup.mesh)
  checkpointer = _checkpointer(settings.loop, workdir)
  fingerprint = task_data.fingerprint(settings)
  try:
    with sharding_lib.activate(setup.mesh):
      state, resumed_at = _restore_or_create(checkpointer, setup, fingerprint, start, head_params)
      previous = None if resumed_at is None else _already_complete(workdir, settings, resumed_at)
      if previous is not None:
        return previous
      if jax.process_index() == 0:
        write_json_atomically(
          os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort())
        )
      run = _Run(workdir, settings, task_data, setup, start, tokenizer)
      results = run.loop(state, checkpointer, fingerprint)
  finally:
    checkpointer.close()
  results["wall_time_s"] = time.time() - t_start
  if jax.process_index() == 0:
    write_json_atomically(os.path.join(workdir, RESULTS_FILE), results)
  return results


def _starting_point(init: InitSettings, workdir: str) -> tuple[StartingPoint, Tokenizer | None]:
  """The pretrained weights and their tokenizer (checked to fit the encoder's vocabulary)."""
  try:
    start = load_starting_point(
      init.path,
      workdir,
      use_ema=init.use_ema,
      from_scratch=init.from_scratch,
      drop_token_type_rows=init.drop_token_type_rows,
    )
    tokenizer = resolve_tokenizer(dict(init.tokenizer), init.path)
    check_tokenizer_fits(tokenizer, start.config)
  except (ValueError, FileNotFoundError) as e:
    raise FinetuneError(f"init: {e}") from e
  return start, tokenizer


def _check_batches_split(settings: RunSettings, mesh: Mesh) -> None:
  """Both batch sizes split evenly over the mesh's data shards."""
  shards = sharding_lib.data_parallel_size(mesh)
  for field, size in (
    ("train.batch_size", settings.batch_size),
    ("train.eval_batch_size", settings.loop.eval_batch_size),
  ):
    if size % shards:
      raise FinetuneError(
        f"{field}={size} does not split over the mesh's {shards} data shards; use a multiple "
        f"of {shards} (or fewer devices: --config.mesh.data)"
      )


def _checkpointer(loop: LoopSettings, workdir: str) -> checkpoint_lib.Checkpointer:
  """<workdir>/checkpoints: saved at every evaluation (and every `checkpoint_every` updates)."""
  return checkpoint_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    max_to_keep=loop.keep_checkpoints,
    save_interval_steps=loop.checkpoint_every or 10**12,
    async_save=True,
  )


def _restore_or_create(
  checkpointer: checkpoint_lib.Checkpointer,
  setup: step_setup.FinetuneStepSetup,
  fingerprint: str,
  start: StartingPoint,
  head_params: Any | None,
) -> tuple[state_lib.FinetuneState, int | None]:
  """(state, the update it was restored at): the newest intact checkpoint of this same run
  (same task, data, batch size, seed and lr: `fingerprint`), else a fresh state (None)."""

  def same_run(state, data_state) -> None:
    if data_state.get("fingerprint") != fingerprint:
      raise checkpoint_lib.CheckpointMismatchError(
        f"{checkpointer.directory}: its checkpoints belong to another task, data, batch "
        f"size or seed ({data_state.get('fingerprint')} vs {fingerprint} now): use the "
        "same config, or fine-tune in a new --workdir"
      )

  restored = checkpointer.restore_newest_intact(setup.abstract_state, validate=same_run)
  if restored is not None:
    step, state, _ = restored
    logging.info("resumed from %s at update %d", checkpointer.directory, step)
    return state, step
  state = state_lib.create_state(
    setup.model,
    setup.tx,
    setup.mesh,
    setup.shardings,
    encoder_params=start.encoder_params,
    head_params=head_params,
    seed=setup.settings.seed,
    head_init=setup.settings.model.head_init,
  )
  return state, None


def _already_complete(workdir: str, settings: RunSettings, step: int) -> dict[str, Any] | None:
  """The workdir's results.json when a run restored at `step` has nothing left to do."""
  previous = completed_results(workdir)
  if step < settings.total_updates or previous is None or settings.init.eval_only:
    return None
  if jax.process_index() == 0:
    logging.info(
      "%s: already complete at update %d/%d, nothing to do (results.json kept: dev "
      "score %.2f); a longer run (optimizer.max_epochs / max_update) needs a new "
      "--workdir",
      workdir,
      step,
      settings.total_updates,
      100 * (previous.get("score") or float("nan")),
    )
  return previous


def _starting_head(settings: RunSettings, start: StartingPoint) -> Any | None:
  """The checkpoint's own classifier with `init_classifier` / `eval_only`, else None (fresh).

  Its output rows are put in the task's label order by name: the checkpoint's label names
  (a data2vec-jax directory's `label_names`, an HF directory's `id2label`) are matched with the
  task's (case-insensitively); names that cannot be matched are refused. A checkpoint without
  names (HF's `LABEL_0`..) is taken in row order, with a warning."""
  init = settings.init.path
  if not (settings.init.classifier or settings.init.eval_only):
    return None
  head = start.heads.get("classifier")
  if head is None:
    raise FinetuneError(
      f"init: {init} has no classifier head (heads: {sorted(start.heads) or 'none'}); "
      "set init_classifier=False (and eval_only=False) to train a fresh one"
    )
  outputs = int(np.shape(head["out_proj"]["bias"])[0])
  if outputs != settings.num_labels:
    raise FinetuneError(
      f"init: the classifier of {init} has {outputs} outputs but {settings.task} has "
      f"{settings.num_labels} labels"
    )
  if outputs == 1 or settings.label_names is None:
    return head  # regression: one output, no names
  try:
    names = checkpoint_label_names(start.metadata, outputs, init)
  except CheckpointError as e:
    raise FinetuneError(f"init: {e}") from None
  task_names = list(settings.label_names)
  if names is None:
    logging.warning(
      "init: the classifier of %s names no labels (HF's LABEL_0..); its rows are taken as "
      "%s's labels in order: %s",
      init,
      settings.task,
      task_names,
    )
    return head
  order = _label_order(names, task_names, init, settings.task)
  out = {k: np.asarray(v)[..., order] for k, v in head["out_proj"].items()}
  return {**head, "out_proj": out}


def _label_order(names: list[str], task_names: list[str], init: str, task: str) -> np.ndarray:
  """The checkpoint's row of each of the task's labels, matched by name (case-insensitively)."""
  rows = {n.strip().lower(): i for i, n in enumerate(names)}
  unmatched = [n for n in task_names if n.strip().lower() not in rows]
  if unmatched or len(rows) != len(names):
    raise FinetuneError(
      f"init: the classifier of {init} predicts the labels {names} but {task} "
      f"has {task_names} ({unmatched or 'names differing only in case'} not among them), so "
      "its outputs cannot be matched to the task's labels: give data.label_names in the "
      "checkpoint's names, or set init_classifier=False (and eval_only=False) to train a "
      "fresh classifier"
    )
  order = np.asarray([rows[n.strip().lower()] for n in task_names])
  if (order != np.arange(len(names))).any():
    logging.info(
      "init: the classifier's rows %s reordered to %s's label order %s",
      names,
      task,
      task_names,
    )
  return order


def completed_results(workdir: str) -> dict[str, Any] | None:
  """The run directory's results.json when it records a completed run, else None."""
  results = read_json(os.path.join(workdir, RESULTS_FILE))
  return results if results and results.get("stop_reason") == "completed" else None


class _Run:
  """The update loop with its evaluations and exports (one object so the pieces share the run's
  settings, data and compiled programs)."""

  def __init__(
    self,
    workdir: str,
    settings: RunSettings,
    task_data: data_lib.TaskData,
    setup: step_setup.FinetuneStepSetup,
    start: StartingPoint,
    tokenizer: Tokenizer | None,
  ):
    self.workdir, self.settings, self.data = workdir, settings, task_data
    self.model, self.start = setup.model, start
    self.tokenizer = tokenizer  # model/ and hf/ carry it, so the exports can be used on text
    self.is_chief = jax.process_index() == 0
    pad, max_len = self.model.config.pad_id, self.model.config.max_sequence_length
    self.train_batches = batches_lib.TrainBatches(
      task_data.train, settings.batch_size, settings.seed, pad_id=pad, max_length=max_len
    )
    self.eval_sets = {
      name: batches_lib.eval_batches(
        split, settings.loop.eval_batch_size, pad_id=pad, max_length=max_len
      )
      for name, split in task_data.evals.items()
    }
    self.step_fn = setup.make_step()
    self.logits_fn = step_lib.make_eval_step(setup.model, setup.mesh, setup.shardings.params)
    self.batch_sharding = sharding_lib.batch_sharding(setup.mesh)
    self.compiled: set[tuple[str, tuple[int, ...]]] = set()  # (program, batch shape) compiled

  def compiling(self, program: str, shape: tuple[int, ...]):
    """Progress lines while `program` compiles for a batch `shape` it has not run before (each
    length bucket compiles once; nothing when that takes under compile_progress.QUIET_S); a
    no-op otherwise."""
    if (program, shape) in self.compiled or not self.is_chief:
      return contextlib.nullcontext()
    self.compiled.add((program, shape))
    shape_name = " x ".join(str(n) for n in shape)
    return CompileProgress(program, [shape_name], quiet_s=compile_progress.QUIET_S)

  # -- evaluation -------------------------------------------------------------------------------

  def evaluate(self, params) -> dict[str, Any]:
    """Scores every dev split: {'splits': {name: metrics}, 'score': the first split's score}."""
    out: dict[str, Any] = {"splits": {}}
    for name, batch_list in self.eval_sets.items():
      outputs, labels = [], []
      for batch in batch_list:
        ids = self._to_global(batch["input_ids"])
        with self.compiling("the dev evaluation", ids.shape):
          logits = self.logits_fn(params, ids)
        logits = np.asarray(to_host(logits))
        keep = batch["weights"] > 0
        outputs.append(logits[keep])
        labels.append(batch["labels"][keep])
      logits, labels = np.concatenate(outputs), np.concatenate(labels)
      out["splits"][name] = evaluation_lib.split_scores(self.settings, logits, labels)
    first = next(iter(out["splits"].values()))
    out["score"] = first["score"]
    out["selection"] = first[self.settings.select_by]
    return out

  def _to_global(self, array: np.ndarray) -> jax.Array:
    # Every process holds the whole eval batch; each contributes its slice of the rows.
    n = jax.process_count()
    rows = array.shape[0] // n
    local = array[jax.process_index() * rows : (jax.process_index() + 1) * rows]
    return jax.make_array_from_process_local_data(self.batch_sharding, local)

  # -- the loop ---------------------------------------------------------------------------------

  def loop(self, state, checkpointer: checkpoint_lib.Checkpointer, fingerprint: str) -> dict:
    """Trains to the last update (with eval_only: scores the init), evaluating, exporting and
    checkpointing on the way; a preemption notice saves and stops. Returns the results."""
    loop_settings, spe = self.settings.loop, self.train_batches.steps_per_epoch
    step = int(jax.device_get(state.step))
    total = self.settings.total_updates
    writer = MetricWriter(
      self.workdir, enabled=self.is_chief, tensorboard=loop_settings.tensorboard, resume_step=step
    )
    evaluations = [evaluation_lib.from_row(r) for r in writer.history if "dev/score" in r]
    if self.settings.init.eval_only:
      evaluations = [evaluation_lib.record(step, step / spe, self.evaluate(state.params))]
      total = step
    self._log_start(step, total)
    progress = Progress(first_step=step, total_steps=total)
    window: list[dict[str, jax.Array]] = []
    stop_reason = "completed"
    try:
      with PreemptionFlag() as preempted:
        while step < total:
          state, metrics = self._update(state, step)
          step += 1
          window.append(metrics)
          if is_due(step, loop_settings.log_every, total) or progress.is_first_step(step):
            self._log(step, jax.device_get(window), progress, writer)
            window = []
          at_eval = is_due(step, loop_settings.eval_every or spe, total)
          if at_eval:
            self._evaluate(state.params, step, evaluations, writer)
          stopping = preemption_due(step, preempted.event.is_set(), checkpointer)
          if at_eval or stopping or checkpointer.should_save(step):
            checkpointer.save(step, state, {"fingerprint": fingerprint, "step": step}, force=True)
          if stopping:
            stop_reason = "preempted"
            logging.warning("preemption notice: saved update %d, exiting", step)
            break
      checkpointer.wait_until_finished()
    finally:
      writer.close()
    if self.settings.init.eval_only and loop_settings.export_model:
      self.export(state.params, evaluations[-1])
    return self.results(evaluations, step, total, stop_reason, progress.steps_per_s())

  def _update(self, state, step: int):
    """The update on the batch of `step` (0-based): (new state, its metrics on device)."""
    host = self.train_batches.batch(step)
    host.pop("rows")
    batch = {k: self._to_global(v) for k, v in host.items()}
    with self.compiling("the fine-tuning update", batch["input_ids"].shape):
      return self.step_fn(state, batch)

  def _log_start(self, step: int, total: int) -> None:
    """The run's opening line: the task, the starting weights and the schedule."""
    if not self.is_chief or step >= total:
      return
    settings = self.settings
    logging.info(
      "%s from %s: %d train examples, %d updates (%d per epoch, batch %d, lr %.2e, warmup "
      "%d, decay to 0 at %d), seed %d",
      settings.task,
      f"scratch (random weights; the architecture and tokenizer of {self.start.model_path})"
      if settings.init.from_scratch
      else f"the weights of {self.start.model_path}",
      len(self.data.train),
      total,
      self.train_batches.steps_per_epoch,
      settings.batch_size,
      settings.lr,
      settings.warmup_updates,
      settings.max_update,
      settings.seed,
    )

  def _log(self, step: int, values: list[dict], progress: Progress, writer: MetricWriter) -> None:
    """The train/ row and progress line of a log window (`values`: its updates' metrics on the
    host): their means, the epoch and, but for the run's first window, updates per second.

    The next window starts at once, so the rate and ETA count the evaluations' time too."""
    spe = self.train_batches.steps_per_epoch
    mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    mean["epoch"] = step / spe
    window = progress.end_window(step, steps=len(values))
    progress.restart_window()
    if window.timed:
      mean["steps_per_s"] = progress.per_second(len(values), window.elapsed_s)
    if not np.isfinite(mean["loss"]):
      raise FinetuneError(
        f"update {step}: the loss is {mean['loss']}; lower optimizer.lr "
        f"({self.settings.lr:g}) or use dtype float32"
      )
    writer.write(step, {f"train/{k}": v for k, v in mean.items()})
    if self.is_chief:
      line = format_progress(step, progress.total_steps, mean, progress.eta_s(step))
      logging.info(line + f" | epoch {step / spe:.2f}")

  def _evaluate(self, params, step: int, evaluations: list[dict], writer: MetricWriter) -> None:
    """The dev evaluation at `step`: appended to `evaluations`, written, logged, and exported
    when it is the one to report (the best so far, or the last)."""
    spe = self.train_batches.steps_per_epoch
    result = self.evaluate(params)
    evaluation = evaluation_lib.record(step, step / spe, result)
    improved = (
      not evaluations or evaluation["selection"] > evaluation_lib.best(evaluations)["selection"]
    )
    evaluations.append(evaluation)
    writer.write(step, evaluation_lib.to_row(evaluation))
    if self.is_chief:
      logging.info(
        "dev at update %d (epoch %.2f): %s%s",
        step,
        step / spe,
        evaluation_lib.describe(result),
        " (best so far)" if improved else "",
      )
    report, is_last = self.settings.report, step == self.settings.total_updates
    if self.settings.loop.export_model and (
      (report == "best" and improved) or (report == "last" and is_last)
    ):
      self.export(params, evaluation)

  def export(self, params, evaluation: dict[str, Any]) -> None:
    """<workdir>/model: a data2vec-jax model dir with the classifier head (replaced atomically:
    a kill during the write leaves the previous export)."""
    params = to_host(params)
    if not self.is_chief:
      return
    target = os.path.join(self.workdir, "model")
    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_pretrained(
      partial,
      self.model.config,
      params["encoder"],
      head_params={"classifier": params["classifier"]},
      metadata={
        "task": self.settings.task,
        "label_names": None
        if self.settings.label_names is None
        else list(self.settings.label_names),
        "regression_scale": self.settings.regression_scale,
        "update": evaluation["update"],
        "dev": evaluation["splits"],
        "init": self.settings.init.path,
        "init_source": self.start.source,
        "classifier_dropout": self.settings.model.classifier_dropout,
      },
      tokenizer=self.tokenizer,
    )
    old = target + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(target):
      os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)
    if self.settings.loop.export_hf:
      hf_dir = os.path.join(self.workdir, "hf")
      shutil.rmtree(hf_dir, ignore_errors=True)
      export_finetuned_to_hf(target, hf_dir)

  def results(
    self, evaluations: list[dict], step: int, total: int, stop_reason: str, steps_per_s
  ) -> dict[str, Any]:
    """results.json: the run's settings, every evaluation, the best, the last and the reported
    one (`report`), the data's counts and the majority-class floor."""
    settings = self.settings
    best, last = evaluation_lib.best(evaluations), (evaluations[-1] if evaluations else None)
    reported = best if settings.report == "best" else last
    return {
      "task": settings.task,
      "lr": settings.lr,
      "seed": settings.seed,
      "init": settings.init.path,
      "from_scratch": settings.init.from_scratch,
      "batch_size": settings.batch_size,
      "updates": step,
      "total_updates": total,
      "stop_reason": stop_reason,
      "report": settings.report,
      "select_by": settings.select_by,
      "score": None if reported is None else reported["score"],
      "reported": reported,
      "best": best,
      "last": last,
      "evaluations": evaluations,
      "data": self.data.summary(),
      "majority_class": evaluation_lib.majority_class(settings, self.data),
      "steps_per_s": steps_per_s,
    }
