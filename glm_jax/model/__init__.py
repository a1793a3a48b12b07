from glm_jax.model.config import (  # noqa: F401
  ALIASES,
  PRESETS,
  PUBLISHED,
  GLMConfig,
  match_published,
  num_params,
  preset,
)
from glm_jax.model.glm import GLM, forward, mask_padded_vocab, stack_layers, unstack_layers  # noqa: F401
