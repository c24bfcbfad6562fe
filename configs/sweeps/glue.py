"""What every shipped ablation sweep shares: a pretraining config per value of one axis, then the
paper's GLUE fine-tuning protocol on each (configs/finetune.py:task=glue,grid=paper: eight tasks,
lr in {1e-5, 2e-5, 3e-5, 4e-5}, seeds 1..5, one lr for all tasks), scored against Table 4.

Arguments after the colon of every sweep file (configs/sweeps/<axis>.py:key=value,...):
  model   = tiny | small | base | large (default base, the paper's ablation size)
  recipe  = release | paper | roberta (default release; the axis files that vary it ignore it)
  values  = the axis's values separated by ';' (default: the file's list)
  data    = pretraining data (data.path of configs/pretrain.py, e.g. data/bin/train)
  glue    = the GLUE data directory (data.path of configs/finetune.py, e.g. glue_data)
  steps   = pretraining updates per cell ('' = the recipe's 1M; the paper does not say how long
            its NLP ablations pretrained, so a shorter budget is a choice to report)
  tasks   = GLUE tasks separated by ';' (default the paper's eight; e.g. rte;mrpc;cola;stsb for a
            cheaper sweep, whose average is then not the GLUE Avg-8)
  grid    = paper (4 lrs x 5 seeds) | none (each task's yaml lr, seed 1)
"""

from __future__ import annotations

import ml_collections

from data2vec_jax.configs import pretrain

ARGS = {
  "model": "base",
  "recipe": "release",
  "values": "",
  "data": "",
  "glue": "",
  "steps": "",
  "tasks": "",
  "grid": "paper",
}


def ablation_sweep(
  arg: str | None,
  *,
  name: str,
  description: str,
  axis: str,
  values: tuple[str, ...],
  pretrain_config: str,
  paper_note: str,
  fixed_args: tuple[str, ...] = ("model", "recipe"),
) -> ml_collections.ConfigDict:
  """The sweep definition (data2vec_jax/sweep/definition.py) of one axis of `pretrain_config`.
  `fixed_args`: the config file's arguments this sweep passes from its own (model, recipe)."""
  args = pretrain.parse_arg(arg, ARGS)
  c = ml_collections.ConfigDict()
  c.name = name
  c.description = description
  c.axis = axis
  c.label = ""
  c.axis_values = tuple(v for v in args["values"].split(";") if v) or tuple(values)
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.config = pretrain_config
  c.pretrain.args = ",".join(f"{k}={args[k]}" for k in fixed_args)
  overrides = []
  if args["data"]:
    overrides.append(f"data.path={args['data']}")
  if args["steps"]:
    overrides += [
      f"train.num_steps={int(args['steps'])}",
      f"optimizer.max_steps={int(args['steps'])}",
    ]
  c.pretrain.overrides = tuple(overrides)
  c.finetune = ml_collections.ConfigDict()
  c.finetune.config = f"configs/finetune.py:task=glue,grid={args['grid']}"
  overrides = []
  if args["glue"]:
    overrides.append(f"data.path={args['glue']}")
  if args["tasks"]:
    tasks = tuple(t for t in args["tasks"].split(";") if t)
    overrides.append(f"grid.tasks={tasks!r}")
  c.finetune.overrides = tuple(overrides)
  c.paper_rows = ml_collections.ConfigDict()
  c.paper_note = paper_note
  return c
