"""The pretraining loop: `train_and_evaluate(config, workdir)`.

config -> `Run` (`run.resolve`: recipe, plan, optimizer, mesh, train settings; validated once,
before anything is written) -> data -> sharded state -> jitted step -> `_Loop` (fetch, step,
what is due at this step, write; `runtime.progress` keeps time) -> checkpoints/exports.
Only `train_and_evaluate` reads the ConfigDict; the loop reads the `Run`.
Everything the run needs to resume exactly is in the orbax checkpoint (params, EMA teacher,
optimizer state, step, RNG key, data position); restarting the same command in the same workdir
continues from the newest checkpoint.

With `validation.every` > 0 the held-out loss (`data2vec_jax/train/validation.py`) is evaluated
every that many steps and at the last step, on batches built once: it reads the state and
changes nothing, so the training trajectory is the same with it on or off, and a resumed run
evaluates to the same values as an uninterrupted one at the same step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from data2vec_jax.atomic_files import read_json, write_text_atomically
from data2vec_jax.data import training_input
from data2vec_jax.data.corpus_tokenizer import with_corpus_tokenizer
from data2vec_jax.data.pipeline import GLOBAL_ROW_TOKENS
from data2vec_jax.model import flops as flops_lib
from data2vec_jax.runtime import checkpoint as checkpoint_lib
from data2vec_jax.runtime import preemption as preemption_lib
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime import workdir_errors
from data2vec_jax.runtime.metrics import MetricWriter, format_progress
from data2vec_jax.runtime.optimizer import OptimizerConfig
from data2vec_jax.runtime.preemption import PreemptionFlag
from data2vec_jax.runtime.progress import Progress, is_due, preemption_due
from data2vec_jax.speed import compile_cache
from data2vec_jax.speed.compile_progress import CompileProgress
from data2vec_jax.train import health as health_lib
from data2vec_jax.train import precompile as precompile_lib
from data2vec_jax.train import state as train_state_lib
from data2vec_jax.train import step_setup
from data2vec_jax.train import validation as validation_lib
from data2vec_jax.train.export import export_model_dir
from data2vec_jax.train.recipe import RECIPE_FILE, recipe_to_dict
from data2vec_jax.train.run import Run, resolve
from data2vec_jax.train.workdir_tokenizer import workdir_tokenizer


class InputDataError(ValueError):
  """The configured data cannot be read or used (missing or malformed files, empty corpus)."""


def _host_batch_to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def initialize_distributed(cluster: Any) -> None:
  """`jax.distributed.initialize` with the config's explicit cluster, or JAX's auto-detection.

  `cluster`: coordinator_address ("" = detect), num_processes and process_id (-1 = detect).
  """
  cluster = dict(cluster)
  kwargs = {
    "coordinator_address": cluster.get("coordinator_address") or None,
    "num_processes": None if cluster.get("num_processes", -1) < 0 else cluster["num_processes"],
    "process_id": None if cluster.get("process_id", -1) < 0 else cluster["process_id"],
  }
  logging.info(
    "jax.distributed.initialize(%s)",
    ", ".join(f"{k}={v}" for k, v in kwargs.items() if v is not None) or "auto-detect",
  )
  jax.distributed.initialize(**kwargs)


PREEMPTION_ANNOUNCEMENT = (
  "preemption notice (SIGTERM): the run saves and exits at the next step boundary (after the "
  "compilation or step in progress); re-run the same command to resume"
)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) pretraining in `workdir`; returns a summary of the run.

  Every exit, also by an error, waits for the checkpoint being written and closes the input
  pipeline, so no half-written checkpoint is left and the error is the last thing reported.
  A SIGTERM (preemption notice) at any point, also while the data, the state or the steps are
  being prepared, is announced at once on stderr and acted on at the next step boundary: the
  newest step is saved and the run exits cleanly (summary `stop_reason` 'preempted').
  A `fairseq_bin` corpus that names no tokenizer files gets the one `data.prepare` recorded
  with it (`data.corpus_tokenizer`), so `config.json` and `model/` carry it.
  """
  config = with_corpus_tokenizer(config)  # a copy where filled: the caller's config is unchanged
  with PreemptionFlag(PREEMPTION_ANNOUNCEMENT) as preempted:
    try:
      return _train_and_evaluate(config, workdir, preempted)
    except workdir_errors.WorkdirError:
      raise
    except Exception as e:
      # A full disk or a refused write, whatever failed first or after it: one line naming it.
      problem = workdir_errors.workdir_error(e, workdir)
      if problem is None:
        raise
      workdir_errors.quiet_abandoned_writes()
      raise problem from e


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, preempted: PreemptionFlag
) -> dict[str, Any]:
  """The last place the ConfigDict is read: it is resolved into a `Run` (validated before
  anything is written to the workdir), builds the data and is kept as the workdir's
  config.json; everything after reads the `Run`."""
  t_start = time.time()
  if config.get("distributed", False):
    initialize_distributed(config.get("cluster", {}))  # before the mesh takes the devices
  run = resolve(config)  # a bad config fails before anything is written to the workdir
  workdir_errors.check_workdir(workdir)  # a file, a read-only workdir or parent: one line
  # Before anything compiles: a restart loads what an earlier run of this config compiled.
  compile_cache.enable(run.train.compilation_cache, workdir)
  data = _build_data(config, workdir)
  try:
    summary = _train(run, workdir, data, preempted, config.to_json_best_effort(indent=2))
  finally:
    if hasattr(data.iterator, "close"):
      data.iterator.close()  # stops the prefetch thread
  if summary.get("already_complete"):
    return summary  # nothing trained: the finished run's own summary.json stands
  summary["wall_time_s"] = time.time() - t_start
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def _build_data(config: ml_collections.ConfigDict, workdir: str) -> training_input.TrainingData:
  """This process's training (and held-out) data; unusable data is an `InputDataError`."""
  try:
    return training_input.build(
      config, workdir, process_index=jax.process_index(), process_count=jax.process_count()
    )
  except (ValueError, FileNotFoundError, UnicodeError) as e:
    raise InputDataError(f"data: {e}") from e


