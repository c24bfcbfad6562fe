"""Sweep: the EMA teacher's anneal length tau_n (paper §4.3: 100k; the released yaml: 300k).

  python sweep.py --config configs/sweeps/ema.py:data=...,glue=... --workdir ...

Another EMA axis: --config.axis=end_decay --config.axis_values="('0.999','0.9999','0.99999')".
"""

from data2vec_jax.configs.sweeps import glue


def get_config(arg=None):
  return glue.ablation_sweep(
    arg,
    name="ema",
    description="steps over which the EMA decay rises from 0.999 to 0.9999",
    axis="anneal",
    values=("30000", "100000", "300000"),
    pretrain_config="configs/ablations/ema.py",
    paper_note="no numbers: §6 warns that too low a decay risks collapse.",
  )
