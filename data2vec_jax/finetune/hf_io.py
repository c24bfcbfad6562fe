"""Fine-tuned classifiers in and out: Hugging Face directories and data2vec-jax model directories.

Our fine-tuned parameter tree is {'encoder': Encoder tree, 'classifier': head}, for both kinds:

  kind        model               head tree                         HF class (Data2VecTextFor...)
  'sequence'  SequenceClassifier  dense {kernel, bias}, out_proj {  SequenceClassification
                                  kernel [D, C], bias [C]}
  'token'     TokenClassifier     {kernel [D, C], bias [C]}         TokenClassification

In a heads dict (`weights.layout.Converted.heads`, a data2vec-jax directory's heads.safetensors)
the two heads have different names, `HEAD_NAMES[kind]` ('classifier' / 'token_classifier'),
because HF calls both `classifier` and only the key names tell them apart (see
`weights/hf.py`). A data2vec-jax directory whose `classifier` head has the token layout
({kernel, bias}) is read as a token classifier too.

Label names travel as HF `id2label` (row order of the output layer), or in a data2vec-jax
directory as `metadata['label_names']`.

  export_classifier_to_hf(out_dir, config, params, kind='sequence', label_names=['a', 'b', 'c'])
  config, params, names = classifier_params_from_checkpoint(out_dir, 'sequence', num_labels=3)
"""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

from data2vec_jax.data.tokenizer import Tokenizer
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.weights import CheckpointError, hf
from data2vec_jax.weights.model_tokenizer import load_model_tokenizer
from data2vec_jax.weights.pretrained import load_checkpoint, save_pretrained

Kind = Literal["sequence", "token"]
HEAD_NAMES: dict[str, str] = {"sequence": "classifier", "token": "token_classifier"}
ARCHITECTURES: dict[str, str] = {
  "sequence": "Data2VecTextForSequenceClassification",
  "token": "Data2VecTextForTokenClassification",
}


def _check_kind(kind: str) -> str:
  if kind not in HEAD_NAMES:
    raise ValueError(f"kind must be one of {sorted(HEAD_NAMES)}, got {kind!r}")
  return kind


def _split_params(params: Any, kind: str) -> tuple[Any, Any]:
  """{'encoder', 'classifier'} (jax or numpy, possibly boxed) -> host (encoder, head)."""
  # Boxed (nn.Partitioned) leaves come straight from `init`; device arrays may be sharded.
  params = jax.device_get(nn.meta.unbox(params))
  keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
  if not isinstance(params, Mapping) or "encoder" not in params or "classifier" not in params:
    raise CheckpointError(
      f"cannot export a {kind} classifier: params have no 'classifier' head or no 'encoder' "
      f"(got {keys}); pass the {ARCHITECTURES[kind]}-like tree {{'encoder', 'classifier'}} "
      f"of finetune.{'Sequence' if kind == 'sequence' else 'Token'}Classifier"
    )
  extra = sorted(set(params) - {"encoder", "classifier"})
  if extra:
    raise CheckpointError(
      f"cannot export a {kind} classifier: unexpected top-level params {extra} (expected "
      "exactly {'encoder', 'classifier'})"
    )
  return params["encoder"], params["classifier"]


def export_classifier_to_hf(
  directory: str | os.PathLike[str],
  config: EncoderConfig,
  params: Any,
  *,
  kind: Kind = "sequence",
  label_names: Sequence[str] | None = None,
  problem_type: str | None = None,
  finetuning_task: str | None = None,
  classifier_dropout: float | None = None,
  tokenizer: Tokenizer | None = None,
) -> list[str]:
  """Writes a fine-tuned classifier as an HF directory (config.json + model.safetensors, and the
  tokenizer's HF files when `tokenizer` is given, so `pipeline('text-classification')` works).

  Args:
    directory: created if needed; existing files are replaced.
    config: the encoder config.
    params: {'encoder': Encoder tree, 'classifier': head} of `SequenceClassifier` (kind
      'sequence') or `TokenClassifier` ('token'); jax or numpy arrays, boxed or not.
    kind: 'sequence' -> Data2VecTextForSequenceClassification, 'token' ->
      Data2VecTextForTokenClassification.
    label_names: one name per output row, in row order (-> id2label / label2id); None writes
      transformers' `LABEL_{i}`.
    problem_type: sequence only; None infers it as the model is trained here: 'regression' for a
      single output (MSE), else 'single_label_classification' (cross-entropy).
    finetuning_task: optional task name written to config.json (e.g. 'mnli').
    classifier_dropout: the head's dropout as trained, if it should be recorded (None leaves it
      out; transformers then uses hidden_dropout_prob when training further).
  Returns:
    The export notes.
  Raises:
    CheckpointError: no classifier head or a head of the other kind / wrong shapes, label names
      of the wrong count, or an invalid config field.
  """
  _check_kind(kind)
  encoder, head = _split_params(params, kind)
  name = HEAD_NAMES[kind]
  num_labels, problems = hf.classifier_head_problems(head, name, config.hidden_size)
  if problems:
    other = "token" if kind == "sequence" else "sequence"
    if not hf.classifier_head_problems(head, HEAD_NAMES[other], config.hidden_size)[1]:
      problems.append(f"it is a {other} classifier head: pass kind={other!r}")
    raise CheckpointError(
      f"cannot export a {kind} classifier: params['classifier'] does not fit hidden size "
      f"{config.hidden_size}: " + "; ".join(problems)
    )
  if kind == "sequence" and problem_type is None:
    problem_type = "regression" if num_labels == 1 else "single_label_classification"
  return hf.save_hf_dir(
    directory,
    config,
    encoder,
    heads={name: head},
    architecture=ARCHITECTURES[kind],
    label_names=label_names,
    problem_type=problem_type,
    classifier_dropout=classifier_dropout,
    finetuning_task=finetuning_task,
    tokenizer=tokenizer,
  )


