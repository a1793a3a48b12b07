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
  """q, k, v [B, Lq, H, D] (the chunk); k_cache, v_cache [B, H, Lc, D] (head-major: each head's entries are one
  contiguous [Lc, D] matrix, so both products are plain batched matmuls that read the cache once, with no transpose);
  cache_lengths int [B] (entries at index >= it are ignored); sep, segment_ids int32 [B, Lq] (canonical, the chunk's
  own). Returns [B, Lq, H, D] in q.dtype; padding queries (segment 0) return zeros."""
  capacity = k_cache.shape[2]
  scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
  real_query = segment_ids != 0  # [B, Lq]
  cache_valid = jnp.arange(capacity)[None, :] < cache_lengths[:, None]  # [B, Lc]
  cache_mask = (real_query[:, :, None] & cache_valid[:, None, :])[:, None]  # [B, 1, Lq, Lc]
  chunk_mask = mask_lib.dense_mask(sep, segment_ids)[:, None]  # [B, 1, Lq, Lq]
  low = jnp.finfo(jnp.float32).min
  cached = jnp.einsum("bqhd,bhkd->bhqk", q, k_cache.astype(q.dtype), preferred_element_type=jnp.float32)
  fresh = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  cached = jnp.where(cache_mask, cached * scale, low)
  fresh = jnp.where(chunk_mask, fresh * scale, low)
  # One softmax over both key sets, without concatenating them.
  top = jnp.maximum(cached.max(-1, keepdims=True), fresh.max(-1, keepdims=True))
  cached = jnp.where(cache_mask, jnp.exp(cached - top), 0.0)
  fresh = jnp.where(chunk_mask, jnp.exp(fresh - top), 0.0)
  total = cached.sum(-1, keepdims=True) + fresh.sum(-1, keepdims=True)
  out = jnp.einsum("bhqk,bhkd->bhqd", cached.astype(v_cache.dtype), v_cache, preferred_element_type=jnp.float32)
  out = out + jnp.einsum("bhqk,bkhd->bhqd", fresh.astype(v.dtype), v, preferred_element_type=jnp.float32)
  out = out / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)  # a padding query has nothing: 0 / tiny = 0
  return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype)


def attention_in_cache(q, *, k_cache, v_cache, cache_lengths, sep, segment_ids):
  """As `attention`, for a chunk whose keys and values were already written into the cache at entries
  cache_lengths .. cache_lengths + Lq - 1 of each row: q [B, Lq, H, D]; k_cache, v_cache [B, H, Lc, D]. A query sees
  the entries below its row's length and, at or above it, the chunk's entries by the chunk's own rule. Reading the
  cache after the write lets a decode loop update each buffer in place (a read of the old buffer beside the write
  of the new one makes XLA copy it on every step)."""
  batch, chunk = segment_ids.shape
  capacity = k_cache.shape[2]
  scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
  offset = jnp.arange(capacity)[None, :] - cache_lengths[:, None]  # [B, Lc]: entry index within the chunk
  in_chunk = (offset >= 0) & (offset < chunk)
  column = jnp.broadcast_to(jnp.clip(offset, 0, chunk - 1)[:, None, :], (batch, chunk, capacity))
  chunk_rule = jnp.take_along_axis(mask_lib.dense_mask(sep, segment_ids), column, axis=2)  # [B, Lq, Lc]
  earlier = (offset < 0)[:, None, :] & (segment_ids != 0)[:, :, None]
  mask = (earlier | (in_chunk[:, None, :] & chunk_rule))[:, None]  # [B, 1, Lq, Lc]
  logits = jnp.einsum("bqhd,bhkd->bhqk", q, k_cache.astype(q.dtype), preferred_element_type=jnp.float32)
  logits = jnp.where(mask, logits * scale, jnp.finfo(jnp.float32).min)
  probs = jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)  # a padding query has nothing visible: zeros
  out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v_cache.dtype), v_cache, preferred_element_type=jnp.float32)
  return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype)
