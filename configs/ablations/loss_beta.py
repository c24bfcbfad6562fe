"""Ablation: the regression loss (paper §3.4: smooth L1 with beta=4 for NLP; beta=0 is MSE as in
data2vec 2.0 text).

  python train.py --config configs/ablations/loss_beta.py:beta=0 --workdir ...
"""

from data2vec_jax.configs import pretrain


def get_config(arg=None):
  args = pretrain.parse_arg(arg, {"model": "base", "recipe": "release", "beta": "4", "scale": "1"})
  c = pretrain.base_config(args["model"], args["recipe"])
  c.objective.loss_beta = float(args["beta"])
  c.objective.loss_scale = float(args["scale"])  # <= 0 means 1/sqrt(D)
  return c