def save_classifier_pretrained(
  directory: str | os.PathLike[str],
  config: EncoderConfig,
  params: Any,
  *,
  kind: Kind = "sequence",
  label_names: Sequence[str] | None = None,
  metadata: Mapping[str, Any] | None = None,
) -> None:
  """Writes a fine-tuned classifier as a data2vec-jax model directory
  (`weights.pretrained.save_pretrained`), its head under `HEAD_NAMES[kind]` and the label names
  in `metadata['label_names']`, so `classifier_params_from_checkpoint` reads it back.

  Raises:
    CheckpointError: as `export_classifier_to_hf` (missing or misshapen head, label count).
  """
  _check_kind(kind)
  encoder, head = _split_params(params, kind)
  num_labels, problems = hf.classifier_head_problems(head, HEAD_NAMES[kind], config.hidden_size)
  if problems:
    raise CheckpointError(
      f"cannot save a {kind} classifier: params['classifier'] does not fit: " + "; ".join(problems)
    )
  meta = dict(metadata or {})
  if label_names is not None:
    meta["label_names"] = _checked_names(label_names, num_labels, f"a {kind} classifier")
  save_pretrained(directory, config, encoder, head_params={HEAD_NAMES[kind]: head}, metadata=meta)


def _checked_names(names: Any, num_labels: int, what: str) -> list[str]:
  if isinstance(names, str) or not isinstance(names, Sequence):
    raise CheckpointError(f"label names of {what} must be a list of strings, got {names!r}")
  names = [str(n) for n in names]
  if len(names) != num_labels:
    raise CheckpointError(f"{len(names)} label names {names} for {what} with {num_labels} outputs")
  return names


def checkpoint_label_names(
  metadata: Mapping[str, Any], num_labels: int, path: str
) -> list[str] | None:
  """metadata['label_names'], else the carried HF id2label in row order; None when there are
  none or only transformers' placeholders `LABEL_{i}` (no names were ever given)."""
  what = f"{path}: the classifier"
  if metadata.get("label_names") is not None:
    return _checked_names(metadata["label_names"], num_labels, what)
  id2label = (metadata.get("hf_config") or {}).get("id2label")
  if not isinstance(id2label, Mapping) or not id2label:
    return None
  try:
    rows = sorted((int(k), str(v)) for k, v in id2label.items())
  except (TypeError, ValueError):
    raise CheckpointError(f"{path}: id2label keys are not row numbers: {id2label!r}") from None
  if [i for i, _ in rows] != list(range(len(rows))):
    raise CheckpointError(f"{path}: id2label rows {[i for i, _ in rows]} are not 0..C-1")
  names = _checked_names([n for _, n in rows], num_labels, what)
  if names == [f"LABEL_{i}" for i in range(num_labels)]:
    return None
  return names


