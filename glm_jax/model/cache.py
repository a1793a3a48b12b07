"""The key/value cache of decoding: each layer's keys and values of every token a row has seen so far.

Layout: k, v [layers, B, C, H, D] with C the capacity, and `lengths` int [B], the valid entries of each row. A row's
Part A fills entries 0..len(A)-1 (the prefill), then each Part B token fed is written at `lengths` and counts one
more; entries at or above `lengths` are stale (padding of the prefill, or a discarded beam's tokens) and never read.
Its logical axes put B over the batch mesh axes and H over the tensor axis, as the model's activations and
attention heads are (glm_jax/train/partitioning.py's rules table).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from glm_jax.model.config import GLMConfig

# Logical axes of k and v.
CACHE_AXES = ("layers", "activation_batch", None, "heads", "kv")


@struct.dataclass
class KVCache:
  """k, v [layers, B, C, H, D]; lengths int32 [B]. `fresh` (static): just allocated, every length 0, so the model
  fills it by running its ordinary attention over the chunk (the prefill of Part A) instead of attending the cache."""

  k: jax.Array
  v: jax.Array
  lengths: jax.Array
  fresh: bool = struct.field(pytree_node=False, default=False)

  @classmethod
  def allocate(cls, config: GLMConfig, batch: int, capacity: int, dtype=None) -> "KVCache":
    """An empty cache of `capacity` entries per row, in the model's compute dtype unless `dtype` is given."""
    shape = (config.num_layers, batch, capacity, config.num_heads, config.head_dim)
    dtype = dtype or config.jnp_dtype
    # Two buffers, never one shared: a caller may donate the cache, and k and v are updated separately.
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32), fresh=True)

  @property
  def capacity(self) -> int:
    return self.k.shape[2]

  def take(self, rows: jax.Array) -> "KVCache":
    """The cache of rows `rows` (int [B']) of this one: beams reordered, a prompt's cache repeated per candidate."""
    return KVCache(jnp.take(self.k, rows, axis=1), jnp.take(self.v, rows, axis=1), jnp.take(self.lengths, rows))

  def with_lengths(self, lengths: jax.Array) -> "KVCache":
    """The same entries with other valid lengths: lowering them forgets the tokens above (a blank's beams)."""
    return KVCache(self.k, self.v, jnp.asarray(lengths, jnp.int32))
