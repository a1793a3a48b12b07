from glm_jax.ops.attention import IMPLEMENTATIONS, attention, default_implementation  # noqa: F401
