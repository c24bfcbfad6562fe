#!/usr/bin/env python
"""Convert data2vec-text weights between PyTorch formats and data2vec-jax.

  # fairseq nlp_base.pt -> data2vec-jax directory (student; --ema for the EMA teacher)
  python convert_torch_weights.py --from fairseq nlp_base.pt --to jax --output out/d2v
  # Hugging Face directory -> data2vec-jax
  python convert_torch_weights.py --from hf data2vec-text-base/ --to jax --output out/d2v
  # anything -> Hugging Face directory (Data2VecTextModel, or ForMaskedLM if an LM head exists)
  python convert_torch_weights.py --from auto out/d2v --to hf --output out/hf \
      --hf-architecture Data2VecTextForMaskedLM

All logic lives in `data2vec_jax.weights` and `data2vec_jax.weights.pretrained`; this is argument parsing.
"""

from __future__ import annotations

import argparse
import os
import sys

from data2vec_jax.weights import EXPORT_ARCHITECTURES, CheckpointError, save_hf_dir
from data2vec_jax.weights.fairseq import load_fairseq
from data2vec_jax.weights.hf import load_hf_dir
from data2vec_jax.weights.pretrained import load_checkpoint, save_pretrained


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--from",
    dest="source_format",
    choices=("hf", "fairseq", "auto"),
    default="auto",
    help="format of INPUT (auto: decide from what is there)",
  )
  parser.add_argument("input", help="HF model directory, fairseq .pt, or data2vec-jax directory")
  parser.add_argument("--to", choices=("jax", "hf"), required=True)
  parser.add_argument("--output", required=True, help="output directory")
  parser.add_argument(
    "--ema",
    action="store_true",
    help="fairseq only: take the transformer blocks from the EMA teacher "
    "(encoder._ema); embeddings come from the student",
  )
  parser.add_argument(
    "--hf-architecture",
    default="Data2VecTextModel",
    choices=EXPORT_ARCHITECTURES,
    help="class to export for --to hf",
  )
  parser.add_argument(
    "--drop-token-type-rows",
    action="store_true",
    help="HF only: drop non-zero token_type_embeddings rows >= 1",
  )
  args = parser.parse_args(argv)

  try:
    if args.source_format == "fairseq":
      if not os.path.isfile(args.input):
        raise CheckpointError(f"{args.input}: --from fairseq expects a .pt file")
      converted = load_fairseq(args.input, use_ema=args.ema)
    elif args.source_format == "hf":
      if args.ema:
        raise CheckpointError("--ema applies to fairseq checkpoints only")
      converted = load_hf_dir(args.input, drop_token_type_rows=args.drop_token_type_rows)
    else:
      converted = load_checkpoint(
        args.input, use_ema=args.ema, drop_token_type_rows=args.drop_token_type_rows
      )
    print(f"read {args.input}")
    print(converted.summary())
    if args.to == "jax":
      save_pretrained(
        args.output,
        converted.config,
        converted.params,
        head_params=converted.heads or None,
        metadata=converted.metadata,
      )
      print(f"wrote data2vec-jax directory {args.output}")
    else:
      notes = save_hf_dir(
        args.output,
        converted.config,
        converted.params,
        heads=converted.heads,
        metadata=converted.metadata,
        architecture=args.hf_architecture,
      )
      for note in notes:
        print(f"note: {note}")
      print(f"wrote Hugging Face {args.hf_architecture} directory {args.output}")
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