def _train(
  run: Run,
  workdir: str,
  data: training_input.TrainingData,
  preempted: PreemptionFlag,
  config_json: str,
) -> dict[str, Any]:
  """The state restored or created, then trained (`_Loop`) to `train.num_steps`; an unhealthy
  run's diverged checkpoints are set aside (`_stopped_unhealthy`). The summary."""
  run = run.with_vocabulary(data.vocab_size, data.mask_id)
  # The same builder compile_for uses: the step compiled for a topology is this one.
  setup = step_setup.build(run, data.seq_len)
  is_chief = jax.process_index() == 0
  if is_chief:
    logging.info(
      "mesh %s on %d devices (%d processes)",
      dict(run.mesh.shape),
      jax.device_count(),
      jax.process_count(),
    )
  checkpointer = checkpoint_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    max_to_keep=run.train.keep_checkpoints,
    save_interval_steps=run.train.checkpoint_every,
    async_save=run.train.async_checkpoint,
  )
  try:
    with sharding_lib.activate(run.mesh):
      state = _restore_or_create(checkpointer, setup, data, run.train.seed)
      done = int(jax.device_get(state.step))
      if done >= run.train.num_steps:
        return _already_complete(workdir, run, state, done)
      if is_chief:  # only now: a failed resume must not overwrite the run's own files
        _write_run_files(workdir, config_json, run)
      step_fn = setup.make_step()
      eval_fn = None
      if data.validation is not None:
        eval_fn = validation_lib.make_eval_step(run.recipe, run.plan, run.mesh, setup.shardings)
      return _Loop(run, workdir, data, checkpointer, preempted, state).train(step_fn, eval_fn)
  except health_lib.TrainingError as e:
    raise _stopped_unhealthy(e, checkpointer, run.recipe.optimizer) from e
  finally:
    checkpointer.close()


