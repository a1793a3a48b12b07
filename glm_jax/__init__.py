"""glm-jax: GLM (General Language Model) blank-infilling pretraining in JAX/Flax."""
