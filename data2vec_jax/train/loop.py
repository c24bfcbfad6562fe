"""The pretraining loop: `train_and_evaluate(config, workdir)`.

config -> data -> model/objective -> sharded state -> jitted step -> loop -> checkpoints/exports.
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
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from data2vec_jax.atomic_files import write_text_atomically
from data2vec_jax.data import training_input
from data2vec_jax.data.corpus_tokenizer import with_corpus_tokenizer
from data2vec_jax.data.pipeline import GLOBAL_ROW_TOKENS
from data2vec_jax.model import flops as flops_lib
from data2vec_jax.objective import execution as execution_lib
from data2vec_jax.runtime import checkpoint as checkpoint_lib
from data2vec_jax.runtime import preemption as preemption_lib
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime import workdir_errors
from data2vec_jax.runtime.metrics import MetricWriter, format_progress
from data2vec_jax.runtime.preemption import PreemptionFlag
from data2vec_jax.speed import compile_cache
from data2vec_jax.speed.compile_progress import CompileProgress
from data2vec_jax.train import health as health_lib
from data2vec_jax.train import precompile as precompile_lib
from data2vec_jax.train import state as train_state_lib
from data2vec_jax.train import step_setup
from data2vec_jax.train import validation as validation_lib
from data2vec_jax.train.export import export_model_dir
from data2vec_jax.train.recipe import (
  RECIPE_FILE,
  recipe_to_dict,
  validate_config,
)
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
  t_start = time.time()
  if config.get("distributed", False):
    initialize_distributed(config.get("cluster", {}))
  validate_config(config)  # a bad config fails before anything is written to the workdir
  workdir_errors.check_workdir(workdir)  # a file, a read-only workdir or parent: one line
  # Before anything compiles: a restart loads what an earlier run of this config compiled.
  compile_cache.enable(config.train.get("compilation_cache", "auto"), workdir)
  process_index, process_count = jax.process_index(), jax.process_count()
  is_chief = process_index == 0
  train_cfg = config.train

  try:
    data = training_input.build(
      config, workdir, process_index=process_index, process_count=process_count
    )
  except (ValueError, FileNotFoundError, UnicodeError) as e:
    raise InputDataError(f"data: {e}") from e
  try:
    # The same builder compile_for uses: the step compiled for a topology is this one.
    setup = step_setup.build(config, data.vocab_size, data.mask_id, data.seq_len)
    recipe, plan, tx, mesh = setup.recipe, setup.plan, setup.tx, setup.mesh
    if is_chief:
      logging.info(
        "mesh %s on %d devices (%d processes)", dict(mesh.shape), jax.device_count(), process_count
      )
    abstract_state, shardings = setup.abstract_state, setup.shardings
    checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      max_to_keep=train_cfg.keep_checkpoints,
      save_interval_steps=train_cfg.checkpoint_every,
      async_save=train_cfg.async_checkpoint,
    )
    try:
      with sharding_lib.activate(mesh):
        state = _restore_or_create(
          checkpointer, abstract_state, shardings, data, recipe, tx, mesh, train_cfg
        )
        done = int(jax.device_get(state.step))
        if done >= int(train_cfg.num_steps):
          return _already_complete(workdir, config, state, recipe, done, is_chief)
        if is_chief:  # only now: a failed resume must not overwrite the run's own files
          _write_run_files(workdir, config, recipe, plan)
        step_fn = setup.make_step()
        eval_fn = None
        if data.validation is not None:
          eval_fn = validation_lib.make_eval_step(recipe, plan, mesh, shardings)
        summary = _loop(
          config,
          workdir,
          recipe,
          plan,
          state,
          step_fn,
          data,
          checkpointer,
          mesh,
          is_chief,
          eval_fn=eval_fn,
          preempted=preempted,
        )
    except health_lib.TrainingError as e:
      raise _stopped_unhealthy(e, checkpointer, config) from e
    finally:
      checkpointer.close()
  finally:
    if hasattr(data.iterator, "close"):
      data.iterator.close()  # stops the prefetch thread
  summary["wall_time_s"] = time.time() - t_start
  if is_chief:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def _already_complete(
  workdir: str,
  config: ml_collections.ConfigDict,
  state: train_state_lib.TrainState,
  recipe: train_state_lib.Recipe,
  step: int,
  is_chief: bool,
) -> dict[str, Any]:
  """A re-run of a finished run: says so and trains nothing. The run's summary.json is kept (a
  re-run must not replace its metrics with empty ones); a model directory or plot a kill left
  unwritten is written now."""
  total = int(config.train.num_steps)
  if is_chief:
    where = f"at step {step}" if step == total else f"at step {step}, past train.num_steps={total}"
    logging.info(
      "%s: already complete %s, nothing to do; raise --config.train.num_steps to train on "
      "from this checkpoint",
      workdir,
      where,
    )
  summary_path = os.path.join(workdir, "summary.json")
  summary = _read_json(summary_path) or {}
  if summary.get("final_step") != step or summary.get("stop_reason") != "completed":
    # Killed after its last checkpoint, before its summary: what the checkpoint says.
    summary = {"final_step": step, "stop_reason": "completed", "last_metrics": {}}
    if is_chief:
      with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2)
  model_dir = os.path.join(workdir, "model")
  if config.train.export_model and not os.path.isfile(os.path.join(model_dir, "config.json")):
    export_model_dir(state, recipe, model_dir, tokenizer=workdir_tokenizer(workdir))
    summary["model_dir"] = model_dir
  plot = os.path.join(workdir, "training_curves.png")
  metrics = os.path.join(workdir, "metrics.jsonl")
  if is_chief and config.train.plot and not os.path.exists(plot) and os.path.exists(metrics):
    from data2vec_jax.train.plots import plot_training_curves

    summary["plot"] = plot_training_curves(metrics, plot)
  return {**summary, "already_complete": True}


def _read_json(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_run_files(
  workdir: str,
  config: ml_collections.ConfigDict,
  recipe: train_state_lib.Recipe,
  plan: execution_lib.ExecutionPlan,
) -> None:
  """config.json (as given) and recipe.json (the resolved step math, read by `export`)."""
  recipe_text = json.dumps(recipe_to_dict(recipe, plan.seq_len, plan), indent=2)
  for name, text in (
    ("config.json", config.to_json_best_effort(indent=2)),
    (RECIPE_FILE, recipe_text),
  ):
    write_text_atomically(os.path.join(workdir, name), text)


def _restore_or_create(
  checkpointer: checkpoint_lib.Checkpointer,
  abstract_state: Any,
  shardings: train_state_lib.TrainState,
  data: training_input.TrainingData,
  recipe: train_state_lib.Recipe,
  tx,
  mesh,
  train_cfg,
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

  restored = checkpointer.restore_newest_intact(abstract_state, validate=position_pipeline)
  if restored is None:
    return train_state_lib.create_train_state(
      recipe, tx, jax.random.PRNGKey(train_cfg.seed), mesh, data.seq_len, shardings
    )
  step, state, _ = restored
  logging.info("resumed from %s at step %d", checkpointer.directory, step)
  return state


def _stopped_unhealthy(
  error: health_lib.TrainingError,
  checkpointer: checkpoint_lib.Checkpointer,
  config: ml_collections.ConfigDict,
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
      f"(optimizer.lr={config.optimizer.lr}, optimizer.warmup_steps="
      f"{config.optimizer.warmup_steps})"
    )
  return health_lib.TrainingError("; ".join(parts), error.anomaly_step, diverged=error.diverged)


def _precompile(
  train_cfg, plan, data, state, step_fn, first_batch, mesh, groups: int, remaining: int
) -> precompile_lib.CompiledSteps:
  """Every step shape of the next `train.precompile_steps` steps, compiled before the first
  (precompile.py); none when there is only one shape (the first step compiles it anyway), as
  when one step is left (a run resumed one step before its end, `num_steps=1`)."""
  horizon = min(remaining, int(train_cfg.get("precompile_steps", 0)))
  pipeline = getattr(data.iterator, "iterator", data.iterator)  # under the prefetch thread
  if first_batch is None or horizon <= 1 or not hasattr(pipeline, "row_tokens_ahead"):
    return precompile_lib.CompiledSteps(step_fn, {})
  position = data.iterator.get_state()  # the batch after `first_batch`
  lengths, rows = pipeline.row_tokens_ahead(position["epoch"], position["batch"], horizon - 1)
  lengths = np.concatenate([[first_batch["source"].shape[1]], lengths])
  rows = np.concatenate([first_batch[GLOBAL_ROW_TOKENS][None], rows])
  shapes = precompile_lib.step_shapes(plan, lengths, rows, groups=groups)
  if len(shapes) <= 1:
    return precompile_lib.CompiledSteps(step_fn, {})
  batch_sharding = sharding_lib.batch_sharding(mesh)
  local_rows = first_batch["source"].shape[0]
  global_rows = local_rows * jax.process_count()

  def batch_structs(length: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {
      key: jax.ShapeDtypeStruct(
        (global_rows, length, *value.shape[2:]), value.dtype, sharding=batch_sharding
      )
      for key, value in first_batch.items()
      if key != GLOBAL_ROW_TOKENS
    }

  return precompile_lib.compile_steps(
    step_fn,
    state,
    batch_structs,
    shapes,
    mesh=mesh,
    threads=int(train_cfg.get("compile_threads", 0)),
  )


def _check_pending(
  pending: list[dict[str, jax.Array]],
  window: list[dict[str, float]],
  monitor: health_lib.HealthMonitor,
  step: int,
) -> None:
  """Moves the metrics of the steps up to `step` still on the devices (`pending`, emptied) to
  the host `window`, each checked by the divergence guard (`monitor.check_step`)."""
  host = jax.device_get(pending)
  pending.clear()
  for offset, step_metrics in enumerate(host):
    window.append({k: float(v) for k, v in step_metrics.items()})
    monitor.check_step(step - len(host) + 1 + offset, window[-1])


def _loop(
  config,
  workdir,
  recipe,
  plan,
  state,
  step_fn,
  data,
  checkpointer,
  mesh,
  is_chief,
  eval_fn=None,
  preempted: PreemptionFlag | None = None,
):
  """Trains from `state` to `train.num_steps`; `eval_fn` (`validation.make_eval_step`, with
  `data.validation`) evaluates the held-out loss every `validation.every` steps.

  `preempted` (SIGTERM) is acted on at the step boundary after the notice: on one process it is
  read after every step, also after waiting for the step's results, so a notice that arrives
  while step k runs saves step k; several processes must stop at the same step, so there the
  flags are agreed (a collective) at the log and save steps, where the host waits anyway, and by
  orbax's preemption sync point in between. A notice before the first step (while compiling)
  saves nothing new: the checkpoint the run started from stands."""
  preempted = preempted or PreemptionFlag()
  single_process = jax.process_count() == 1
  train_cfg = config.train
  total = int(train_cfg.num_steps)
  step = int(jax.device_get(state.step))
  first_step = step
  writer = MetricWriter(
    workdir, enabled=is_chief, tensorboard=train_cfg.tensorboard, resume_step=step
  )
  monitor = health_lib.HealthMonitor(
    health_lib.HealthConfig.from_train_config(train_cfg), history=writer.history
  )
  batch_sharding = sharding_lib.batch_sharding(mesh)
  peak, peak_source = flops_lib.mfu_peak(float(train_cfg.peak_flops_per_device or 0))
  if is_chief:
    logging.info("MFU %s", peak_source)
  pending: list[dict[str, jax.Array]] = []  # this window's metrics still on the devices
  window: list[dict[str, float]] = []  # this window's metrics on the host, checked
  last_metrics: dict[str, float] = {}
  t_window = time.time()
  steps_timed, time_timed = 0, 0.0
  stop_reason = "completed"
  groups = sharding_lib.data_parallel_size(mesh)
  if plan.pack_tokens and groups % jax.process_count():
    # Each process must hold whole packing groups: then the fullest group of the pipeline's
    # row order is the fullest on the devices too, whatever order the mesh gives the processes.
    raise ValueError(
      f"token packing needs the {groups} data shards spread evenly over "
      f"{jax.process_count()} processes; set execution.pack_tokens=False"
    )
  shapes_seen: dict[Any, int] = {}  # packing (None: unpacked) -> steps run with it
  valid_every = 0
  valid_batches: list[dict[str, jax.Array]] = []
  last_validation: dict[str, float] | None = None
  unwritten = None  # (step, metrics, progress line) of a log row waiting for its validation
  try:
    if eval_fn is not None:
      valid_every = data.validation.config.every
      for host_batch in data.validation.batches:
        plan.check_host_batch(host_batch, config=recipe.model, objective=recipe.objective)
      # On the devices once, sharded like the training batches (each process its own rows).
      valid_batches = [_host_batch_to_global(b, batch_sharding) for b in data.validation.batches]
    first_batch = next(data.iterator) if step < total else None
    steps = precompile_lib.CompiledSteps(step_fn, {})
    if not preempted.event.is_set():  # a notice already: no point compiling ahead
      steps = _precompile(
        train_cfg, plan, data, state, step_fn, first_batch, mesh, groups, total - step
      )
    if preemption_lib.any_process(preempted.event.is_set()):
      stop_reason = "preempted"
      logging.warning(
        "preemption notice before step %d (while preparing or compiling): nothing trained, "
        "nothing to save; exiting (the run resumes from %s)",
        step + 1,
        f"step {step}" if step else "scratch",
      )
    if stop_reason != "preempted":
      while step < total:
        host_batch, first_batch = first_batch or next(data.iterator), None
        global_row_tokens = host_batch.pop(GLOBAL_ROW_TOKENS)  # host-side only
        plan.check_host_batch(host_batch, config=recipe.model, objective=recipe.objective)
        packing = plan.packing_for_batch(
          host_batch,
          global_row_tokens,
          pad_id=recipe.model.pad_id,
          groups=groups,
          process_index=jax.process_index(),
        )
        length = host_batch["source"].shape[1]
        new_shape = packing not in shapes_seen and not steps.has(length, packing)
        if new_shape and is_chief and step > first_step:
          # A shape not compiled ahead compiles now: say why the step pauses.
          logging.info("step %d: new packed shape %s, compiling", step + 1, packing)
        shapes_seen[packing] = shapes_seen.get(packing, 0) + 1
        batch = _host_batch_to_global(host_batch, batch_sharding)
        compiling = contextlib.nullcontext()
        if new_shape and is_chief:  # progress lines while it compiles (the call returns after)
          compiling = CompileProgress("the step", [precompile_lib.describe((length, packing))])
        with compiling:
          state, metrics = steps.step(state, batch, packing)
        step += 1
        pending.append(metrics)
        is_last = step == total
        stopping = (single_process and preempted.event.is_set()) or (
          checkpointer.reached_preemption(step)
        )
        saving = is_last or stopping or checkpointer.should_save(step)
        # Not on a preemption notice (the run saves and exits at once). A validation step is
        # also a log step: the held-out metrics go into that step's one row.
        validating = valid_every > 0 and (step % valid_every == 0 or is_last) and not stopping
        logging_now = (
          step % train_cfg.log_every == 0 or is_last or step == first_step + 1 or validating
        )
        if saving or logging_now:
          # Every step's metrics pass the divergence guard before a checkpoint of its state
          # is written (one transfer per log window or save, not per step).
          _check_pending(pending, window, monitor, step)
        if (
          not (stopping or validating)
          and (single_process or saving or logging_now)  # every process is here, or none
          and preemption_lib.any_process(preempted.event.is_set())
        ):
          # The notice came while this step ran (the transfer above waits for it): save this
          # step and stop now, not one step later.
          stopping = saving = True
          _check_pending(pending, window, monitor, step)
        if logging_now:
          now = time.time()
          tokens = float(sum(m["num_tokens"] for m in window))
          elapsed = now - t_window
          last_metrics = {k: float(np.mean([m[k] for m in window])) for k in window[-1]}
          # `loss` is this step's own (comparable step by step); the curves plot `loss_mean`.
          last_metrics["loss_mean"] = last_metrics["loss"]
          last_metrics["loss"] = window[-1]["loss"]
          if step > first_step + 1:  # the first step includes compilation
            last_metrics["tokens_per_s"] = tokens / max(elapsed, 1e-9)
            steps_timed += len(window)
            time_timed += elapsed
            if peak:
              # At the window's measured masked fraction: the head, and a pruned last block,
              # run only at the loss positions.
              flops = plan.flops_per_token(
                recipe.model, recipe.objective, masked_fraction=last_metrics["masked_fraction"]
              )
              last_metrics["mfu"] = (
                last_metrics["tokens_per_s"] * flops / (peak * jax.device_count())
              )
          else:
            last_metrics["first_step_s"] = elapsed
          window = []
          eta = (total - step) * time_timed / steps_timed if steps_timed else None
          line = format_progress(step, total, last_metrics, eta)
          if validating:
            # This step's row waits for the held-out metrics, after the save below.
            unwritten = (step, last_metrics, line)
          else:
            writer.write(step, last_metrics)
            if is_chief:
              logging.info(line)
          monitor.check_window(step, last_metrics)
          t_window = time.time()
        if saving:
          # A step already saved is not saved again (a notice right after a scheduled save).
          checkpointer.save(step, state, data.iterator.get_state(), force=is_last or stopping)
        if validating:
          # After the (asynchronous) save: a failing evaluation costs no checkpoint. Its time is
          # in no window's throughput (the window restarts after it).
          valid = validation_lib.evaluate(eval_fn, state, valid_batches)
          last_validation = {"step": step, **valid}
          prefixed = {validation_lib.PREFIX + k: v for k, v in valid.items()}
          writer.write(step, {**last_metrics, **prefixed})
          if is_chief:
            logging.info(f"{line} | {validation_lib.format_validation(valid)}")
          unwritten = None
          t_window = time.time()
        if stopping:
          stop_reason = "preempted"
          logging.warning("preemption notice: saved step %d, exiting", step)
          break
    checkpointer.wait_until_finished()
  except health_lib.TrainingError as e:
    if unwritten is not None and unwritten[0] > writer.last_step:
      # A collapse found at a validation step: its row, without the held-out metrics.
      writer.write(unwritten[0], unwritten[1])
      if is_chief:
        logging.info(unwritten[2])
    # The unhealthy step's own metrics go to the logs too, so the curve shows the anomaly.
    bad = next(
      (m for i, m in enumerate(window) if step - len(window) + 1 + i == e.anomaly_step), None
    )
    if bad is not None and e.anomaly_step > writer.last_step:
      writer.write(e.anomaly_step, bad)
    raise
  finally:
    # Quietly after an error: a close failing because of it (TensorBoard's "handle is closed"
    # on a full disk) must not replace the error itself.
    writer.close(quiet=sys.exc_info()[0] is not None)
  summary = {
    "final_step": step,
    "stop_reason": stop_reason,
    "last_metrics": last_metrics,
    # The newest held-out metrics of this invocation ({"step": n, "loss": ...}); None when
    # validation is off or did not run.
    "last_validation": last_validation,
    "steps_per_s": steps_timed / time_timed if time_timed else None,
    # Steps per packed capacity ("unpacked": batches with a full group, or packing off).
    "packing_steps": {
      ("unpacked" if p is None else str(p.capacity)): n
      for p, n in sorted(shapes_seen.items(), key=lambda kv: kv[0].capacity if kv[0] else 1e9)
    },
  }
  if stop_reason == "completed" and train_cfg.export_model:
    # Every process joins (gathering parameters that span processes is a collective).
    # With the data's tokenizer: the directory alone turns text into features.
    model_dir = export_model_dir(
      state, recipe, os.path.join(workdir, "model"), tokenizer=workdir_tokenizer(workdir)
    )
    if is_chief:
      summary["model_dir"] = model_dir
  if is_chief and train_cfg.plot:
    from data2vec_jax.train.plots import plot_training_curves

    summary["plot"] = plot_training_curves(
      os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "training_curves.png")
    )
  return summary
