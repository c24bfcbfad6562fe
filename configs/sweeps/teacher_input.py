"""Sweep: what the EMA teacher encodes: the unmasked sentence (paper) or the published code's
masked-only input (docs/reference/data2vec_text_reference.md §3.3, fairseq issue #4881).

  python sweep.py --config configs/sweeps/teacher_input.py:data=...,glue=... --workdir ...
"""

from data2vec_jax.configs.ablations import teacher_input
from data2vec_jax.configs.sweeps import glue


def get_config(arg=None):
  return glue.ablation_sweep(
    arg,
    name="teacher_input",
    description="the teacher's input: the unmasked sentence or the published code's",
    axis="input",
    values=teacher_input.INPUTS,
    pretrain_config="configs/ablations/teacher_input.py",
    paper_note="no numbers: footnote 4 says masking inside the teacher lowered accuracy.",
  )
