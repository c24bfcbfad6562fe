"""fairseq dictionaries (`dict.txt`) and the vocabulary facts the model needs.

fairseq's `Dictionary` always starts with four special symbols, in this order:

    <s> = 0 (bos)   <pad> = 1   </s> = 2 (eos)   <unk> = 3

followed by the symbols of `dict.txt` in file order (one `symbol count` pair per line). The masked-LM
task then appends `<mask>` with `add_symbol`, so for the released data2vec/RoBERTa model `<mask>` is
50264 in a 50265-row embedding table. This module reproduces exactly that numbering.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
SPECIAL_SYMBOLS = (BOS, PAD, EOS, UNK)  # ids 0..3, fairseq's fixed order
_OVERWRITE_FLAG = "#fairseq:overwrite"


@dataclasses.dataclass(frozen=True)
class VocabInfo:
  """What the model and the masking need to know about a vocabulary.

  `vocab_size` is the number of embedding rows, `<mask>` included.
  """

  vocab_size: int
  pad_id: int = 1
  bos_id: int = 0
  eos_id: int = 2
  unk_id: int = 3
  mask_id: int = -1

  def __post_init__(self) -> None:
    ids = {
      "pad_id": self.pad_id,
      "bos_id": self.bos_id,
      "eos_id": self.eos_id,
      "unk_id": self.unk_id,
      "mask_id": self.mask_id,
    }
    for name, value in ids.items():
      if not 0 <= value < self.vocab_size:
        raise ValueError(f"{name}={value} is outside the vocabulary [0, {self.vocab_size})")
    if len(set(ids.values())) != len(ids):
      raise ValueError(f"special ids must be distinct, got {ids}")


class Dictionary:
  """A fairseq `Dictionary`: symbol <-> id, with the four specials first.

  Only what the data pipeline needs: load/save `dict.txt`, `add_symbol`, lookups.
  """

  def __init__(self) -> None:
    self.symbols: list[str] = []
    self.counts: list[int] = []
    self._index: dict[str, int] = {}
    for symbol in SPECIAL_SYMBOLS:
      self.add_symbol(symbol, n=1)
    self.bos_index, self.pad_index, self.eos_index, self.unk_index = 0, 1, 2, 3

  def __len__(self) -> int:
    return len(self.symbols)

  def __contains__(self, symbol: str) -> bool:
    return symbol in self._index

  def __getitem__(self, idx: int) -> str:
    return self.symbols[idx]

  def index(self, symbol: str) -> int:
    """Id of `symbol`, or the `<unk>` id when it is not in the dictionary (as fairseq)."""
    return self._index.get(symbol, self.unk_index)

  def add_symbol(self, symbol: str, n: int = 1, overwrite: bool = False) -> int:
    """Append `symbol` (or add `n` to its count if present, as fairseq does); return its id."""
    if symbol in self._index and not overwrite:
      idx = self._index[symbol]
      self.counts[idx] += n
      return idx
    idx = len(self.symbols)
    self._index[symbol] = idx
    self.symbols.append(symbol)
    self.counts.append(n)
    return idx

  @property
  def mask_index(self) -> int:
    if MASK not in self._index:
      raise KeyError(
        "<mask> has not been added; call add_symbol('<mask>') (as the masked-LM task does)"
      )
    return self._index[MASK]

  def vocab_info(self) -> VocabInfo:
    """VocabInfo of this dictionary; `<mask>` must have been added."""
    return VocabInfo(
      vocab_size=len(self),
      pad_id=self.pad_index,
      bos_id=self.bos_index,
      eos_id=self.eos_index,
      unk_id=self.unk_index,
      mask_id=self.mask_index,
    )

  @classmethod
  def load(cls, path: str | os.PathLike, *, add_mask: bool = True) -> "Dictionary":
    """Read a fairseq `dict.txt` (`<symbol> <count>[ #fairseq:overwrite]` per line).

    With `add_mask` (the default) `<mask>` is appended afterwards, exactly as fairseq's
    `MaskedLMTask.setup_task` does, so ids match the released models.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"dictionary file not found: {path}")
    d = cls()
    with open(path, encoding="utf-8") as f:
      for lineno, raw in enumerate(f, 1):
        line = raw.rstrip("\n")
        if not line.strip():
          continue
        overwrite = False
        if line.endswith(" " + _OVERWRITE_FLAG):
          overwrite = True
          line = line[: -len(_OVERWRITE_FLAG) - 1]
        # Symbols may contain spaces; the count is the last field (fairseq uses rsplit too).
        parts = line.rsplit(" ", 1)
        if len(parts) != 2:
          raise ValueError(f"{path}:{lineno}: expected '<symbol> <count>', got {raw!r}")
        symbol, count = parts
        try:
          n = int(count)
        except ValueError:
          raise ValueError(f"{path}:{lineno}: count {count!r} is not an integer") from None
        if symbol in d._index and not overwrite:
          raise ValueError(
            f"{path}:{lineno}: duplicate symbol {symbol!r} "
            f"(fairseq requires '{_OVERWRITE_FLAG}' to redefine it)"
          )
        d.add_symbol(symbol, n=n, overwrite=overwrite)
    if add_mask:
      d.add_symbol(MASK)
    return d

  def save(self, path: str | os.PathLike) -> None:
    """Write `dict.txt` in fairseq's format: every symbol after the 4 specials, `<mask>` excluded
    (fairseq re-adds it at load time)."""
    with open(path, "w", encoding="utf-8") as f:
      for symbol, count in zip(
        self.symbols[len(SPECIAL_SYMBOLS) :], self.counts[len(SPECIAL_SYMBOLS) :]
      ):
        if symbol == MASK:
          continue
        if "\n" in symbol:
          raise ValueError(
            f"symbol {symbol!r} contains a newline and cannot be written to dict.txt"
          )
        f.write(f"{symbol} {count}\n")

  @classmethod
  def from_symbols(
    cls, symbols: Iterable[str], counts: Iterable[int] | None = None, *, add_mask: bool = True
  ) -> "Dictionary":
    """Dictionary with the specials, then `symbols` in order (then `<mask>` if `add_mask`)."""
    d = cls()
    symbols = list(symbols)
    counts = list(counts) if counts is not None else [0] * len(symbols)
    for s, n in zip(symbols, counts, strict=True):
      if s in d._index:
        raise ValueError(f"duplicate symbol {s!r}")
      d.add_symbol(s, n=n)
    if add_mask:
      d.add_symbol(MASK)
    return d
