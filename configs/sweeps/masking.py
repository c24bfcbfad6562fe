"""Sweep: the masking strategy alone, with the release recipe's cosine schedule for both (the
paper's two Table 4 rows also change the lr schedule; configs/sweeps/table4.py runs those).

  python sweep.py --config configs/sweeps/masking.py:data=...,glue=... --workdir ...
"""

from data2vec_jax.configs.sweeps import glue


def get_config(arg=None):
  return glue.ablation_sweep(
    arg,
    name="masking",
    description="BERT masking (15%, 80/10/10) vs span masking (p 0.35, spans of 4)",
    axis="mask",
    values=("bert", "span"),
    pretrain_config="configs/ablations/masking.py",
    paper_note="Table 4 compares these masks with different lr schedules (table4 sweep); this "
    "sweep isolates the masking.",
  )
