"""Ablation: normalisation of the teacher targets (paper §3.3 "Targets": per-layer parameter-less
LayerNorm for NLP, instance norm for speech; data2vec 2.0 text uses instance norm). The paper has
no NLP table for this axis; these configs let it be measured.

  python train.py --config configs/ablations/target_norm.py:norm=instance --workdir ...
norm = layer (release default) | instance | batch | none | layer+final_layer | layer+final_instance
"""

from data2vec_jax.configs import pretrain

NORMS = {
  "layer": dict(layer_norm_target_layer=True),
  "instance": dict(instance_norm_target_layer=True),
  "batch": dict(batch_norm_target_layer=True),
  "none": dict(),
  "layer+final_layer": dict(layer_norm_target_layer=True, layer_norm_targets=True),
  "layer+final_instance": dict(layer_norm_target_layer=True, instance_norm_targets=True),
}


def get_config(arg=None):
  args = pretrain.parse_arg(arg, {"model": "base", "recipe": "release", "norm": "layer"})
  if args["norm"] not in NORMS:
    raise ValueError(f"unknown norm {args['norm']!r}; known: {sorted(NORMS)}")
  c = pretrain.base_config(args["model"], args["recipe"])
  c.objective.update(
    layer_norm_target_layer=False,
    instance_norm_target_layer=False,
    batch_norm_target_layer=False,
    layer_norm_targets=False,
    instance_norm_targets=False,
  )
  c.objective.update(**NORMS[args["norm"]])
  return c
