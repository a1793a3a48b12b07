from glm_jax.model.config import PRESETS, GLMConfig, num_params, preset  # noqa: F401
from glm_jax.model.glm import GLM, stack_layers, unstack_layers  # noqa: F401
