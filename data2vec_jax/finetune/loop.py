"""One fine-tuning run: `finetune_and_evaluate(config, workdir)` (launched by finetune.py).

config -> pretrained weights + tokenizer -> labelled splits -> sharded state -> jitted update ->
dev evaluations -> checkpoints, results.json, model directory.

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
import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from data2vec_jax.atomic_files import write_json_atomically
from data2vec_jax.finetune import batches as batches_lib
from data2vec_jax.finetune import data as data_lib
from data2vec_jax.finetune import state as state_lib
from data2vec_jax.finetune import step as step_lib
from data2vec_jax.finetune import step_setup
from data2vec_jax.finetune.hf_io import checkpoint_label_names, export_finetuned_to_hf
from data2vec_jax.finetune.metrics import metrics_of
from data2vec_jax.finetune.model import SequenceClassifier
from data2vec_jax.finetune.settings import RunSettings, resolve_settings
from data2vec_jax.finetune.starting_point import (
  check_tokenizer_fits,
  load_starting_point,
  resolve_tokenizer,
)
from data2vec_jax.runtime import checkpoint as checkpoint_lib
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.metrics import MetricWriter, format_progress
from data2vec_jax.runtime.optimizer import make_optimizer
from data2vec_jax.runtime.preemption import PreemptionFlag
from data2vec_jax.speed import compile_progress
from data2vec_jax.speed.compile_progress import CompileProgress
from data2vec_jax.train.export import to_host
from data2vec_jax.weights.pretrained import save_pretrained
from data2vec_jax.weights.torch_io import CheckpointError

RESULTS_FILE = "results.json"


class FinetuneError(ValueError):
  """A fine-tuning run cannot start or go on (bad config, data, init); the message says why."""


def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) one fine-tuning run of `config.task` in `workdir`; returns results.json."""
  t_start = time.time()
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  try:
    settings = resolve_settings(config)
  except ValueError as e:
    raise FinetuneError(f"invalid config: {e}") from e
  try:
    start = load_starting_point(
      config.init,
      workdir,
      use_ema=config.init_ema,
      from_scratch=config.from_scratch,
      drop_token_type_rows=bool(config.get("init_drop_token_type_rows", False)),
    )
    tokenizer = resolve_tokenizer(dict(config.tokenizer), config.init)
    check_tokenizer_fits(tokenizer, start.config)
  except (ValueError, FileNotFoundError) as e:
    raise FinetuneError(f"init: {e}") from e
  model_config = dataclasses.replace(
    start.config,
    dropout=float(config.model.dropout),
    attention_dropout=float(config.model.attention_dropout),
    dtype=str(config.model.dtype),
    scan_unroll=(
      start.config.num_layers
      if config.model.scan_unroll == "all"
      else int(config.model.scan_unroll)
    ),
  )
  try:
    task_data = data_lib.load_task_data(
      config, settings, tokenizer, model_config, workdir=workdir, log=is_chief
    )
  except (ValueError, FileNotFoundError, UnicodeError) as e:
    raise FinetuneError(f"data: {e}") from e
  settings = task_data.settings.with_data(len(task_data.train))
  model = SequenceClassifier(
    model_config, settings.num_labels, float(config.model.classifier_dropout)
  )
  head_params = _starting_head(config, start, settings)
  optimizer = step_setup.optimizer_config(config, settings)
  tx = make_optimizer(optimizer)
  mesh = sharding_lib.make_mesh(**dict(config.mesh))
  shards = sharding_lib.data_parallel_size(mesh)
  for field, size in (
    ("train.batch_size", settings.batch_size),
    ("train.eval_batch_size", int(config.train.eval_batch_size)),
  ):
    if size % shards:
      raise FinetuneError(
        f"{field}={size} does not split over the mesh's {shards} data shards; use a multiple "
        f"of {shards} (or fewer devices: --config.mesh.data)"
      )
  abstract, shardings = state_lib.state_shardings(model, tx, mesh)
  checkpointer = checkpoint_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    max_to_keep=int(config.train.keep_checkpoints),
    save_interval_steps=int(config.train.checkpoint_every) or 10**12,
    async_save=True,
  )
  fingerprint = task_data.fingerprint(settings)
  try:
    with sharding_lib.activate(mesh):

      def same_run(state, data_state) -> None:
        if data_state.get("fingerprint") != fingerprint:
          raise checkpoint_lib.CheckpointMismatchError(
            f"{checkpointer.directory}: its checkpoints belong to another task, data, batch "
            f"size or seed ({data_state.get('fingerprint')} vs {fingerprint} now): use the "
            "same config, or fine-tune in a new --workdir"
          )

      restored = checkpointer.restore_newest_intact(abstract, validate=same_run)
      if restored is None:
        state = state_lib.create_state(
          model,
          tx,
          mesh,
          shardings,
          encoder_params=start.encoder_params,
          head_params=head_params,
          seed=settings.seed,
          head_init=str(config.model.head_init),
        )
      else:
        step, state, _ = restored
        logging.info("resumed from %s at update %d", checkpointer.directory, step)
        previous = _completed_results(workdir)
        if step >= settings.total_updates and previous is not None and not config.eval_only:
          if is_chief:
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
      if is_chief:
        write_json_atomically(
          os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort())
        )
      run = _Run(config, workdir, settings, task_data, model, tx, optimizer, mesh, shardings)
      run.tokenizer = tokenizer  # model/ and hf/ carry it, so the exports can be used on text
      results = run.loop(state, checkpointer, fingerprint, start)
  finally:
    checkpointer.close()
  results["wall_time_s"] = time.time() - t_start
  if is_chief:
    write_json_atomically(os.path.join(workdir, RESULTS_FILE), results)
  return results


