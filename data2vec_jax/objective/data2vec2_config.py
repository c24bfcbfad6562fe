"""data2vec 2.0's own hyper-parameters (`Data2Vec2Config`) and the decoder they describe.

Read only by kind 'data2vec2' (`data2vec_jax/objective/data2vec2.py`); `ObjectiveConfig` holds
one as its `data2vec2` field, so the v1 objective's fields stay its own. The names and defaults
are fairseq's text yaml (docs/reference/data2vec2_text_reference.md §3.4, §4). A leaf module:
`objective/loss.py` (ObjectiveConfig, the model's decoder head) and `objective/data2vec2.py`
(which imports loss.py) both read it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from data2vec_jax import strict_config
from data2vec_jax.model.config import EncoderConfig
from data2vec_jax.model.decoder import Decoder1d


@dataclasses.dataclass(frozen=True)
class Data2Vec2Config(strict_config.StrictConfig):
  """Masking on the device, the clones and the convolutional decoder of data2vec 2.0.

  Attributes:
    clone_batch: M masked views of each sentence, one teacher pass per sentence (yaml 8).
    mask_prob: fraction of each (padded) row masked on the device; every row keeps exactly
      int(T * (1 - mask_prob)) tokens (yaml 0.48: 266 of 512).
    mask_noise_std: std of the Gaussian noise in the decoder's masked slots (yaml 0.01).
    decoder_dim, decoder_kernel, decoder_layers, decoder_groups, decoder_residual,
      projection_layers, projection_ratio: `model.decoder.Decoder1d` (yaml 768, 9, 5, 1, False,
      2, 2.0).
    decoder_input_dropout: dropout on the encoder output before the decoder (yaml 0.1).
  """

  clone_batch: int = 8
  mask_prob: float = 0.48
  mask_noise_std: float = 0.01
  decoder_dim: int = 768
  decoder_kernel: int = 9
  decoder_layers: int = 5
  decoder_groups: int = 1
  decoder_residual: bool = False
  projection_layers: int = 2
  projection_ratio: float = 2.0
  decoder_input_dropout: float = 0.1

  def __post_init__(self):
    if self.clone_batch < 1:
      raise ValueError(f"clone_batch must be >= 1, got {self.clone_batch}")
    if not 0.0 < self.mask_prob < 1.0:
      raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
    if self.mask_noise_std < 0:
      raise ValueError(f"mask_noise_std must be >= 0, got {self.mask_noise_std}")
    for name in ("decoder_dim", "decoder_layers", "decoder_groups", "projection_layers"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.decoder_kernel < 1 or self.decoder_kernel % 2 == 0:
      raise ValueError(f"decoder_kernel must be odd and >= 1, got {self.decoder_kernel}")
    if not 0.0 <= self.decoder_input_dropout < 1.0:
      raise ValueError(f"decoder_input_dropout must be in [0, 1), got {self.decoder_input_dropout}")


# Its fields, which a `config.objective` section (and recipe.json before issue 26) keeps flat.
FIELDS = tuple(f.name for f in dataclasses.fields(Data2Vec2Config))


def make_decoder(config: EncoderConfig, v2: Data2Vec2Config) -> Decoder1d:
  """data2vec 2.0's decoder as `v2`'s decoder_* / projection_* fields describe it (the model's
  head, and the shape the FLOP accounting counts)."""
  return Decoder1d(
    config.hidden_size,
    dim=v2.decoder_dim,
    kernel=v2.decoder_kernel,
    layers=v2.decoder_layers,
    groups=v2.decoder_groups,
    residual=v2.decoder_residual,
    projection_layers=v2.projection_layers,
    projection_ratio=v2.projection_ratio,
    dtype=jnp.dtype(config.dtype),
    param_dtype=jnp.dtype(config.param_dtype),
  )
