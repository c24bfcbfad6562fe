"""The command-line tools, one module each, installed as console scripts by pyproject.toml:

  d2v-train     (train.py)                  pretraining              commands/train.py
  d2v-finetune  (finetune.py)               fine-tuning / GLUE       commands/finetune.py
  d2v-sweep     (sweep.py)                  ablation sweeps          commands/sweep.py
  d2v-convert   (convert_torch_weights.py)  weight conversion        commands/convert.py
  d2v-embed     (python -m data2vec_jax.embed)         text in, features out
  d2v-prepare   (python -m data2vec_jax.data.prepare)  binarize a corpus
  d2v-compile   (python -m data2vec_jax.compile_for)   compile for a TPU topology, on any host

One command per tool, not one command with subcommands: each is its own absl (or argparse)
program with its own flags (absl's flag registry is global to a process), and each maps one to one
onto the checkout's script, so the README's commands translate by name. Flags are `--snake_case`
everywhere; `--help` exits 0 and, for the config-driven tools, lists the config's fields.
The scripts at the top of a checkout are thin shims over these modules.
"""