def _already_complete(
  workdir: str, run: Run, state: train_state_lib.TrainState, step: int
) -> dict[str, Any]:
  """A re-run of a finished run: says so and trains nothing. The run's summary.json is kept (a
  re-run must not replace its metrics with empty ones); a model directory or plot a kill left
  unwritten is written now."""
  total, is_chief = run.train.num_steps, jax.process_index() == 0
  if is_chief:
    where = f"at step {step}" if step == total else f"at step {step}, past train.num_steps={total}"
    logging.info(
      "%s: already complete %s, nothing to do; raise --config.train.num_steps to train on "
      "from this checkpoint",
      workdir,
      where,
    )
  summary_path = os.path.join(workdir, "summary.json")
  summary = read_json(summary_path) or {}
  if summary.get("final_step") != step or summary.get("stop_reason") != "completed":
    # Killed after its last checkpoint, before its summary: what the checkpoint says.
    summary = {"final_step": step, "stop_reason": "completed", "last_metrics": {}}
    if is_chief:
      with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2)
  model_dir = os.path.join(workdir, "model")
  if run.train.export_model and not os.path.isfile(os.path.join(model_dir, "config.json")):
    export_model_dir(state, run.recipe, model_dir, tokenizer=workdir_tokenizer(workdir))
    summary["model_dir"] = model_dir
  plot = os.path.join(workdir, "training_curves.png")
  metrics = os.path.join(workdir, "metrics.jsonl")
  if is_chief and run.train.plot and not os.path.exists(plot) and os.path.exists(metrics):
    from data2vec_jax.train.plots import plot_training_curves

    summary["plot"] = plot_training_curves(metrics, plot)
  return {**summary, "already_complete": True}


def _write_run_files(workdir: str, config_json: str, run: Run) -> None:
  """config.json (as given) and recipe.json (the resolved step math, read by `export`)."""
  recipe_text = json.dumps(recipe_to_dict(run.recipe, run.plan.seq_len, run.plan), indent=2)
  for name, text in (
    ("config.json", config_json),
    (RECIPE_FILE, recipe_text),
  ):
    write_text_atomically(os.path.join(workdir, name), text)


def _restore_or_create(
  checkpointer: checkpoint_lib.Checkpointer,
  setup: step_setup.StepSetup,
  data: training_input.TrainingData,
  seed: int,
) -> train_state_lib.TrainState:
  """The newest intact checkpoint's state (the pipeline positioned after it), or a new state.

  A corrupt newest step is set aside and an older one is used; a checkpoint of another model
  or of other data is an error (`CheckpointMismatchError`)."""
  current = data.iterator.get_state().get("fingerprint")

  def position_pipeline(state, data_state) -> None:
    saved = data_state.get("fingerprint")
    if isinstance(saved, str) and saved != current:
      raise checkpoint_lib.CheckpointMismatchError(
        f"{checkpointer.directory}: its checkpoints were taken on other data or another "
        f"pipeline config (data fingerprint {saved} vs {current} now): use the data and "
        f"config it was trained with, or train in a new --workdir"
      )
    try:
      data.iterator.set_state(data_state)
    except (ValueError, KeyError, TypeError) as e:
      raise checkpoint_lib.CorruptCheckpointError(
        f"step {int(jax.device_get(state.step))}: unusable data iterator state ({e})"
      ) from e

  restored = checkpointer.restore_newest_intact(setup.abstract_state, validate=position_pipeline)
  if restored is None:
    return train_state_lib.create_train_state(
      setup.recipe,
      setup.tx,
      jax.random.PRNGKey(seed),
      setup.mesh,
      data.seq_len,
      setup.shardings,
    )
  step, state, _ = restored
  logging.info("resumed from %s at step %d", checkpointer.directory, step)
  return state


