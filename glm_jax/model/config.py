"""GLM model configuration: one dataclass and the published presets."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

RematPolicy = Literal["none", "minimal", "full"]


@dataclasses.dataclass(frozen=True)
class GLMConfig:
  """GLM v1 hyper-parameters.

  `vocab_size` is the tokenizer's size; the embedding table has `padded_vocab_size` rows (a multiple of
  128, as the reference pads it), and logits cover the padded size.
  """

  vocab_size: int = 30592
  num_layers: int = 24
  hidden_size: int = 1024  # E
  num_heads: int = 16  # H
  max_length: int = 512  # position tables have max_length + 1 rows
  mlp_ratio: int = 4
  layernorm_eps: float = 1e-5
  embedding_dropout: float = 0.1
  attention_dropout: float = 0.1
  hidden_dropout: float = 0.1
  init_std: float = 0.02
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype
  remat_policy: RematPolicy = "none"
  scan_layers: bool = True
  attention_implementation: str | None = None  # None: platform default (glm_jax.ops.attention)
  vocab_multiple: int = 128

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
    if self.remat_policy not in ("none", "minimal", "full"):
      raise ValueError(f"remat_policy={self.remat_policy!r}; expected 'none', 'minimal' or 'full'")

  @property
  def head_dim(self) -> int:  # D
    return self.hidden_size // self.num_heads

  @property
  def mlp_dim(self) -> int:
    return self.mlp_ratio * self.hidden_size

  @property
  def padded_vocab_size(self) -> int:
    m = self.vocab_multiple
    return -(-self.vocab_size // m) * m

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> "GLMConfig":
    return dataclasses.replace(self, **changes)


# Published GLM v1 shapes (layers / hidden / heads). BERT-vocabulary models pad 30522 + 2 to 30592;
# GPT-2-vocabulary models pad 50257 + specials to 50304.
PRESETS: dict[str, GLMConfig] = {
  "tiny": GLMConfig(vocab_size=4096, num_layers=2, hidden_size=128, num_heads=4, max_length=256),
  "base": GLMConfig(vocab_size=30592, num_layers=12, hidden_size=768, num_heads=12, max_length=512),
  "large": GLMConfig(vocab_size=30592, num_layers=24, hidden_size=1024, num_heads=16, max_length=512),
  "410m": GLMConfig(vocab_size=30592, num_layers=30, hidden_size=1024, num_heads=16, max_length=512),
  "515m": GLMConfig(vocab_size=30592, num_layers=30, hidden_size=1152, num_heads=18, max_length=512),
  "2b": GLMConfig(vocab_size=50304, num_layers=36, hidden_size=2048, num_heads=32, max_length=1024),
  "10b": GLMConfig(vocab_size=50304, num_layers=48, hidden_size=4096, num_heads=64, max_length=1024),
}


def preset(name: str, **overrides) -> GLMConfig:
  """A preset by name, with field overrides (e.g. `preset("large", vocab_size=32000)`)."""
  if name not in PRESETS:
    raise ValueError(f"unknown GLM preset {name!r}; expected one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def num_params(config: GLMConfig) -> int:
  """Analytic parameter count (embeddings tied to the output layer, so counted once)."""
  e, f, n = config.hidden_size, config.mlp_dim, config.num_layers
  embeddings = config.padded_vocab_size * e + 2 * (config.max_length + 1) * e
  per_layer = (
    2 * e  # input LayerNorm
    + 3 * e * e
    + 3 * e  # fused QKV
    + e * e
    + e  # attention output projection
    + 2 * e  # post-attention LayerNorm
    + e * f
    + f  # MLP in
    + f * e
    + e  # MLP out
  )
  return embeddings + n * per_layer + 2 * e  # + final LayerNorm
