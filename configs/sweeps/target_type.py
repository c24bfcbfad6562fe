"""Sweep: which block output is the target (paper Table 5, run for speech only).

python sweep.py --config configs/sweeps/target_type.py:data=...,glue=... --workdir ...
"""

from data2vec_jax.configs.ablations import target_type
from data2vec_jax.configs.sweeps import glue


def get_config(arg=None):
  return glue.ablation_sweep(
    arg,
    name="target_type",
    description="the block feature used as the target (paper Table 5)",
    axis="target",
    values=target_type.TARGETS,
    pretrain_config="configs/ablations/target_type.py",
    paper_note="Table 5 is speech only (WER): FFN 13.1, FFN + residual 14.8, end of block 14.5.",
  )
