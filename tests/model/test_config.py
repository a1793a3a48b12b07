import jax
import jax.numpy as jnp
import pytest

from glm_jax.model import GLM, PRESETS, GLMConfig, num_params, preset

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
  assert num_params(PRESETS[name]) / 1e6 == pytest.approx(PUBLISHED_M[name], rel=0.04)


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
