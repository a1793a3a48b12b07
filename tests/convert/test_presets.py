"""Published checkpoint presets: every THUDM GLM v1 release, with the sizes its README advertises."""

from __future__ import annotations

import pathlib

import pytest

from glm_jax.convert import presets
from glm_jax.model.config import num_params

# name -> (advertised parameters, layers, hidden, heads, max length, vocabulary rows)
EXPECTED = {
  "glm-base": (110e6, 12, 768, 12, 512, 30592),
  "glm-large": (335e6, 24, 1024, 16, 512, 30592),
  "glm-410m": (410e6, 30, 1024, 16, 512, 30592),
  "glm-515m": (515e6, 30, 1152, 18, 512, 30592),
  "glm-roberta-large": (355e6, 24, 1024, 16, 512, 50304),
  "glm-2b": (2e9, 36, 2048, 32, 1024, 50304),
  "glm-10b": (10e9, 48, 4096, 64, 1024, 50304),
  "glm-large-chinese": (355e6, 24, 1024, 16, 1024, 50048),
  "glm-10b-chinese": (10e9, 48, 4096, 64, 1024, 50048),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_published_shapes(name):
  size, layers, hidden, heads, max_length, rows = EXPECTED[name]
  config = presets.published(name)
  assert (config.num_layers, config.hidden_size, config.num_heads, config.max_length) == (
    layers,
    hidden,
    heads,
    max_length,
  )
  assert config.vocab_size == config.padded_vocab_size == rows
  assert config.head_dim == 64
  assert abs(num_params(config) - size) / size < 0.05


def test_every_release_is_listed_once_with_a_tokenizer():
  assert set(presets.PUBLISHED) == set(EXPECTED)
  assert {m.tokenizer for m in presets.PUBLISHED.values()} == {"bert", "gpt2", "roberta", "chinese_sp"}


def test_overrides_and_unknown_names():
  assert presets.published("glm-10b", remat_policy="full").remat_policy == "full"
  with pytest.raises(ValueError, match="glm-large"):
    presets.published("glm-huge")


def test_match_published_tells_vocabularies_apart():
  assert presets.match_published(24, 1024, 30592) == "glm-large"
  assert presets.match_published(24, 1024, 50304) == "glm-roberta-large"
  assert presets.match_published(24, 1024, 50048) == "glm-large-chinese"
  assert presets.match_published(3, 1024, 30592) is None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_gin_file_selects_the_published_shapes(name):
  gin = pytest.importorskip("gin")
  from glm_jax import main

  path = pathlib.Path(__file__).resolve().parents[2] / "gin" / "models" / "published" / f"{name}.gin"
  gin.clear_config()
  try:
    gin.parse_config_file(str(path))
    assert main.model_preset() == presets.published(name)
  finally:
    gin.clear_config()
