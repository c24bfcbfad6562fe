"""Run an ablation sweep: the checkout's script for `d2v-sweep` (data2vec_jax/commands/sweep.py).

  python sweep.py --config configs/sweeps/top_k.py:data=data/bin/train,glue=glue_data \
      --workdir runs/sweep_top_k          # --list, --cell, --stage, --aggregate: see --help
"""

from data2vec_jax.commands.sweep import main

if __name__ == "__main__":
  main()
