"""GLM configs and the one table of model shapes: every preset, every THUDM GLM v1 release with the sizes its README
advertises."""

import pathlib

import jax
import jax.numpy as jnp
import pytest

from glm_jax.model import GLM, PRESETS, PUBLISHED, GLMConfig, match_published, num_params, preset

# Published sizes of the THUDM GLM v1 checkpoints, in millions of parameters.
PUBLISHED_M = {"base": 110, "large": 335, "410m": 410, "515m": 515, "2b": 2000, "10b": 10000}


def _count_initialized(config: GLMConfig) -> int:
  ids = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: GLM(config).init(jax.random.key(0), ids, ids, ids, sep=jnp.array([4])))
  return sum(x.size for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_param_count_matches_analytic_formula(name):
  config = PRESETS[name].replace(attention_implementation="reference")
  assert _count_initialized(config) == num_params(config)


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_presets_match_published_sizes(name):
  assert num_params(preset(name)) / 1e6 == pytest.approx(PUBLISHED_M[name], rel=0.04)


def test_vocab_padded_to_multiple_of_128():
  assert GLMConfig(vocab_size=30524).padded_vocab_size == 30592
  assert GLMConfig(vocab_size=50304).padded_vocab_size == 50304
  assert GLMConfig(vocab_size=1).padded_vocab_size == 128


def test_bad_config_names_the_value():
  with pytest.raises(ValueError, match="num_heads=7"):
    GLMConfig(hidden_size=128, num_heads=7)
  with pytest.raises(ValueError, match="remat_policy='some'"):
    GLMConfig(remat_policy="some")
  with pytest.raises(ValueError, match="unknown GLM preset 'huge'"):
    preset("huge")


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
  config = preset(name)
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
  assert set(PUBLISHED) == set(EXPECTED) == set(PRESETS) - {"tiny"}
  assert set(PUBLISHED.values()) == {"bert", "gpt2", "roberta", "chinese_sp"}


def test_overrides_and_unknown_names():
  assert preset("glm-10b", remat_policy="full").remat_policy == "full"
  with pytest.raises(ValueError, match="glm-large"):
    preset("glm-huge")
  assert preset("large") == preset("glm-large") and preset("10b") == preset("glm-10b")


def test_match_published_tells_vocabularies_apart():
  assert match_published(24, 1024, 30592) == "glm-large"
  assert match_published(24, 1024, 50304) == "glm-roberta-large"
  assert match_published(24, 1024, 50048) == "glm-large-chinese"
  assert match_published(3, 1024, 30592) is None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_gin_file_selects_the_published_shapes(name):
  gin = pytest.importorskip("gin")
  from glm_jax import gin_config

  path = pathlib.Path(__file__).resolve().parents[2] / "gin" / "models" / "published" / f"{name}.gin"
  gin.clear_config()
  try:
    gin.parse_config_file(str(path))
    assert gin_config.model_preset() == preset(name)
  finally:
    gin.clear_config()


def test_task_masks_follow_the_published_recipes():
  """generate_samples.py's --task-mask: the 2B/10B and Chinese models were trained with [sMASK]/[gMASK]."""
  with_task_masks = {name for name in PUBLISHED if preset(name).task_mask}
  assert with_task_masks == {"glm-2b", "glm-10b", "glm-large-chinese", "glm-10b-chinese"}
  assert preset("tiny").task_mask
