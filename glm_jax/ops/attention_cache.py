"""Queries of a new chunk against a key/value cache: the decoding step (one query per row) and the scoring of
candidate spans (a few queries per row) after Part A was prefilled.

The cache holds each row's earlier tokens (its Part A, then the Part B tokens already decoded); a new query sees
every valid cache entry (a Part A key is visible to all, an earlier Part B key precedes it) and, within the chunk,
the GLM rule of the chunk's own `sep` and `segment_ids` (a decoded chunk is Part B: `sep` 0, causal). Plain XLA on
every platform: with Lq small the step reads the cache once and is bound by that read, so a flash kernel's tiling
has nothing to save. The two key sets are scored separately and share one softmax, so the cache is never copied
to append the chunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glm_jax.ops import mask as mask_lib


def attention(q, k, v, *, k_cache, v_cache, cache_lengths, sep, segment_ids):
  """q, k, v [B, Lq, H, D] (the chunk); k_cache, v_cache [B, Lc, H, D]; cache_lengths int [B] (entries at index
  >= it are ignored); sep, segment_ids int32 [B, Lq] (canonical, the chunk's own). Returns [B, Lq, H, D] in q.dtype;
  padding queries (segment 0) return zeros."""
  scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
  real_query = segment_ids != 0  # [B, Lq]
  cache_valid = jnp.arange(k_cache.shape[1])[None, :] < cache_lengths[:, None]  # [B, Lc]
  cache_mask = (real_query[:, :, None] & cache_valid[:, None, :])[:, None]  # [B, 1, Lq, Lc]
  chunk_mask = mask_lib.dense_mask(sep, segment_ids)[:, None]  # [B, 1, Lq, Lq]
  mask = jnp.concatenate([jnp.broadcast_to(cache_mask, (*cache_mask.shape[:3], k_cache.shape[1])), chunk_mask], -1)
  logits = jnp.concatenate(
    [
      jnp.einsum("bqhd,bkhd->bhqk", q, k_cache.astype(q.dtype), preferred_element_type=jnp.float32),
      jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32),
    ],
    axis=-1,
  )
  logits = jnp.where(mask, logits * scale, jnp.finfo(jnp.float32).min)
  probs = jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)
  cached = probs[..., : k_cache.shape[1]].astype(v_cache.dtype)
  fresh = probs[..., k_cache.shape[1] :].astype(v.dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", cached, v_cache, preferred_element_type=jnp.float32)
  out = out + jnp.einsum("bhqk,bkhd->bqhd", fresh, v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype)