def _starting_head(config, start, settings: RunSettings) -> Any | None:
  """The checkpoint's own classifier with `init_classifier` / `eval_only`, else None (fresh).

  Its output rows are put in the task's label order by name: the checkpoint's label names
  (a data2vec-jax directory's `label_names`, an HF directory's `id2label`) are matched with the
  task's (case-insensitively); names that cannot be matched are refused. A checkpoint without
  names (HF's `LABEL_0`..) is taken in row order, with a warning."""
  if not (config.init_classifier or config.eval_only):
    return None
  head = start.heads.get("classifier")
  if head is None:
    raise FinetuneError(
      f"init: {config.init} has no classifier head (heads: {sorted(start.heads) or 'none'}); "
      "set init_classifier=False (and eval_only=False) to train a fresh one"
    )
  outputs = int(np.shape(head["out_proj"]["bias"])[0])
  if outputs != settings.num_labels:
    raise FinetuneError(
      f"init: the classifier of {config.init} has {outputs} outputs but {settings.task} has "
      f"{settings.num_labels} labels"
    )
  if outputs == 1 or settings.label_names is None:
    return head  # regression: one output, no names
  try:
    names = checkpoint_label_names(start.metadata, outputs, config.init)
  except CheckpointError as e:
    raise FinetuneError(f"init: {e}") from None
  task_names = list(settings.label_names)
  if names is None:
    logging.warning(
      "init: the classifier of %s names no labels (HF's LABEL_0..); its rows are taken as "
      "%s's labels in order: %s",
      config.init,
      settings.task,
      task_names,
    )
    return head
  rows = {n.strip().lower(): i for i, n in enumerate(names)}
  unmatched = [n for n in task_names if n.strip().lower() not in rows]
  if unmatched or len(rows) != len(names):
    raise FinetuneError(
      f"init: the classifier of {config.init} predicts the labels {names} but {settings.task} "
      f"has {task_names} ({unmatched or 'names differing only in case'} not among them), so "
      "its outputs cannot be matched to the task's labels: give data.label_names in the "
      "checkpoint's names, or set init_classifier=False (and eval_only=False) to train a "
      "fresh classifier"
    )
  order = np.asarray([rows[n.strip().lower()] for n in task_names])
  if (order != np.arange(outputs)).any():
    logging.info(
      "init: the classifier's rows %s reordered to %s's label order %s",
      names,
      settings.task,
      task_names,
    )
  out = {k: np.asarray(v)[..., order] for k, v in head["out_proj"].items()}
  return {**head, "out_proj": out}


def _completed_results(workdir: str) -> dict[str, Any] | None:
  """The workdir's results.json when it records a completed run, else None."""
  try:
    with open(os.path.join(workdir, RESULTS_FILE)) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  return results if results.get("stop_reason") == "completed" else None


