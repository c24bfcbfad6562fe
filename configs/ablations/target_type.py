"""Ablation: which block feature is the target (paper Table 5; run for speech in the paper).

  python train.py --config configs/ablations/target_type.py:target=ffn_residual --workdir ...
target = ffn (default; FFN output before the residual) | ffn_residual | end_of_block
"""

from data2vec_jax.configs import pretrain

TARGETS = ("ffn", "ffn_residual", "end_of_block")


def get_config(arg=None):
  args = pretrain.parse_arg(arg, {"model": "base", "recipe": "release", "target": "ffn"})
  if args["target"] not in TARGETS:
    raise ValueError(f"unknown target {args['target']!r}; known: {TARGETS}")
  c = pretrain.base_config(args["model"], args["recipe"])
  c.objective.target_type = args["target"]
  return c
