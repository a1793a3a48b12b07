from glm_jax.ops.attention import attention, IMPLEMENTATIONS, default_implementation  # noqa: F401
