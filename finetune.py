"""Fine-tune a pretrained data2vec text model: the checkout's script for `d2v-finetune`.

  python finetune.py --config configs/finetune.py:task=rte --workdir runs/rte \
      --config.init=runs/base --config.data.path=glue_data

Everything lives in data2vec_jax/commands/finetune.py (`--help` lists the flags and the config's
fields); this shim keeps the README's `python finetune.py ...` commands working in a checkout.
"""

from data2vec_jax.commands.finetune import main

if __name__ == "__main__":
  main()
