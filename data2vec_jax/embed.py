"""Text in, features out: sentence features from any model directory and the tokenizer it carries.

  d2v-embed --model demo_out/model --input texts.txt --output feats.npy \\
      [--layer N] [--pooling mean|cls] [--batch_size 32] [--truncate]

(`d2v-embed` is `python -m data2vec_jax.embed`; --batch-size still works.)

`--input`: one text per line (UTF-8; a blank line is the empty text). `--output`: a float32
[N, D] `.npy`, row i the features of line i. `--model`: a data2vec-jax model directory, a
Hugging Face directory or a fairseq `.pt` (`load_pretrained`), with the tokenizer that belongs to
it (`load_model_tokenizer`; one without a tokenizer is an error saying so).

Each text is encoded as fairseq (and the Hugging Face tokenizer we export) does: `<s>` text
`</s>`. Texts are batched in input order, padded with the pad id like `encode` (pads are masked
as attention keys and left out of the pooling), each batch padded to a multiple of 16 tokens so
few shapes are compiled. `--layer`: which hidden state (0 = the embedding output, L = the last
block, the default; negative counts from the end, as in Python). `--pooling`: `mean` over the
text's tokens, `<s>` and `</s>` included, or `cls` (the `<s>` position).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import numpy as np

from data2vec_jax import cli
from data2vec_jax.data.tokenizer import Tokenizer
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.weights.model_tokenizer import check_tokenizer_fits, load_model_tokenizer
from data2vec_jax.weights.pretrained import encode, load_pretrained

POOLINGS = ("mean", "cls")
_LENGTH_MULTIPLE = 16  # batch lengths are rounded up to this: one compile per 16 tokens of length


def tokenize(
  tokenizer: Tokenizer, texts: Sequence[str], max_length: int, *, truncate: bool = False
) -> list[np.ndarray]:
  """`<s>` ids `</s>` of every text (int32 [n_i + 2] each), fairseq's sentence encoding.

  Raises:
    ValueError: a text is longer than `max_length` tokens (the position table) and `truncate`
      is off. Truncation keeps the first `max_length - 1` tokens and the closing `</s>`.
  """
  vocab = tokenizer.vocab
  out = []
  for i, ids in enumerate(tokenizer.encode_batch(list(texts))):
    row = np.concatenate([[vocab.bos_id], ids, [vocab.eos_id]]).astype(np.int32)
    if len(row) > max_length:
      if not truncate:
        raise ValueError(
          f"text {i} is {len(row)} tokens with <s> and </s>, longer than the model's "
          f"{max_length}: pass truncate=True (--truncate) to keep its first {max_length}"
        )
      row = np.append(row[: max_length - 1], np.int32(vocab.eos_id))
    out.append(row)
  return out


def pad_batch(
  rows: Sequence[np.ndarray], pad_id: int, max_length: int
) -> tuple[np.ndarray, np.ndarray]:
  """(ids [B, T] int32, attention_mask [B, T] int32): rows padded with `pad_id` to the longest,
  rounded up to a multiple of 16 tokens (at most `max_length`)."""
  longest = max(len(r) for r in rows)
  length = min(-(-longest // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE, max_length)
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    ids[i, : len(row)] = row
    mask[i, : len(row)] = 1
  return ids, mask


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
  """[B, T, D] features + [B, T] mask -> [B, D] float32: the mean over real tokens, or `<s>`'s."""
  if pooling == "cls":
    return hidden[:, 0].astype(np.float32)
  if pooling == "mean":
    weights = mask.astype(np.float32)[..., None]
    # Pad positions' outputs are unspecified (see `encode`): zeroed, never averaged.
    summed = np.where(weights > 0, hidden, 0.0).sum(axis=1)
    return (summed / weights.sum(axis=1)).astype(np.float32)
  raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")


