"""A model's tokenizer as Hugging Face files that `AutoTokenizer` loads and that give our ids.

`save_hf_tokenizer` writes, next to an exported model's `config.json`:
- **bpe**: `vocab.json` + `merges.txt` in fairseq-dictionary order (token -> the model's id,
  `<mask>` last), as the released `facebook/data2vec-text-base` does, read as `RobertaTokenizer`.
  Fairseq's files hold GPT-2 ids in `vocab.json` and map them through `dict.txt`; the exported
  `vocab.json` composes the two. A GPT-2 token the dictionary lacks (fairseq gives it `<unk>`)
  has no place in an HF vocabulary, so such a tokenizer is refused.
- **sentencepiece** (unigram models): a `tokenizer.json` built from the model's proto as
  `transformers.convert_slow_tokenizer.SpmConverter` builds one (the normalizer's precompiled
  charsmap, sentencepiece's whitespace rules, the dummy prefix, user-defined pieces kept whole),
  whose ids are the fairseq dictionary's (equal to the pieces' ids by construction, see
  `data.tokenizer.train_sentencepiece`), read as `PreTrainedTokenizerFast`. The
  `sentencepiece.model` and `dict.txt` are copied too, so importing the directory brings back the
  exact tokenizer. Other sentencepiece model types are refused.
- **tokenizers_json**: the `tokenizer.json`, with fairseq's `<s> ... </s>` template.
and `tokenizer_config.json` / `special_tokens_map.json`: the special tokens (`<s>` is also CLS,
`</s>` SEP) and `model_max_length` (the position table's capacity, 512 for Base).

Known difference: a literal special-token string in the text (e.g. "<mask>") is that special
token for `transformers`, while fairseq's tokenizers (and ours) spell it out as text pieces.

Importing reads such a directory's tokenizer back (`model_tokenizer.load_model_tokenizer`: the
copied `sentencepiece.model`, or `vocab.json` + `merges.txt`, or `tokenizer.json`).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

from data2vec_jax.data.dictionary import BOS, EOS, MASK, PAD, SPECIAL_SYMBOLS, UNK
from data2vec_jax.data.tokenizer import (
  BPETokenizer,
  SentencePieceTokenizer,
  Tokenizer,
  TokenizersJsonTokenizer,
)
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.weights import model_tokenizer
from data2vec_jax.weights.torch_io import CheckpointError

# Sentences the sentencepiece export is checked on before anything is written.
_PROBES = (
  "The Python language reference.",
  "",
  "  two  spaces,\ttab and\nnewline  ",
  "ünïcödé ñ 日本語 😀 ﬁ Ｆｕｌｌ",
  "x" * 80,
)


def _special_tokens() -> dict[str, str]:
  return {
    "bos_token": BOS,
    "eos_token": EOS,
    "unk_token": UNK,
    "sep_token": EOS,
    "cls_token": BOS,
    "pad_token": PAD,
    "mask_token": MASK,
  }


def _write_json(path: str, value: object) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, ensure_ascii=False, sort_keys=True)
    f.write("\n")


def save_hf_tokenizer(directory: str, tokenizer: Tokenizer, config: EncoderConfig) -> list[str]:
  """Writes the tokenizer files of an HF model directory (module docstring). Returns notes.

  Raises:
    CheckpointError: the tokenizer cannot be represented in HF with the same ids (the message
      says why), or it does not fit the model's vocabulary; nothing is written then.
  """
  try:
    model_tokenizer.check_tokenizer_fits(tokenizer, config)
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  tokenizer_config = {
    **_special_tokens(),
    "model_max_length": config.max_sequence_length,
    "clean_up_tokenization_spaces": False,
  }
  if isinstance(tokenizer, BPETokenizer):
    vocab = _roberta_vocab(tokenizer)  # raises before anything is written
    os.makedirs(directory, exist_ok=True)
    _write_json(os.path.join(directory, "vocab.json"), vocab)
    shutil.copyfile(tokenizer.files["merges_txt"], os.path.join(directory, "merges.txt"))
    tokenizer_config.update(
      tokenizer_class="RobertaTokenizer", add_prefix_space=False, errors="replace"
    )
    written = ["vocab.json", "merges.txt"]
  elif isinstance(tokenizer, (SentencePieceTokenizer, TokenizersJsonTokenizer)):
    rust = (
      _tokenizer_from_sentencepiece(tokenizer)
      if isinstance(tokenizer, SentencePieceTokenizer)
      else _tokenizers_json(tokenizer)
    )
    os.makedirs(directory, exist_ok=True)
    rust.save(os.path.join(directory, "tokenizer.json"))
    written = ["tokenizer.json"]
    if isinstance(tokenizer, SentencePieceTokenizer):
      section = model_tokenizer.write_tokenizer(directory, tokenizer, config)
      written += sorted(section["files"].values())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
  else:
    raise CheckpointError(
      f"cannot export a {type(tokenizer).__name__} tokenizer to Hugging Face: only BPE, "
      "sentencepiece and tokenizer.json tokenizers are supported"
    )
  _write_json(os.path.join(directory, "tokenizer_config.json"), tokenizer_config)
  _write_json(os.path.join(directory, "special_tokens_map.json"), _special_tokens())
  return [
    f"wrote the {tokenizer.kind} tokenizer ({', '.join(written)}, tokenizer_config.json, "
    f"model_max_length {config.max_sequence_length})"
  ]


def _roberta_vocab(tokenizer: BPETokenizer) -> dict[str, int]:
  """token -> the model's id for every id (RoBERTa's vocab.json), or CheckpointError."""
  size, mask_id = tokenizer.vocab.vocab_size, tokenizer.vocab.mask_id
  lut = tokenizer.gpt2_to_fairseq
  if lut is None:  # a RoBERTa-style vocab.json: already the model's ids
    vocab = dict(tokenizer.bpe_vocab)
    vocab.setdefault(MASK, mask_id)
    return vocab
  gpt2_token = {i: t for t, i in tokenizer.bpe_vocab.items()}
  lacking = [
    gpt2_token[i] for i in np.flatnonzero(lut == tokenizer.vocab.unk_id) if i in gpt2_token
  ]
  if lacking:
    raise CheckpointError(
      f"cannot export the BPE tokenizer to Hugging Face: dict.txt lacks {len(lacking)} of its "
      f"{len(gpt2_token)} BPE tokens (e.g. {lacking[:3]}); fairseq maps them to <unk>, which an "
      "HF vocab.json cannot express. Export with a dict.txt that lists every GPT-2 id"
    )
  vocab: dict[str, int] = {}
  for fairseq_id, symbol in enumerate(tokenizer.dictionary.symbols):
    if symbol not in SPECIAL_SYMBOLS and symbol != MASK and symbol.isdigit():
      symbol = gpt2_token.get(int(symbol), symbol)
    if symbol in vocab:
      raise CheckpointError(
        f"cannot export the BPE tokenizer to Hugging Face: token {symbol!r} has two ids "
        f"({vocab[symbol]} and {fairseq_id}) in dict.txt"
      )
    vocab[symbol] = fairseq_id
  assert len(vocab) == size and vocab[MASK] == mask_id
  return vocab


def _tokenizer_from_sentencepiece(tokenizer: SentencePieceTokenizer):
  """A `tokenizers.Tokenizer` encoding like the sentencepiece model (ids included)."""
  from tokenizers import Tokenizer
  from tokenizers.models import Unigram

  path = tokenizer.files["sentencepiece_model"]
  proto = _unigram_proto(path)
  rust = Tokenizer(
    Unigram(
      vocab=[(p.piece, p.score) for p in proto.pieces],
      unk_id=proto.trainer_spec.unk_id,
      byte_fallback=proto.trainer_spec.byte_fallback,
    )
  )
  rust.normalizer = _sentencepiece_normalizer(proto.normalizer_spec)
  pre_tokenizer = _sentencepiece_pre_tokenizer(proto)
  if pre_tokenizer is not None:
    rust.pre_tokenizer = pre_tokenizer
  rust.decoder = _sentencepiece_decoder(proto.trainer_spec.byte_fallback)
  _add_fairseq_template(rust)
  probes = list(_PROBES) + [tokenizer.decode(range(4, min(tokenizer.vocab.vocab_size - 1, 200)))]
  for text in probes:
    ours, theirs = tokenizer.encode(text).tolist(), rust.encode(text, add_special_tokens=False).ids
    if ours != theirs:
      raise CheckpointError(
        f"cannot export {path} to Hugging Face: the converted tokenizer gives {theirs[:8]} for "
        f"{text[:40]!r} where sentencepiece gives {ours[:8]} (an unsupported normalization)"
      )
  return rust


def _unigram_proto(path: str):
  """The `ModelProto` of the sentencepiece model at `path`; CheckpointError unless it is a
  unigram model with whitespace as prefix (what the converter reproduces)."""
  from sentencepiece import sentencepiece_model_pb2 as spm_pb2

  proto = spm_pb2.ModelProto()
  with open(path, "rb") as f:
    proto.ParseFromString(f.read())
  model_type = spm_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
  if model_type != "UNIGRAM" or proto.trainer_spec.treat_whitespace_as_suffix:
    raise CheckpointError(
      f"cannot export {path} to Hugging Face: a {model_type.lower()} sentencepiece model"
      + (" with whitespace as suffix" if proto.trainer_spec.treat_whitespace_as_suffix else "")
      + "; only unigram models (train_sentencepiece's default) are converted"
    )
  return proto


def _sentencepiece_normalizer(spec):
  """sentencepiece's normalization (`spec`: its NormalizerSpec), in its order (as
  transformers' SpmConverter, legacy mode)."""
  from tokenizers import Regex, normalizers

  steps = []
  if spec.precompiled_charsmap:
    steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:  # spaces only: sentencepiece leaves tabs and newlines alone
    steps += [
      normalizers.Replace(Regex(r"\A +| +\z"), ""),
      normalizers.Replace(Regex(" {2,}"), " "),
    ]
  if spec.escape_whitespaces:
    steps.append(normalizers.Replace(" ", "▁"))
  if spec.add_dummy_prefix:
    # Metaspace skips the prefix when the text already starts with "▁"; sentencepiece does not.
    steps.append(normalizers.Replace(Regex(r"\A▁"), "▁▁"))
  return normalizers.Sequence(steps)


