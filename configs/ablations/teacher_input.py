"""Ablation: what the EMA teacher encodes (paper §3 + footnote 4 vs the published fairseq code,
docs/reference/data2vec_text_reference.md §3.3; fairseq issue #4881).

  python train.py --config configs/ablations/teacher_input.py:input=masked_only --workdir ...
input = unmasked (paper, default) | masked_only (published code: pads except the masked tokens)
"""

from data2vec_jax.configs import pretrain

INPUTS = ("unmasked", "masked_only")


def get_config(arg=None):
  args = pretrain.parse_arg(arg, {"model": "base", "recipe": "release", "input": "unmasked"})
  if args["input"] not in INPUTS:
    raise ValueError(f"unknown teacher input {args['input']!r}; known: {INPUTS}")
  c = pretrain.base_config(args["model"], args["recipe"])
  c.objective.teacher_input = args["input"]
  return c
