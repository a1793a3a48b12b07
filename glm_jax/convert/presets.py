"""The published THUDM GLM v1 checkpoints: shapes, vocabulary and maximum length of each.

Sources: the THUDM/GLM README table and its `config_tasks/model_blocklm_*.sh` scripts (layers / hidden / heads /
`--max-position-embeddings`, or `--max-sequence-length` = max length + 1 in the older scripts). `vocab_size` is
the number of rows of the checkpoint's word-embedding table (the tokenizer's size padded by the reference), so
`GLMConfig.padded_vocab_size == vocab_size`; position tables have `max_length + 1` rows.

In gin: `model/GLMConfig = @glm_jax.convert.presets.published()` with `published.name = "glm-large"`
(gin/models/published/*.gin do exactly this).
"""

from __future__ import annotations

import dataclasses

from glm_jax.model.config import GLMConfig

BERT_VOCAB_ROWS = 30592  # bert-large-uncased 30522 + [sop] [eop] [gMASK] [sMASK] [dBLOCK], padded to 128
GPT2_VOCAB_ROWS = 50304  # GPT-2 50257 + GLM command tokens, padded to 128 (RoBERTa's 50265 + 4 as well)
CHINESE_VOCAB_ROWS = 50048  # cog-pretrain.model 50000 + GLM command tokens, padded to 128


@dataclasses.dataclass(frozen=True)
class PublishedModel:
  """A published checkpoint: its model shape and which tokenizer family (glm_jax.convert.tokenizers) it uses."""

  config: GLMConfig
  tokenizer: str  # "bert", "gpt2", "roberta" or "chinese_sp"


def _model(layers: int, hidden: int, heads: int, max_length: int, vocab_rows: int, tokenizer: str):
  return PublishedModel(
    GLMConfig(vocab_size=vocab_rows, num_layers=layers, hidden_size=hidden, num_heads=heads, max_length=max_length),
    tokenizer,
  )


PUBLISHED: dict[str, PublishedModel] = {
  "glm-base": _model(12, 768, 12, 512, BERT_VOCAB_ROWS, "bert"),
  "glm-large": _model(24, 1024, 16, 512, BERT_VOCAB_ROWS, "bert"),
  "glm-410m": _model(30, 1024, 16, 512, BERT_VOCAB_ROWS, "bert"),
  "glm-515m": _model(30, 1152, 18, 512, BERT_VOCAB_ROWS, "bert"),
  "glm-roberta-large": _model(24, 1024, 16, 512, GPT2_VOCAB_ROWS, "roberta"),
  "glm-2b": _model(36, 2048, 32, 1024, GPT2_VOCAB_ROWS, "gpt2"),
  "glm-10b": _model(48, 4096, 64, 1024, GPT2_VOCAB_ROWS, "gpt2"),
  "glm-large-chinese": _model(24, 1024, 16, 1024, CHINESE_VOCAB_ROWS, "chinese_sp"),
  "glm-10b-chinese": _model(48, 4096, 64, 1024, CHINESE_VOCAB_ROWS, "chinese_sp"),
}


def published(name: str, **overrides) -> GLMConfig:
  """The GLMConfig of a published checkpoint, with field overrides (e.g. `published("glm-10b", remat_policy=
  "full")`). Gin-friendly: every argument is a plain value."""
  if name not in PUBLISHED:
    raise ValueError(f"unknown published GLM checkpoint {name!r}; expected one of {sorted(PUBLISHED)}")
  return PUBLISHED[name].config.replace(**overrides)


def match_published(num_layers: int, hidden_size: int, vocab_size: int) -> str | None:
  """The name of the published checkpoint with these shapes, or None. The heads of a checkpoint without a
  config.json are taken from here; glm-large and glm-roberta-large differ only in vocabulary."""
  for name, model in PUBLISHED.items():
    cfg = model.config
    if (cfg.num_layers, cfg.hidden_size, cfg.vocab_size) == (num_layers, hidden_size, vocab_size):
      return name
  return None