class _Run:
  """The update loop with its evaluations (one object so the pieces share the run's settings)."""

  def __init__(self, config, workdir, settings, task_data, model, tx, optimizer, mesh, shardings):
    self.config, self.workdir, self.settings = config, workdir, settings
    self.data, self.model, self.mesh = task_data, model, mesh
    self.is_chief = jax.process_index() == 0
    pad, max_len = model.config.pad_id, model.config.max_sequence_length
    self.train_batches = batches_lib.TrainBatches(
      task_data.train, settings.batch_size, settings.seed, pad_id=pad, max_length=max_len
    )
    self.eval_sets = {
      name: batches_lib.eval_batches(
        split, int(config.train.eval_batch_size), pad_id=pad, max_length=max_len
      )
      for name, split in task_data.evals.items()
    }
    self.step_fn = step_lib.make_train_step(model, tx, optimizer, mesh, shardings)
    self.logits_fn = step_lib.make_eval_step(model, mesh, shardings.params)
    self.batch_sharding = sharding_lib.batch_sharding(mesh)
    self.tokenizer = None  # the model's tokenizer, exported with model/ (None: it has none)
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
      out["splits"][name] = split_scores(self.settings, logits, labels)
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

  def loop(self, state, checkpointer, fingerprint: str, start) -> dict[str, Any]:
    settings, train_cfg = self.settings, self.config.train
    step = int(jax.device_get(state.step))
    total = settings.total_updates
    spe = self.train_batches.steps_per_epoch
    writer = MetricWriter(
      self.workdir, enabled=self.is_chief, tensorboard=train_cfg.tensorboard, resume_step=step
    )
    evaluations = [_evaluation_from_row(r) for r in writer.history if "dev/score" in r]
    best = _best(evaluations)
    log_every = max(int(train_cfg.log_every), 1)
    eval_every = int(train_cfg.eval_every)
    window: list[dict[str, jax.Array]] = []
    t_window, timed_steps, timed_s = time.time(), 0, 0.0
    first_step, stop_reason = step, "completed"
    if self.config.eval_only:
      result = self.evaluate(state.params)
      evaluations = [_evaluation(step, step / spe, result)]
      total = step
    if self.is_chief and step < total:
      logging.info(
        "%s from %s: %d train examples, %d updates (%d per epoch, batch %d, lr %.2e, warmup "
        "%d, decay to 0 at %d), seed %d",
        settings.task,
        f"scratch (random weights; the architecture and tokenizer of {start.model_path})"
        if self.config.from_scratch
        else f"the weights of {start.model_path}",
        len(self.data.train),
        total,
        spe,
        settings.batch_size,
        settings.lr,
        settings.warmup_updates,
        settings.max_update,
        settings.seed,
      )
    try:
      with PreemptionFlag() as preempted:
        while step < total:
          host = self.train_batches.batch(step)
          host.pop("rows")
          batch = {k: self._to_global(v) for k, v in host.items()}
          with self.compiling("the fine-tuning update", batch["input_ids"].shape):
            state, metrics = self.step_fn(state, batch)
          step += 1
          window.append(metrics)
          is_last = step == total
          at_eval = is_last or (step % eval_every == 0 if eval_every else step % spe == 0)
          if step % log_every == 0 or is_last or step == first_step + 1:
            values = jax.device_get(window)
            window = []
            mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
            mean["epoch"] = step / spe
            now = time.time()
            if step > first_step + 1:
              timed_steps += len(values)
              timed_s += now - t_window
              mean["steps_per_s"] = len(values) / max(now - t_window, 1e-9)
            t_window = now
            eta = (total - step) * timed_s / timed_steps if timed_steps else None
            if not np.isfinite(mean["loss"]):
              raise FinetuneError(
                f"update {step}: the loss is {mean['loss']}; lower optimizer.lr "
                f"({settings.lr:g}) or use dtype float32"
              )
            writer.write(step, {f"train/{k}": v for k, v in mean.items()})
            if self.is_chief:
              logging.info(format_progress(step, total, mean, eta) + f" | epoch {step / spe:.2f}")
          if at_eval:
            result = self.evaluate(state.params)
            evaluation = _evaluation(step, step / spe, result)
            evaluations.append(evaluation)
            writer.write(step, _evaluation_row(evaluation))
            improved = best is None or evaluation["selection"] > best["selection"]
            if improved:
              best = evaluation
            if self.is_chief:
              logging.info(
                "dev at update %d (epoch %.2f): %s%s",
                step,
                step / spe,
                _describe(result),
                " (best so far)" if improved else "",
              )
            if train_cfg.export_model and (
              (settings.report == "best" and improved) or (settings.report == "last" and is_last)
            ):
              self.export(state.params, evaluation, start)
          stopping = preempted.event.is_set() or checkpointer.reached_preemption(step)
          if at_eval or stopping or checkpointer.should_save(step):
            checkpointer.save(step, state, {"fingerprint": fingerprint, "step": step}, force=True)
          if stopping:
            stop_reason = "preempted"
            logging.warning("preemption notice: saved update %d, exiting", step)
            break
      checkpointer.wait_until_finished()
    finally:
      writer.close()
    if self.config.eval_only and train_cfg.export_model:
      self.export(state.params, evaluations[-1], start)
    return self.results(evaluations, step, total, stop_reason, timed_steps, timed_s)

  def export(self, params, evaluation: dict[str, Any], start) -> None:
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
        "init": self.config.init,
        "init_source": start.source,
        "classifier_dropout": float(self.config.model.classifier_dropout),
      },
      tokenizer=self.tokenizer,
    )
    old = target + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(target):
      os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)
    if self.config.train.export_hf:
      hf_dir = os.path.join(self.workdir, "hf")
      shutil.rmtree(hf_dir, ignore_errors=True)
      export_finetuned_to_hf(target, hf_dir)

  def results(self, evaluations, step, total, stop_reason, timed_steps, timed_s) -> dict[str, Any]:
    settings = self.settings
    best, last = _best(evaluations), (evaluations[-1] if evaluations else None)
    reported = best if settings.report == "best" else last
    return {
      "task": settings.task,
      "lr": settings.lr,
      "seed": settings.seed,
      "init": self.config.init,
      "from_scratch": bool(self.config.from_scratch),
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
      "majority_class": self.majority_class(),
      "steps_per_s": timed_steps / timed_s if timed_s else None,
    }

  def majority_class(self) -> dict[str, Any] | None:
    """The dev scores of predicting the train set's most common label for every example: the
    floor a classifier has to beat (summary.md, dev_curves.png). None for regression."""
    if self.settings.num_labels == 1 or not len(self.data.train):
      return None
    label = int(np.bincount(np.asarray(self.data.train.labels, np.int64)).argmax())
    splits = {}
    for name, split in self.data.evals.items():
      logits = np.zeros((len(split), self.settings.num_labels), np.float32)
      logits[:, label] = 1.0
      with np.errstate(divide="ignore", invalid="ignore"):  # MCC/F1 of a constant: 0
        splits[name] = split_scores(self.settings, logits, np.asarray(split.labels))
    names = self.settings.label_names
    return {
      "label": names[label] if names is not None else label,
      "score": next(iter(splits.values()))["score"],
      "splits": splits,
    }


