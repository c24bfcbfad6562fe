"""Ablation: the masking strategy (paper Table 4 rows: "data2vec" uses BERT masking 15% with
80/10/10; "+ wav2vec 2.0 masking" uses spans of 4 with p=0.35, no random/unmasked tokens).

  python train.py --config configs/ablations/masking.py:mask=bert --workdir ...
mask = span (release yaml) | bert | span_custom (set prob= and span=)
"""

from data2vec_jax.configs import pretrain


def get_config(arg=None):
  args = pretrain.parse_arg(
    arg, {"model": "base", "recipe": "release", "mask": "span", "prob": "0.35", "span": "4"}
  )
  c = pretrain.base_config(args["model"], args["recipe"])
  if args["mask"] == "span":
    c.masking.update(
      mask_prob=0.35, mask_multiple_length=4, leave_unmasked_prob=0.0, random_token_prob=0.0
    )
  elif args["mask"] == "bert":
    c.masking.update(
      mask_prob=0.15, mask_multiple_length=1, leave_unmasked_prob=0.1, random_token_prob=0.1
    )
  elif args["mask"] == "span_custom":
    c.masking.update(
      mask_prob=float(args["prob"]),
      mask_multiple_length=int(args["span"]),
      leave_unmasked_prob=0.0,
      random_token_prob=0.0,
    )
  else:
    raise ValueError(f"unknown mask {args['mask']!r}; known: span, bert, span_custom")
  return c
