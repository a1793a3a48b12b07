"""The GLM attention rule in its canonical forms, shared by every attention implementation.

Rule (docs/design.md): q attends k iff segment_ids[q] == segment_ids[k] != 0 and
(k <= q or k - segment_start(k) < sep[k]).

For contiguous segments the allowed keys of a query q form one interval
    [segment_start(q), max(q, segment_start(q) + sep(q) - 1)]
whose two ends never decrease along q. Kernels compute their masks and block ranges from these two
scalars per row; `dense_mask` materializes the rule itself, for the reference oracle and for tests.
Padding rows (segment 0) see no key; every implementation returns zeros for them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def canonicalize(sep: jax.Array, segment_ids: jax.Array | None, length: int) -> tuple[jax.Array, jax.Array]:
  """Brings `sep` ([B] or [B, L]) and optional `segment_ids` [B, L] to per-token int32 [B, L] arrays.

  A per-example `sep` of shape [B] with no segment ids is the THUDM reference convention: one segment
  filling the whole row.
  """
  sep = jnp.asarray(sep, jnp.int32)
  if sep.ndim == 1:
    sep = jnp.broadcast_to(sep[:, None], (sep.shape[0], length))
  elif sep.ndim != 2 or sep.shape[1] != length:
    raise ValueError(f"sep has shape {sep.shape}; expected [B] or [B, {length}] for sequence length {length}")
  if segment_ids is None:
    segment_ids = jnp.ones(sep.shape, jnp.int32)
  segment_ids = jnp.asarray(segment_ids, jnp.int32)
  if segment_ids.shape != sep.shape:
    raise ValueError(f"segment_ids has shape {segment_ids.shape}; expected {sep.shape} to match sep")
  return sep, segment_ids


def segment_starts(segment_ids: jax.Array) -> jax.Array:
  """Index of the first token of each token's segment, int32 [B, L] (assumes contiguous segments)."""
  length = segment_ids.shape[-1]
  idx = jnp.arange(length, dtype=jnp.int32)
  is_start = jnp.concatenate(
    [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=-1
  )
  return jax.lax.cummax(jnp.where(is_start, idx, 0), axis=segment_ids.ndim - 1)


def key_intervals(sep: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per query row, the inclusive interval [lo, hi] of keys it may attend; int32 [B, L] each.

  Padding rows get the empty interval lo = L, hi = -1. Both ends are non-decreasing along a segment.
  """
  length = segment_ids.shape[-1]
  idx = jnp.arange(length, dtype=jnp.int32)
  start = segment_starts(segment_ids)
  hi = jnp.maximum(idx, start + sep - 1)
  pad = segment_ids == 0
  return jnp.where(pad, length, start), jnp.where(pad, -1, hi)


def dense_mask(sep: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """The rule itself, materialized: bool [B, Lq, Lk]. Written from the definition, not the interval form."""
  length = segment_ids.shape[-1]
  idx = jnp.arange(length, dtype=jnp.int32)
  start = segment_starts(segment_ids)
  same_segment = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, :, None] != 0)
  causal = idx[None, None, :] <= idx[None, :, None]
  key_in_part_a = (idx - start)[:, None, :] < sep[:, None, :]
  return same_segment & (causal | key_in_part_a)
