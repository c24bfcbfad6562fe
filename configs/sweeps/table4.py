"""Sweep: the paper's Table 4 rows that this codebase pretrains, each beside its printed numbers.

  python sweep.py --config configs/sweeps/table4.py:data=...,glue=... --workdir runs/table4

recipe = paper   -> "data2vec" (BERT masking, tri-stage lr, tau_n 100k): Avg. 82.7
         release -> "+ wav2vec 2.0 masking" (span masking 0.35 x 4, cosine lr): 82.9
         roberta -> "Baseline (RoBERTa re-trained in the BERT setup)": 82.5
(configs/pretrain.py). The BERT row is quoted from Wu et al. 2020, not trained by the paper.
"""

from data2vec_jax.configs.sweeps import glue


def get_config(arg=None):
  c = glue.ablation_sweep(
    arg,
    name="table4",
    description="data2vec paper Table 4: data2vec, + wav2vec 2.0 masking, RoBERTa baseline",
    axis="recipe",
    values=("paper", "release", "roberta"),
    pretrain_config="configs/pretrain.py",
    paper_note="",
    fixed_args=("model",),
  )
  c.paper_rows = {
    "paper": "data2vec",
    "release": "+ wav2vec 2.0 masking",
    "roberta": "Baseline (RoBERTa re-trained in the BERT setup)",
  }
  return c
