"""Ablation: number of averaged teacher layers K (paper Figure 2, "layer averaging"; NLP = GLUE).

  python train.py --config configs/ablations/top_k.py:k=1 --workdir ...     (k in 1..num_layers)
The rest is the `release` recipe; vary `model=` as in configs/pretrain.py.
"""

from data2vec_jax.configs import pretrain


def get_config(arg=None):
  args = pretrain.parse_arg(arg, {"model": "base", "recipe": "release", "k": "10"})
  c = pretrain.base_config(args["model"], args["recipe"])
  k = int(args["k"])
  if not 1 <= k <= c.model.num_layers:
    raise ValueError(f"k={k} must be in [1, {c.model.num_layers}]")
  c.objective.average_top_k_layers = k
  return c