def _stopped_unhealthy(
  error: health_lib.TrainingError,
  checkpointer: checkpoint_lib.Checkpointer,
  optimizer: OptimizerConfig,
) -> health_lib.TrainingError:
  """The error to report for an unhealthy run; diverged checkpoints are set aside first.

  A diverged step's metrics come from the parameters after the step before it, so every
  checkpoint from `anomaly_step - 1` on holds diverged weights: they are moved out of the way
  (kept) so that re-running resumes from the last healthy one.
  """
  checkpointer.wait_until_finished()
  moved = []
  if error.diverged:
    moved = [
      checkpointer.set_aside(s, "diverged")
      for s in checkpointer.all_steps()
      if s >= error.anomaly_step - 1
    ]
  good = checkpointer.latest_step()
  parts = [f"{error}; stopped"]
  parts.append(
    f"newest checkpoint before the anomaly: step {good}"
    if good is not None
    else "no checkpoint was written before the anomaly"
  )
  if moved:
    parts.append(f"diverged checkpoints set aside in {os.path.dirname(moved[0])}")
  if error.diverged:
    parts.append(
      "common causes: learning rate too high, too short a warmup, bf16 overflow "
      f"(optimizer.lr={optimizer.lr}, optimizer.warmup_steps={optimizer.warmup_steps})"
    )
  return health_lib.TrainingError("; ".join(parts), error.anomaly_step, diverged=error.diverged)


@dataclasses.dataclass(frozen=True)
class _Due:
  """What follows the step just run: a log row, a checkpoint, the held-out loss, a stop (a
  preemption notice: save and exit). `last`: it was the run's last step."""

  last: bool
  log: bool
  save: bool
  validate: bool
  stop: bool


