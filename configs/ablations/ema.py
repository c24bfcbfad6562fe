"""Ablation: the EMA teacher schedule (paper §4.3: tau0=0.999, taue=0.9999, taun=100k; the yaml
uses taun=300k; paper §6: too low a decay risks collapse).

  python train.py --config configs/ablations/ema.py:end_decay=0.9999,anneal=100000 --workdir ...
"""

from data2vec_jax.configs import pretrain


def get_config(arg=None):
  args = pretrain.parse_arg(
    arg,
    {
      "model": "base",
      "recipe": "release",
      "decay": "0.999",
      "end_decay": "0.9999",
      "anneal": "300000",
      "layers_only": "true",
    },
  )
  c = pretrain.base_config(args["model"], args["recipe"])
  c.ema.update(
    ema_decay=float(args["decay"]),
    ema_end_decay=float(args["end_decay"]),
    ema_anneal_end_step=int(args["anneal"]),
    ema_transformer_layers_only=args["layers_only"].lower() in ("1", "true", "yes"),
  )
  return c
