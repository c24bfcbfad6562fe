"""Pretrain data2vec (text) in JAX: the checkout's script for `d2v-train`.

  python train.py --config configs/pretrain.py:model=base,recipe=release --workdir /ckpt/run1 \
      --config.data.path=/data/bin/train --config.optimizer.lr=1e-4

Everything lives in data2vec_jax/commands/train.py (`--help` lists the flags and the config's
fields); this shim keeps the README's `python train.py ...` commands working in a checkout.
"""

from data2vec_jax.commands.train import main

if __name__ == "__main__":
  main()
