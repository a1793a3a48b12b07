import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glm_jax.model import GLM, GLMConfig
from glm_jax.train import optimizer, partitioning


def test_schedule_warmup_then_cosine_to_floor():
  cfg = optimizer.OptimizerConfig(learning_rate=1.0, warmup_steps=10, decay_style="cosine", min_lr_ratio=0.1)
  lr = optimizer.learning_rate_schedule(cfg, total_steps=110)
  np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.5, 1.0], atol=1e-6)
  # Halfway through the decay the cosine is at the midpoint between peak and floor.
  np.testing.assert_allclose(lr(60), 0.55, atol=1e-6)
  np.testing.assert_allclose([lr(110), lr(500)], [0.1, 0.1], atol=1e-6)


def test_schedule_linear_decay_and_explicit_decay_steps():
  cfg = optimizer.OptimizerConfig(
    learning_rate=2.0, warmup_steps=4, decay_style="linear", min_lr_ratio=0.0, decay_steps=24
  )
  lr = optimizer.learning_rate_schedule(cfg, total_steps=1000)
  np.testing.assert_allclose([lr(2), lr(4), lr(14), lr(24), lr(100)], [1.0, 2.0, 1.0, 0.0, 0.0], atol=1e-6)


def test_warmup_longer_than_decay_is_rejected():
  with pytest.raises(ValueError, match="warmup_steps=50 exceeds decay_steps=20"):
    optimizer.learning_rate_schedule(optimizer.OptimizerConfig(warmup_steps=50), total_steps=20)


def test_weight_decay_mask_excludes_biases_and_layernorm():
  cfg = GLMConfig(vocab_size=64, num_layers=2, hidden_size=32, num_heads=2, max_length=16)
  params = partitioning.abstract_boxed_params(GLM(cfg), 8)
  mask = optimizer.weight_decay_mask(nn.unbox(params))
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]
  }
  decayed = sorted(k for k, v in flat.items() if v)
  assert decayed == sorted(
    [
      "word_embeddings/embedding",
      "position_embeddings/embedding",
      "block_position_embeddings/embedding",
      "layers/attention/query_key_value/kernel",
      "layers/attention/dense/kernel",
      "layers/mlp/dense_h_to_4h/kernel",
      "layers/mlp/dense_4h_to_h/kernel",
    ]
  )
  assert not flat["layers/input_layernorm/norm/scale"] and not flat["final_layernorm/norm/bias"]


def test_adamw_update_decays_only_masked_leaves():
  # With zero gradients Adam's update is zero, so only weight decay moves the parameters.
  cfg = optimizer.OptimizerConfig(learning_rate=0.1, warmup_steps=0, decay_style="constant", weight_decay=0.5)
  tx = optimizer.make_optimizer(cfg, total_steps=10)
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}, "norm": {"scale": jnp.ones((2,))}}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5)
  np.testing.assert_allclose(new["dense"]["bias"], 1.0)
  np.testing.assert_allclose(new["norm"]["scale"], 1.0)


def test_gradients_are_clipped_to_global_norm():
  # b1 = b2 = 0 and a large eps make Adam's update -lr * g / (|g| + eps), so the clipped gradient shows through.
  def first_update(clip):
    cfg = optimizer.OptimizerConfig(
      learning_rate=1.0,
      warmup_steps=0,
      decay_style="constant",
      weight_decay=0.0,
      grad_clip_norm=clip,
      b1=0.0,
      b2=0.0,
      eps=1e4,
    )
    tx = optimizer.make_optimizer(cfg, total_steps=10)
    params = {"w": jnp.zeros((2,))}
    updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init(params), params)
    return updates["w"]

  adam = lambda g: -g / (np.abs(g) + 1e4)  # noqa: E731
  np.testing.assert_allclose(first_update(1.0), adam(np.array([0.6, 0.8])), rtol=1e-4)
  np.testing.assert_allclose(first_update(None), adam(np.array([30.0, 40.0])), rtol=1e-4)
