"""Sweep: normalisation of the teacher targets (paper §3.3; no NLP table in the paper).

  python sweep.py --config configs/sweeps/target_norm.py:data=...,glue=... --workdir ...

Values: configs/ablations/target_norm.py's norms. Arguments: configs/sweeps/glue.py.
"""

from data2vec_jax.configs.ablations import target_norm
from data2vec_jax.configs.sweeps import glue


def get_config(arg=None):
  return glue.ablation_sweep(
    arg,
    name="target_norm",
    description="normalisation of the teacher's layer outputs and of the averaged target",
    axis="norm",
    values=tuple(target_norm.NORMS),
    pretrain_config="configs/ablations/target_norm.py",
    paper_note="no NLP numbers: §3.3 states per-layer LayerNorm for NLP without an ablation.",
  )
