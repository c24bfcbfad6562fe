"""Sweep: the smooth-L1 beta of the regression loss (paper §3.4: beta = 4 for NLP; 0 = MSE, as in
data2vec 2.0; Table 7 ran this axis for speech only).

  python sweep.py --config configs/sweeps/loss_beta.py:data=...,glue=... --workdir ...
"""

from data2vec_jax.configs.sweeps import glue


def get_config(arg=None):
  return glue.ablation_sweep(
    arg,
    name="loss_beta",
    description="smooth-L1 beta of the regression loss (0 = MSE)",
    axis="beta",
    values=("0", "0.25", "1", "4"),
    pretrain_config="configs/ablations/loss_beta.py",
    paper_note="Table 7 is speech only (WER, beta 0.08..1: 'relatively small effect').",
  )