def split_scores(settings: RunSettings, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """The task's metrics on one dev split (fractions), its GLUE score and its accuracy.

  logits: float32 [N, C]; labels: [N] ids, or float targets for regression (scaled like the
  training targets: correlations do not change with the scale).
  """
  if settings.num_labels == 1:
    predictions = logits[:, 0].astype(np.float64)
  else:
    predictions = np.argmax(logits, axis=-1)
  metrics = metrics_of(settings.metric_names, predictions, labels)
  if settings.num_labels > 1:
    metrics.setdefault("accuracy", float(np.mean(predictions == labels)))
  else:
    metrics.setdefault("accuracy", metrics["score"])  # regression: select on the score
  metrics["examples"] = int(len(labels))
  return metrics


def _evaluation(update: int, epoch: float, result: dict[str, Any]) -> dict[str, Any]:
  return {
    "update": update,
    "epoch": epoch,
    "score": result["score"],
    "selection": result["selection"],
    "splits": result["splits"],
  }


def _evaluation_row(evaluation: dict[str, Any]) -> dict[str, float]:
  row = {
    "dev/score": evaluation["score"],
    "dev/selection": evaluation["selection"],
    "dev/epoch": evaluation["epoch"],
  }
  for split, metrics in evaluation["splits"].items():
    row.update({f"dev/{split}/{k}": v for k, v in metrics.items()})
  return row


def _evaluation_from_row(row: dict[str, Any]) -> dict[str, Any]:
  """An evaluation read back from its metrics.jsonl row (a resumed run's history)."""
  splits: dict[str, dict[str, float]] = {}
  for key, value in row.items():
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "dev":
      splits.setdefault(parts[1], {})[parts[2]] = value
  for metrics in splits.values():
    metrics["examples"] = int(metrics["examples"])
  return {
    "update": int(row["step"]),
    "epoch": row["dev/epoch"],
    "score": row["dev/score"],
    "selection": row["dev/selection"],
    "splits": splits,
  }


def _best(evaluations: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The first evaluation with the highest selection value (ties: the earlier one)."""
  best = None
  for e in evaluations:
    if best is None or e["selection"] > best["selection"]:
      best = e
  return best


def _describe(result: dict[str, Any]) -> str:
  parts = []
  for split, metrics in result["splits"].items():
    shown = ", ".join(
      f"{k} {100 * v:.2f}" for k, v in metrics.items() if k not in ("examples", "score")
    )
    parts.append(f"{split}: {shown}")
  return "; ".join(parts) + f" | score {100 * result['score']:.2f}"
