"""GLM model configuration: one dataclass and the one table of model shapes (presets, published checkpoints)."""

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
  # Trained with the task masks [sMASK] / [gMASK] (GLM-2B/10B, the Chinese models, every model trained here): a text
  # with no blank is continued through an appended [gMASK]; without them (GLM-Base/Large/410M/515M/RoBERTa), [MASK].
  task_mask: bool = True

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


# The one table of model shapes: layers, hidden size E, heads H, max_length, vocabulary rows and, for the published
# THUDM GLM v1 checkpoints, their tokenizer family (glm_jax.data.tokenizers) and whether they were trained with task
# masks (GLMConfig.task_mask). Sources: the THUDM/GLM README and its config_tasks/model_blocklm_*.sh
# (`--max-position-embeddings`, or `--max-sequence-length` = max length + 1 in the older scripts; `--task-mask`). The
# vocabulary rows are the checkpoint's word-embedding rows: the tokenizer's size padded by the reference (BERT 30522
# + GLM's command tokens -> 30592; GPT-2 50257 and RoBERTa 50265 -> 50304; the Chinese cog-pretrain 50000 -> 50048),
# so `padded_vocab_size == vocab_size`. Position tables have max_length + 1 rows.
_SHAPES: dict[str, tuple[int, int, int, int, int, str | None, bool]] = {
  "tiny": (2, 128, 4, 256, 4096, None, True),  # the default 4,096-piece vocabulary (glm_jax.data.vocab)
  "glm-base": (12, 768, 12, 512, 30592, "bert", False),
  "glm-large": (24, 1024, 16, 512, 30592, "bert", False),
  "glm-410m": (30, 1024, 16, 512, 30592, "bert", False),
  "glm-515m": (30, 1152, 18, 512, 30592, "bert", False),
  "glm-roberta-large": (24, 1024, 16, 512, 50304, "roberta", False),
  "glm-2b": (36, 2048, 32, 1024, 50304, "gpt2", True),
  "glm-10b": (48, 4096, 64, 1024, 50304, "gpt2", True),
  "glm-large-chinese": (24, 1024, 16, 1024, 50048, "chinese_sp", True),
  "glm-10b-chinese": (48, 4096, 64, 1024, 50048, "chinese_sp", True),
}
PRESETS: dict[str, GLMConfig] = {
  name: GLMConfig(
    vocab_size=rows,
    num_layers=layers,
    hidden_size=hidden,
    num_heads=heads,
    max_length=max_length,
    task_mask=task_mask,
  )
  for name, (layers, hidden, heads, max_length, rows, _, task_mask) in _SHAPES.items()
}
# Published checkpoint -> its tokenizer family.
PUBLISHED: dict[str, str] = {name: family for name, (*_, family, _) in _SHAPES.items() if family}
# The short names of gin/models/*.gin.
ALIASES = {
  "base": "glm-base",
  "large": "glm-large",
  "410m": "glm-410m",
  "515m": "glm-515m",
  "2b": "glm-2b",
  "10b": "glm-10b",
}


def preset(name: str, **overrides) -> GLMConfig:
  """A preset by name (a published checkpoint's, e.g. "glm-10b", its short name "10b", or "tiny"), with field
  overrides (e.g. `preset("large", vocab_size=32000)`). Gin-friendly: every argument is a plain value."""
  canonical = ALIASES.get(name, name)
  if canonical not in PRESETS:
    raise ValueError(f"unknown GLM preset {name!r}; expected one of {sorted([*PRESETS, *ALIASES])}")
  return PRESETS[canonical].replace(**overrides)


def match_published(num_layers: int, hidden_size: int, vocab_size: int) -> str | None:
  """The name of the published checkpoint with these shapes, or None. The heads of a checkpoint without a
  config.json are taken from here; glm-large and glm-roberta-large differ only in vocabulary."""
  for name in PUBLISHED:
    config = PRESETS[name]
    if (config.num_layers, config.hidden_size, config.vocab_size) == (num_layers, hidden_size, vocab_size):
      return name
  return None


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