def classifier_params_from_checkpoint(
  path: str | os.PathLike[str],
  kind: Kind = "sequence",
  *,
  num_labels: int | None = None,
) -> tuple[EncoderConfig, dict[str, Any], list[str] | None]:
  """(config, {'encoder', 'classifier'} numpy params, label names or None) of a fine-tuned model.

  Args:
    path: an HF fine-tuned directory (Data2VecText/Roberta For{Sequence,Token}Classification),
      or a data2vec-jax model directory with the head (`save_classifier_pretrained`, or
      `save_pretrained(..., head_params={'classifier': head}, metadata={'label_names': [...]})`).
    kind: 'sequence' (`SequenceClassifier`) or 'token' (`TokenClassifier`).
    num_labels: if given, the head must have exactly this many outputs.
  Returns:
    The encoder config, the params tree for `SequenceClassifier(config, C)` /
    `TokenClassifier(config, C)` (C = the head's output size), and the label names in row order
    (None when the source has none, or only HF's `LABEL_{i}` placeholders).
  Raises:
    CheckpointError: unreadable source, no head of this kind, a misshapen head, a label count
      other than `num_labels`, or label names that do not match the head.
  """
  _check_kind(kind)
  path = os.fspath(path)
  loaded = load_checkpoint(path)
  d = loaded.config.hidden_size
  name = HEAD_NAMES[kind]
  candidates = [name]
  if kind == "token":
    candidates.append("classifier")  # a data2vec-jax dir saved with head_params={'classifier'}
  head, problems, checked, n = None, [], "", 0
  for candidate in candidates:
    if candidate in loaded.heads:
      n, problems = hf.classifier_head_problems(loaded.heads[candidate], name, d)
      checked = candidate
      if not problems:
        head = loaded.heads[candidate]
        break
  if head is None:
    other = [k for k in ("sequence", "token") if k != kind][0]
    found = sorted(loaded.heads)
    hint = ""
    if HEAD_NAMES[other] in found or (other == "token" and "classifier" in found and problems):
      hint = f"; it may hold a {other} classifier: pass kind={other!r}"
    detail = f" (head {checked!r}: {'; '.join(problems)})" if problems else ""
    raise CheckpointError(
      f"{path}: no {kind} classifier head{detail}; heads found: {found}{hint}. Expected a "
      f"fine-tuned {ARCHITECTURES[kind]} directory or a data2vec-jax directory with a "
      f"{name!r} head"
    )
  if num_labels is not None and n != num_labels:
    raise CheckpointError(
      f"{path}: the {kind} classifier head has {n} labels, expected num_labels={num_labels}"
    )
  labels = checkpoint_label_names(loaded.metadata, n, path)
  params = {"encoder": loaded.params, "classifier": head}
  return loaded.config, params, labels


def export_finetuned_to_hf(model_dir: str, output: str) -> list[str]:
  """A fine-tuning run's `model/` directory (finetune.py) -> an HF sequence-classifier directory.

  Carries the directory's tokenizer (HF tokenizer files: `pipeline('text-classification',
  model=output)` tokenises as the run did); a directory without one is exported with a note.
  Uses the run's metadata: label names (-> id2label), the task (-> finetuning_task) and the
  regression target scale: fairseq trains STS-B on score / 5, so the output layer is divided by
  that scale here, and the exported model predicts raw 0-5 scores like HF-trained STS-B models
  (docs/reference/finetuning_reference.md §2.2). Returns the export notes.
  """
  config, params, labels = classifier_params_from_checkpoint(model_dir, "sequence")
  metadata = load_checkpoint(model_dir).metadata
  scale = float(metadata.get("regression_scale", 1.0) or 1.0)
  tokenizer = load_model_tokenizer(model_dir)
  notes = []
  if tokenizer is None:
    notes.append(
      f"{model_dir} carries no tokenizer: the export has none (transformers cannot tokenise "
      "text for it)"
    )
  head = params["classifier"]
  if int(np.shape(head["out_proj"]["bias"])[0]) == 1 and scale != 1.0:
    head = dict(head)
    head["out_proj"] = {k: np.asarray(v) / scale for k, v in head["out_proj"].items()}
    params = {"encoder": params["encoder"], "classifier": head}
    notes.append(f"regression output divided by the training target scale {scale:g}")
  return notes + export_classifier_to_hf(
    output,
    config,
    params,
    kind="sequence",
    label_names=labels,
    finetuning_task=metadata.get("task"),
    classifier_dropout=metadata.get("classifier_dropout"),
    tokenizer=tokenizer,
  )


def main(argv: list[str] | None = None) -> None:
  import argparse

  parser = argparse.ArgumentParser(
    description="Export a fine-tuned model directory (finetune.py's <workdir>/model) to a "
    "Hugging Face Data2VecTextForSequenceClassification directory."
  )
  parser.add_argument("--model_dir", required=True, help="the run's <workdir>/model")
  parser.add_argument("--output", required=True, help="the HF directory to write")
  args = parser.parse_args(argv)
  try:
    for note in export_finetuned_to_hf(args.model_dir, args.output):
      print(note)
  except CheckpointError as e:
    raise SystemExit(f"hf_io: error: {e}") from None
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
