"""The paper's GLUE fine-tuning recipe per task, and what each task is evaluated on.

Values are fairseq's RoBERTa fine-tuning yamls (`examples/roberta/config/finetuning/<task>.yaml`),
which the data2vec v1 README uses unchanged (docs/reference/finetuning_reference.md §1.2):
sentences per batch, peak lr, `max_update` (the end of the linear decay) and `warmup_updates`;
shared by all tasks: at most 10 epochs, Adam (0.9, 0.98, 1e-6), decoupled weight decay 0.1 on
every parameter, no clipping, dropout 0.1, attention dropout 0.1, pooler (head) dropout 0.0,
512 positions. Training stops at `min(max_update, 10 epochs)`, as fairseq's two limits do; the
schedule always decays towards `max_update` (so RTE ends at ~25% of its peak lr, as in fairseq).

The paper's protocol on top (§1.1, §1.7): lr in {1e-5, 2e-5, 3e-5, 4e-5} x 5 seeds per task, the
mean over seeds of each run's best dev score over its end-of-epoch evaluations.
"""

from __future__ import annotations

import dataclasses
import difflib

from data2vec_jax.finetune.glue_tsv import LABEL_NAMES


@dataclasses.dataclass(frozen=True)
class TaskRecipe:
  """One task's yaml values. `eval_splits`: the dev splits scored every evaluation; the first
  is the one a run's best evaluation is chosen on."""

  batch_size: int
  lr: float
  max_update: int
  warmup_updates: int
  num_labels: int
  eval_splits: tuple[str, ...] = ("validation",)
  regression_scale: float = 1.0  # fairseq trains STS-B on score / 5


GLUE_RECIPES: dict[str, TaskRecipe] = {
  "cola": TaskRecipe(16, 1e-5, 5336, 320, 2),
  "sst2": TaskRecipe(32, 1e-5, 20935, 1256, 2),
  "mrpc": TaskRecipe(16, 1e-5, 2296, 137, 2),
  "stsb": TaskRecipe(16, 2e-5, 3598, 214, 1, regression_scale=0.2),
  "qqp": TaskRecipe(32, 1e-5, 113272, 28318, 2),
  "mnli": TaskRecipe(
    32, 1e-5, 123873, 7432, 3, eval_splits=("validation_matched", "validation_mismatched")
  ),
  "qnli": TaskRecipe(32, 1e-5, 33112, 1986, 2),
  "rte": TaskRecipe(16, 2e-5, 2036, 122, 2),
}
# Not in the paper's average; fairseq ships no yaml for it. RTE's values, by its size.
GLUE_RECIPES["wnli"] = dataclasses.replace(GLUE_RECIPES["rte"])

# The eight tasks of the paper's GLUE average, in Table 4's order.
PAPER_TASKS = ("mnli", "qnli", "rte", "mrpc", "qqp", "stsb", "cola", "sst2")
PAPER_LRS = (1e-5, 2e-5, 3e-5, 4e-5)
PAPER_SEEDS = (1, 2, 3, 4, 5)
MAX_EPOCHS = 10

# GLUE's directory names (download_glue_data.py) and fairseq's binarized ones (<name>-bin).
GLUE_DIR_NAMES = {
  "cola": "CoLA",
  "sst2": "SST-2",
  "mrpc": "MRPC",
  "stsb": "STS-B",
  "qqp": "QQP",
  "mnli": "MNLI",
  "qnli": "QNLI",
  "rte": "RTE",
  "wnli": "WNLI",
}


def label_names(task: str) -> tuple[str, ...] | None:
  """TFDS/HF ClassLabel names of a GLUE task's ids; None for STS-B (regression)."""
  return LABEL_NAMES.get(task)


def check_task_name(task: str) -> None:
  """A task that is not GLUE's is a task of your own (data.source=generic), unless its name is a
  near-miss of a GLUE task ('rtee', 'sst-2'): that is a typo, a ValueError with "did you mean"
  rather than a silent generic task that would then look for rtee/ files. A task of your own
  whose name happens to be close to a GLUE task ('snli', 'sst') is named with the config
  argument `own=true`, which skips this check (configs/finetune.py)."""
  known = [*GLUE_RECIPES, "glue"]
  if task in known:
    return
  close = difflib.get_close_matches(task.lower(), known, n=1, cutoff=0.6)
  if close or task.lower() in known:
    guess = close[0] if close else task.lower()
    raise ValueError(
      f"task={task!r} is not a GLUE task (did you mean {guess!r}?); GLUE tasks: "
      f"{', '.join(known)}. For a task of your own with this name (data.source=generic) add "
      f"the config argument own=true (configs/finetune.py:task={task},own=true)"
    )
