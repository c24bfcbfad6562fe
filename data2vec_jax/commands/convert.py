"""Convert data2vec-text weights between PyTorch formats and data2vec-jax (`d2v-convert`, or
`d2v-convert` in a checkout).

  # fairseq nlp_base.pt -> data2vec-jax directory (student; --ema for the EMA teacher); a
  # data2vec 2.0 nlp_base.pt (modality_encoders.TEXT.*) is recognised and converted the same way
  d2v-convert --from fairseq nlp_base.pt --to jax --output out/d2v
  # Hugging Face directory -> data2vec-jax
  d2v-convert --from hf data2vec-text-base/ --to jax --output out/d2v
  # anything -> Hugging Face directory (Data2VecTextModel, or ForMaskedLM if an LM head exists)
  d2v-convert --from auto out/d2v --to hf --output out/hf \
      --hf_architecture Data2VecTextForMaskedLM

The model's tokenizer travels with it: the one INPUT carries (a data2vec-jax or HF directory's,
or tokenizer files next to a .pt), or --tokenizer PATH (a model directory, a directory of
`vocab.json` + `merges.txt` [+ `dict.txt`] or fairseq's `encoder.json` + `vocab.bpe` +
`dict.txt`, or a sentencepiece `.model`). Writing an HF directory without one is refused unless
--no_tokenizer says so (`AutoTokenizer` would otherwise build a useless default).

Flags are --snake_case (the old --kebab-case spellings still work). All logic lives in
`data2vec_jax.weights` and `data2vec_jax.weights.pretrained`; this is argument parsing.
"""

from __future__ import annotations

import argparse
import os
import sys

from data2vec_jax import cli
from data2vec_jax.data.tokenizer import SentencePieceTokenizer, Tokenizer
from data2vec_jax.weights import EXPORT_ARCHITECTURES, CheckpointError, Converted, save_hf_dir
from data2vec_jax.weights.fairseq import load_fairseq
from data2vec_jax.weights.hf import load_hf_dir
from data2vec_jax.weights.model_tokenizer import load_model_tokenizer
from data2vec_jax.weights.pretrained import load_checkpoint, save_pretrained


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    converted = _read_input(args)
    print(f"read {args.input}")
    print(converted.summary())
    tokenizer = _find_tokenizer(args)
    if args.to == "jax":
      _write_jax(args, converted, tokenizer)
    else:
      _write_hf(args, converted, tokenizer)
  except (CheckpointError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog=cli.prog_name(),
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
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
  cli.add_argument(
    parser,
    "hf_architecture",
    default="Data2VecTextModel",
    choices=EXPORT_ARCHITECTURES,
    help="class to export for --to hf",
  )
  cli.add_argument(
    parser,
    "drop_token_type_rows",
    action="store_true",
    help="HF only: drop non-zero token_type_embeddings rows >= 1",
  )
  parser.add_argument(
    "--tokenizer",
    default=None,
    help="the model's tokenizer, when INPUT carries none (see above)",
  )
  cli.add_argument(
    parser,
    "no_tokenizer",
    action="store_true",
    help="write no tokenizer (weights only), even if one is found",
  )
  return parser


def _read_input(args: argparse.Namespace) -> Converted:
  """INPUT in the format --from names (auto: whatever is there)."""
  if args.source_format == "fairseq":
    if not os.path.isfile(args.input):
      raise CheckpointError(f"{args.input}: --from fairseq expects a .pt file")
    return load_fairseq(args.input, use_ema=args.ema)
  if args.source_format == "hf":
    if args.ema:
      raise CheckpointError("--ema applies to fairseq checkpoints only")
    return load_hf_dir(args.input, drop_token_type_rows=args.drop_token_type_rows)
  return load_checkpoint(
    args.input, use_ema=args.ema, drop_token_type_rows=args.drop_token_type_rows
  )


def _find_tokenizer(args: argparse.Namespace) -> Tokenizer | None:
  """The tokenizer to write (None with --no_tokenizer, or where none is found and the output
  may go without one); `CheckpointError` where --tokenizer names none or --to hf needs one."""
  tokenizer = None if args.no_tokenizer else _tokenizer(args.tokenizer or args.input)
  if args.tokenizer and not args.no_tokenizer and tokenizer is None:
    raise CheckpointError(f"--tokenizer {args.tokenizer}: no tokenizer files found there")
  if tokenizer is not None:
    print(f"tokenizer: {tokenizer.kind} {sorted(tokenizer.files)} ({tokenizer.vocab})")
  elif args.to == "hf" and not args.no_tokenizer:
    raise CheckpointError(
      f"{args.tokenizer or args.input} has no tokenizer, and an HF directory without one is "
      "unusable (AutoTokenizer builds a 5-token default): give --tokenizer PATH, or "
      "--no_tokenizer to write weights only"
    )
  return tokenizer


def _write_jax(args: argparse.Namespace, converted: Converted, tokenizer: Tokenizer | None) -> None:
  save_pretrained(
    args.output,
    converted.config,
    converted.params,
    head_params=converted.heads or None,
    metadata=converted.metadata,
    tokenizer=tokenizer,
  )
  if tokenizer is None and not args.no_tokenizer:
    print("note: no tokenizer found; the directory has none (give --tokenizer PATH)")
  print(f"wrote data2vec-jax directory {args.output}")


def _write_hf(args: argparse.Namespace, converted: Converted, tokenizer: Tokenizer | None) -> None:
  notes = save_hf_dir(
    args.output,
    converted.config,
    converted.params,
    heads=converted.heads,
    metadata=converted.metadata,
    architecture=args.hf_architecture,
    tokenizer=tokenizer,
  )
  for note in notes:
    print(f"note: {note}")
  print(f"wrote Hugging Face {args.hf_architecture} directory {args.output}")


def _tokenizer(path: str) -> Tokenizer | None:
  """The tokenizer at `path`: a sentencepiece `.model` file, or what a model directory carries
  (or loose tokenizer files in it, or next to a `.pt`)."""
  if os.path.isfile(path) and path.endswith(".model"):
    return SentencePieceTokenizer(path)
  if not os.path.exists(path):
    raise CheckpointError(f"--tokenizer {path}: no such file or directory")
  return load_model_tokenizer(path)


if __name__ == "__main__":
  sys.exit(main())
