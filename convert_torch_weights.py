#!/usr/bin/env python
"""Convert data2vec-text weights: the checkout's script for `d2v-convert`.

  python convert_torch_weights.py --from fairseq nlp_base.pt --to jax --output out/d2v

Everything lives in data2vec_jax/commands/convert.py (`--help` lists the flags).
"""

import sys

from data2vec_jax.commands.convert import main

if __name__ == "__main__":
  sys.exit(main())