def embed(
  config: EncoderConfig,
  params: Any,
  tokenizer: Tokenizer | None,
  texts: Sequence[str],
  *,
  layer: int = -1,
  pooling: str = "mean",
  batch_size: int = 32,
  truncate: bool = False,
  progress: bool | None = None,
) -> np.ndarray:
  """Features of `texts`: float32 [len(texts), D], row i pooled from text i's hidden state.

  Args:
    config, params: the encoder (`load_pretrained`).
    tokenizer: the model's own (`load_model_tokenizer`).
    layer: index into the L+1 hidden states (0 = embedding output, -1 = last block).
    pooling: 'mean' (over the text's tokens, specials included) or 'cls' (`<s>`).
    batch_size: texts per forward pass.
    truncate: cut texts longer than the position table instead of raising.
    progress: show a progress bar (None: when there is more than one batch and stderr is a
      terminal).
  Raises:
    ValueError: no tokenizer, a tokenizer of another vocabulary, a bad layer/pooling/batch
      size, or an over-long text without `truncate`.
  """
  if tokenizer is None:
    raise ValueError(no_tokenizer_message("this model"))
  check_tokenizer_fits(tokenizer, config)
  if pooling not in POOLINGS:
    raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
  if not -(config.num_layers + 1) <= layer <= config.num_layers:
    raise ValueError(
      f"layer={layer}: the model has hidden states 0..{config.num_layers} (0 = embeddings)"
    )
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be at least 1")
  texts = list(texts)
  rows = tokenize(tokenizer, texts, config.max_sequence_length, truncate=truncate)
  out = np.zeros((len(texts), config.hidden_size), np.float32)
  starts = range(0, len(rows), batch_size)
  if progress is None:
    progress = len(starts) > 1 and sys.stderr.isatty()
  if progress:
    from tqdm import tqdm

    starts = tqdm(starts, desc="embed", unit="batch", file=sys.stderr)
  for start in starts:
    ids, mask = pad_batch(
      rows[start : start + batch_size], config.pad_id, config.max_sequence_length
    )
    hidden = np.asarray(encode(config, params, ids, mask).hidden_states[layer])
    out[start : start + len(ids)] = pool(hidden, mask, pooling)
  return out


def no_tokenizer_message(model: str) -> str:
  return (
    f"{model} carries no tokenizer, so text cannot be turned into its ids: add the one it was "
    "trained with (the corpus's spm.model, or a folder of vocab.json + merges.txt) with "
    "d2v-convert MODEL --to jax --output DIR --tokenizer TOKENIZER_PATH (in a checkout: python "
    "convert_torch_weights.py ...)"
  )


def read_texts(path: str) -> list[str]:
  """One text per line of a UTF-8 file (the newline removed; a blank line is the empty text).

  Raises:
    ValueError: a line that is not UTF-8, named `path:line` (1-based).
  """
  texts = []
  with open(path, "rb") as f:
    for number, data in enumerate(f, start=1):
      try:
        texts.append(data.decode("utf-8").rstrip("\r\n"))
      except UnicodeDecodeError as e:
        raise ValueError(
          f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
          "re-encode the file as UTF-8"
        ) from None
  return texts


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--model", required=True, help="model directory (or HF dir / fairseq .pt)")
  parser.add_argument("--input", required=True, help="UTF-8 text file, one text per line")
  parser.add_argument("--output", required=True, help="features file to write (.npy)")
  parser.add_argument("--layer", type=int, default=-1, help="hidden state (0=embeddings, -1=last)")
  parser.add_argument("--pooling", choices=POOLINGS, default="mean")
  cli.add_argument(parser, "batch_size", type=int, default=32, help="texts per batch")
  parser.add_argument("--truncate", action="store_true", help="cut over-long texts")
  args = parser.parse_args(argv)
  try:
    config, params = load_pretrained(args.model)
    tokenizer = load_model_tokenizer(args.model)
    if tokenizer is None:
      raise ValueError(no_tokenizer_message(args.model))
    texts = read_texts(args.input)
    features = embed(
      config,
      params,
      tokenizer,
      texts,
      layer=args.layer,
      pooling=args.pooling,
      batch_size=args.batch_size,
      truncate=args.truncate,
    )
  except (ValueError, OSError) as e:  # CheckpointError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 1
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  np.save(args.output, features)
  print(
    f"wrote {args.output}: {features.shape[0]} x {features.shape[1]} float32 features "
    f"(layer {args.layer}, {args.pooling} pooling)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
