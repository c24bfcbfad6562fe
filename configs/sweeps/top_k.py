"""Sweep: the number K of top teacher layers averaged into the target (paper Figure 2(b), NLP).

  python sweep.py --config configs/sweeps/top_k.py:data=data/bin/train,glue=glue_data \
      --workdir runs/sweep_top_k

K = 1..12 on Base (configs/ablations/top_k.py). Arguments: configs/sweeps/glue.py.
"""

from data2vec_jax.configs.sweeps import glue


def get_config(arg=None):
  return glue.ablation_sweep(
    arg,
    name="top_k",
    description="K teacher layers averaged into the target (paper Figure 2(b))",
    axis="k",
    values=tuple(str(k) for k in range(1, 13)),
    pretrain_config="configs/ablations/top_k.py",
    paper_note="Figure 2(b) plots this axis for NLP but its values were never published as "
    "numbers; the text says K > 1 beats K = 1 and the main run uses K = 10.",
  )