def _sentencepiece_pre_tokenizer(proto):
  """The dummy-prefix Metaspace and the split that keeps user-defined pieces whole; None when
  the model has neither."""
  from sentencepiece import sentencepiece_model_pb2 as spm_pb2
  from tokenizers import Regex, pre_tokenizers

  pre = []
  if proto.normalizer_spec.add_dummy_prefix:
    pre.append(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False))
  user_defined = [
    p.piece for p in proto.pieces if p.type == spm_pb2.ModelProto.SentencePiece.USER_DEFINED
  ]
  if user_defined:  # emitted whole, never merged
    pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
    pre.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
  return pre_tokenizers.Sequence(pre) if pre else None


def _sentencepiece_decoder(byte_fallback: bool):
  """'▁' back to spaces (byte pieces back to bytes with `byte_fallback`), the prefix stripped."""
  from tokenizers import decoders

  steps = [decoders.Replace("▁", " ")]
  if byte_fallback:
    steps.append(decoders.ByteFallback())
  steps += [decoders.Fuse(), decoders.Strip(content=" ", left=1)]
  return decoders.Sequence(steps)


def _tokenizers_json(tokenizer: TokenizersJsonTokenizer):
  from tokenizers import Tokenizer

  rust = Tokenizer.from_file(tokenizer.files["tokenizer_json"])
  _add_fairseq_template(rust)
  return rust


def _add_fairseq_template(rust) -> None:
  """`<s> A </s>` and `<s> A </s> </s> B </s>` (RoBERTa's pairs), as fairseq encodes them."""
  from tokenizers import processors

  rust.post_processor = processors.TemplateProcessing(
    single=f"{BOS} $A {EOS}",
    pair=f"{BOS} $A {EOS} {EOS} $B {EOS}",
    special_tokens=[(BOS, 0), (EOS, 2)],
  )