class _Loop:
  """One invocation of the training loop: the state it advances and its bookkeeping.

  `train` reads like big_vision's loop: fetch a batch, run the step (`_run_step`), ask what is
  due at this step (`_due`: log / validate / checkpoint / preemption, every step's metrics
  through the health guard first), then write; `_finish` holds the summary and the export.

  Preemption (SIGTERM, `preempted`) is acted on at the step boundary after the notice: on one
  process it is read after every step, also after waiting for the step's results, so a notice
  that arrives while step k runs saves step k; several processes must stop at the same step, so
  there the flags are agreed (a collective) at the log and save steps, where the host waits
  anyway, and by orbax's preemption sync point in between. A notice before the first step
  (while compiling) saves nothing new: the checkpoint the run started from stands.
  """

  def __init__(
    self,
    run: Run,
    workdir: str,
    data: training_input.TrainingData,
    checkpointer: checkpoint_lib.Checkpointer,
    preempted: PreemptionFlag,
    state: train_state_lib.TrainState,
  ) -> None:
    self.run, self.workdir, self.data = run, workdir, data
    self.checkpointer, self.preempted, self.state = checkpointer, preempted, state
    self.is_chief = jax.process_index() == 0
    self.single_process = jax.process_count() == 1
    self.groups = sharding_lib.data_parallel_size(run.mesh)
    if run.plan.pack_tokens and self.groups % jax.process_count():
      # Each process must hold whole packing groups: then the fullest group of the pipeline's
      # row order is the fullest on the devices too, whatever order the mesh gives the processes.
      raise ValueError(
        f"token packing needs the {self.groups} data shards spread evenly over "
        f"{jax.process_count()} processes; set execution.pack_tokens=False"
      )
    self.total = run.train.num_steps
    self.step = int(jax.device_get(state.step))
    self.writer = MetricWriter(
      workdir, enabled=self.is_chief, tensorboard=run.train.tensorboard, resume_step=self.step
    )
    self.monitor = health_lib.HealthMonitor(run.train.health, history=self.writer.history)
    self.batch_sharding = sharding_lib.batch_sharding(run.mesh)
    self.peak, peak_source = flops_lib.mfu_peak(run.train.peak_flops_per_device)
    if self.is_chief:
      logging.info("MFU %s", peak_source)
    self.progress = Progress(first_step=self.step, total_steps=self.total)
    self.pending: list[dict[str, jax.Array]] = []  # this window's metrics still on the devices
    self.window: list[dict[str, float]] = []  # this window's metrics on the host, checked
    self.last_metrics: dict[str, float] = {}
    self.stop_reason = "completed"
    self.shapes_seen: dict[Any, int] = {}  # packing (None: unpacked) -> steps run with it
    self.eval_fn, self.valid_every = None, 0
    self.valid_batches: list[dict[str, jax.Array]] = []
    self.last_validation: dict[str, float] | None = None
    self.unwritten = None  # (step, metrics, progress line) of a log row waiting for validation

  def train(self, step_fn: Callable, eval_fn: Callable | None) -> dict[str, Any]:
    """Trains to `train.num_steps` (or a preemption notice); the run's summary (`_finish`).

    step_fn: the jitted step (`step_setup.StepSetup.make_step`); eval_fn:
    `validation.make_eval_step` when the data has a held-out split, evaluated every
    `validation.every` steps and at the last one."""
    try:
      first_batch, steps = self._prepare(step_fn, eval_fn)
      if not self._preempted_before_the_first_step():
        while self.step < self.total:
          host_batch, first_batch = first_batch or next(self.data.iterator), None
          self._run_step(steps, host_batch)
          due = self._due()
          if due.log:
            self._log(validating=due.validate)
          if due.save:
            # A step already saved is not saved again (a notice right after a scheduled save).
            self.checkpointer.save(
              self.step, self.state, self.data.iterator.get_state(), force=due.last or due.stop
            )
          if due.validate:
            self._validate()
          if due.stop:
            self.stop_reason = "preempted"
            logging.warning("preemption notice: saved step %d, exiting", self.step)
            break
      self.checkpointer.wait_until_finished()
    except health_lib.TrainingError as e:
      self._write_unhealthy_rows(e)
      raise
    finally:
      # Quietly after an error: a close failing because of it (TensorBoard's "handle is closed"
      # on a full disk) must not replace the error itself.
      self.writer.close(quiet=sys.exc_info()[0] is not None)
    return self._finish()

  def _prepare(
    self, step_fn: Callable, eval_fn: Callable | None
  ) -> tuple[dict[str, np.ndarray] | None, precompile_lib.CompiledSteps]:
    """The held-out batches on the devices; the first batch and the steps compiled ahead."""
    recipe, plan = self.run.recipe, self.run.plan
    if eval_fn is not None:
      self.eval_fn, self.valid_every = eval_fn, self.run.validation.every
      for host_batch in self.data.validation.batches:
        plan.check_host_batch(host_batch, config=recipe.model, objective=recipe.objective)
      # On the devices once, sharded like the training batches (each process its own rows).
      self.valid_batches = [
        _host_batch_to_global(b, self.batch_sharding) for b in self.data.validation.batches
      ]
    first_batch = next(self.data.iterator) if self.step < self.total else None
    steps = precompile_lib.CompiledSteps(step_fn, {})
    if not self.preempted.event.is_set():  # a notice already: no point compiling ahead
      steps = self._precompile(step_fn, first_batch)
    return first_batch, steps

  def _precompile(
    self, step_fn: Callable, first_batch: dict[str, np.ndarray] | None
  ) -> precompile_lib.CompiledSteps:
    """Every step shape of the next `train.precompile_steps` steps, compiled before the first
    (precompile.py); none when there is only one shape (the first step compiles it anyway), as
    when one step is left (a run resumed one step before its end, `num_steps=1`)."""
    horizon = min(self.total - self.step, self.run.train.precompile_steps)
    iterator = self.data.iterator
    pipeline = getattr(iterator, "iterator", iterator)  # under the prefetch thread
    if first_batch is None or horizon <= 1 or not hasattr(pipeline, "row_tokens_ahead"):
      return precompile_lib.CompiledSteps(step_fn, {})
    position = iterator.get_state()  # the batch after `first_batch`
    lengths, rows = pipeline.row_tokens_ahead(position["epoch"], position["batch"], horizon - 1)
    lengths = np.concatenate([[first_batch["source"].shape[1]], lengths])
    rows = np.concatenate([first_batch[GLOBAL_ROW_TOKENS][None], rows])
    shapes = precompile_lib.step_shapes(self.run.plan, lengths, rows, groups=self.groups)
    if len(shapes) <= 1:
      return precompile_lib.CompiledSteps(step_fn, {})
    global_rows = first_batch["source"].shape[0] * jax.process_count()

    def batch_structs(length: int) -> dict[str, jax.ShapeDtypeStruct]:
      return {
        key: jax.ShapeDtypeStruct(
          (global_rows, length, *value.shape[2:]), value.dtype, sharding=self.batch_sharding
        )
        for key, value in first_batch.items()
        if key != GLOBAL_ROW_TOKENS
      }

    return precompile_lib.compile_steps(
      step_fn,
      self.state,
      batch_structs,
      shapes,
      mesh=self.run.mesh,
      threads=self.run.train.compile_threads,
    )

  def _preempted_before_the_first_step(self) -> bool:
    if not preemption_lib.any_process(self.preempted.event.is_set()):
      return False
    self.stop_reason = "preempted"
    logging.warning(
      "preemption notice before step %d (while preparing or compiling): nothing trained, "
      "nothing to save; exiting (the run resumes from %s)",
      self.step + 1,
      f"step {self.step}" if self.step else "scratch",
    )
    return True

  def _run_step(
    self, steps: precompile_lib.CompiledSteps, host_batch: dict[str, np.ndarray]
  ) -> None:
    """One optimizer step on `host_batch` (packed when it has pads); its metrics stay on the
    devices (`pending`) until a log or save step."""
    recipe, plan = self.run.recipe, self.run.plan
    global_row_tokens = host_batch.pop(GLOBAL_ROW_TOKENS)  # host-side only
    plan.check_host_batch(host_batch, config=recipe.model, objective=recipe.objective)
    packing = plan.packing_for_batch(
      host_batch,
      global_row_tokens,
      pad_id=recipe.model.pad_id,
      groups=self.groups,
      process_index=jax.process_index(),
    )
    length = host_batch["source"].shape[1]
    new_shape = packing not in self.shapes_seen and not steps.has(length, packing)
    if new_shape and self.is_chief and self.step > self.progress.first_step:
      # A shape not compiled ahead compiles now: say why the step pauses.
      logging.info("step %d: new packed shape %s, compiling", self.step + 1, packing)
    self.shapes_seen[packing] = self.shapes_seen.get(packing, 0) + 1
    batch = _host_batch_to_global(host_batch, self.batch_sharding)
    compiling = contextlib.nullcontext()
    if new_shape and self.is_chief:  # progress lines while it compiles (the call returns after)
      compiling = CompileProgress("the step", [precompile_lib.describe((length, packing))])
    with compiling:
      self.state, metrics = steps.step(self.state, batch, packing)
    self.step += 1
    self.pending.append(metrics)

  def _due(self) -> _Due:
    """What is due after the step just run. Every step's metrics pass the divergence guard
    before a checkpoint of its state is written (one transfer per log window or save)."""
    step, last = self.step, self.step == self.total
    stop = preemption_due(step, self.preempted.event.is_set(), self.checkpointer)
    save = last or stop or self.checkpointer.should_save(step)
    # Not on a preemption notice (the run saves and exits at once). A validation step is also
    # a log step: the held-out metrics go into that step's one row.
    validate = is_due(step, self.valid_every, self.total) and not stop
    log = (
      is_due(step, self.run.train.log_every, self.total)
      or self.progress.is_first_step(step)
      or validate
    )
    if save or log:
      self._check_pending()
    if (
      not (stop or validate)
      and (self.single_process or save or log)  # every process is here, or none
      and preemption_lib.any_process(self.preempted.event.is_set())
    ):
      # The notice came while this step ran (the transfer above waits for it): save this
      # step and stop now, not one step later.
      stop = save = True
      self._check_pending()
    return _Due(last=last, log=log, save=save, validate=validate, stop=stop)

  def _check_pending(self) -> None:
    """Moves the metrics of the steps up to this one still on the devices (`pending`, emptied)
    to the host `window`, each checked by the divergence guard (`monitor.check_step`)."""
    host = jax.device_get(self.pending)
    self.pending.clear()
    for offset, step_metrics in enumerate(host):
      self.window.append({k: float(v) for k, v in step_metrics.items()})
      self.monitor.check_step(self.step - len(host) + 1 + offset, self.window[-1])

  def _log(self, validating: bool) -> None:
    """This window's row and progress line (a validation step's wait for its held-out
    metrics); the collapse guard checks the row."""
    row = self._window_row()
    line = format_progress(self.step, self.total, row, self.progress.eta_s(self.step))
    if validating:
      # This step's row waits for the held-out metrics, after the save.
      self.unwritten = (self.step, row, line)
    else:
      self.writer.write(self.step, row)
      if self.is_chief:
        logging.info(line)
    self.monitor.check_window(self.step, row)
    self.progress.restart_window()

  def _window_row(self) -> dict[str, float]:
    """The window's mean metrics (`loss`: this step's own), its tokens/s and MFU, or for the
    window of the run's first step its time (compilation included): `first_step_s`."""
    window, self.window = self.window, []
    timing = self.progress.end_window(self.step, steps=len(window))
    tokens = float(sum(m["num_tokens"] for m in window))
    row = {k: float(np.mean([m[k] for m in window])) for k in window[-1]}
    # `loss` is this step's own (comparable step by step); the curves plot `loss_mean`.
    row["loss_mean"] = row["loss"]
    row["loss"] = window[-1]["loss"]
    if timing.timed:
      row["tokens_per_s"] = self.progress.per_second(tokens, timing.elapsed_s)
      if self.peak:
        # At the window's measured masked fraction: the head, and a pruned last block, run
        # only at the loss positions.
        recipe = self.run.recipe
        flops = self.run.plan.flops_per_token(
          recipe.model, recipe.objective, masked_fraction=row["masked_fraction"]
        )
        row["mfu"] = row["tokens_per_s"] * flops / (self.peak * jax.device_count())
    else:
      row["first_step_s"] = timing.elapsed_s
    self.last_metrics = row
    return row

  def _validate(self) -> None:
    """The held-out metrics, written into this step's waiting row. After the (asynchronous)
    save: a failing evaluation costs no checkpoint. Its time is in no window's throughput."""
    step, row, line = self.unwritten
    valid = validation_lib.evaluate(self.eval_fn, self.state, self.valid_batches)
    self.last_validation = {"step": step, **valid}
    prefixed = {validation_lib.PREFIX + k: v for k, v in valid.items()}
    self.writer.write(step, {**row, **prefixed})
    if self.is_chief:
      logging.info(f"{line} | {validation_lib.format_validation(valid)}")
    self.unwritten = None
    self.progress.restart_window()

  def _write_unhealthy_rows(self, error: health_lib.TrainingError) -> None:
    """The rows an unhealthy stop would lose: a validation step's row (without the held-out
    metrics) and the unhealthy step's own metrics, so the curve shows the anomaly."""
    if self.unwritten is not None and self.unwritten[0] > self.writer.last_step:
      step, row, line = self.unwritten
      self.writer.write(step, row)
      if self.is_chief:
        logging.info(line)
    first = self.step - len(self.window) + 1
    bad = next((m for i, m in enumerate(self.window) if first + i == error.anomaly_step), None)
    if bad is not None and error.anomaly_step > self.writer.last_step:
      self.writer.write(error.anomaly_step, bad)

  def _finish(self) -> dict[str, Any]:
    """The run's summary; on completion the model directory; the training curves."""
    summary = {
      "final_step": self.step,
      "stop_reason": self.stop_reason,
      "last_metrics": self.last_metrics,
      # The newest held-out metrics of this invocation ({"step": n, "loss": ...}); None when
      # validation is off or did not run.
      "last_validation": self.last_validation,
      "steps_per_s": self.progress.steps_per_s(),
      # Steps per packed capacity ("unpacked": batches with a full group, or packing off).
      "packing_steps": {
        ("unpacked" if p is None else str(p.capacity)): n
        for p, n in sorted(
          self.shapes_seen.items(), key=lambda kv: kv[0].capacity if kv[0] else 1e9
        )
      },
    }
    if self.stop_reason == "completed" and self.run.train.export_model:
      # Every process joins (gathering parameters that span processes is a collective).
      # With the data's tokenizer: the directory alone turns text into features.
      model_dir = export_model_dir(
        self.state,
        self.run.recipe,
        os.path.join(self.workdir, "model"),
        tokenizer=workdir_tokenizer(self.workdir),
      )
      if self.is_chief:
        summary["model_dir"] = model_dir
    if self.is_chief and self.run.train.plot:
      from data2vec_jax.train.plots import plot_training_curves

      summary["plot"] = plot_training_curves(
        os.path.join(self.workdir, "metrics.jsonl"),
        os.path.join(self.workdir, "training_curves.png"),
      )
    return summary
