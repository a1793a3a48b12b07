"""Materialized-mask attention: the oracle every faster implementation is tested against.

O(L^2) memory by design; simple enough to trust by reading.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glm_jax.ops import mask as mask_lib


def attention(q, k, v, *, sep, segment_ids, dropout_rate: float = 0.0, dropout_rng=None):
  """q, k, v [B, L, H, D]; sep, segment_ids int32 [B, L] (canonical form). Returns [B, L, H, D] in q.dtype.

  Softmax in float32, logits scaled by 1/sqrt(D). Rows with no visible key (padding) return zeros.
  """
  mask = mask_lib.dense_mask(sep, segment_ids)[:, None]  # [B, 1, Lq, Lk]
  scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = jnp.where(mask, probs, 0.0)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32))
  return out.astype(q.dtype)
