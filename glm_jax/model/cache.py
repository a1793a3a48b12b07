"""The key/value cache of decoding: each layer's keys and values of every token a row has seen so far.

Layout: k, v [layers, B, H, C, D] with C the capacity (head-major, so that a query's products with one head's
entries read one contiguous matrix), and `lengths` int [B], the valid entries of each row. A row's Part A fills
entries 0..len(A)-1 (the prefill), then each Part B token fed is written at `lengths` and counts one more; entries
at or above `lengths` are stale (padding of the prefill, or a discarded beam's tokens) and never read. Its logical
axes put B over the batch mesh axes and H over the tensor axis, as the model's activations and attention heads are
(glm_jax/model/sharding.py's rules table).

The same cache can also be held `layered`: k and v as tuples of one [B, H, C, D] buffer per layer, for a model
with unscanned layers (scan_layers=False), which reads each layer's buffer as it is, where a scanned model slices
its layer out of the stack (a copy on XLA:CPU; see glm_jax/infer/decode.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from glm_jax.model.config import GLMConfig

# Logical axes of k and v (stacked); a layered cache's buffers drop the first.
CACHE_AXES = ("layers", "activation_batch", "heads", None, "kv")


@struct.dataclass
class KVCache:
  """k, v [layers, B, H, C, D] (or tuples of [B, H, C, D] per layer: `layered`); lengths int32 [B]. `fresh`
  (static): just allocated, every length 0, so the model fills it by running its ordinary attention over the chunk
  (the prefill of Part A) instead of attending the cache."""

  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]
  lengths: jax.Array
  fresh: bool = struct.field(pytree_node=False, default=False)

  @classmethod
  def allocate(cls, config: GLMConfig, batch: int, capacity: int, dtype=None) -> "KVCache":
    """An empty cache of `capacity` entries per row, in the model's compute dtype unless `dtype` is given."""
    shape = (config.num_layers, batch, config.num_heads, capacity, config.head_dim)
    dtype = dtype or config.jnp_dtype
    # Two buffers, never one shared: a caller may donate the cache, and k and v are updated separately.
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32), fresh=True)

  @property
  def is_layered(self) -> bool:
    return isinstance(self.k, tuple)

  @property
  def capacity(self) -> int:
    return self.k[0].shape[2] if self.is_layered else self.k.shape[3]

  def layered(self) -> "KVCache":
    """The same cache as one buffer per layer (a copy of the stack)."""
    if self.is_layered:
      return self
    split = lambda x: tuple(x[i] for i in range(x.shape[0]))  # noqa: E731
    return KVCache(split(self.k), split(self.v), self.lengths, self.fresh)

  def stacked(self) -> "KVCache":
    """The same cache as [layers, ...] buffers."""
    if not self.is_layered:
      return self
    return KVCache(jnp.stack(self.k), jnp.stack(self.v), self.lengths, self.fresh)

  def take(self, rows: jax.Array) -> "KVCache":
    """The cache of rows `rows` (int [B']) of this one: beams reordered, a prompt's cache repeated per candidate."""
    axis = 0 if self.is_layered else 1
    pick = lambda x: jnp.take(x, rows, axis=axis)  # noqa: E731
    return KVCache(jax.tree.map(pick, self.k), jax.tree.map(pick, self.v), jnp.take(self.lengths, rows))

  def with_lengths(self, lengths: jax.Array) -> "KVCache":
    """The same entries with other valid lengths: lowering them forgets the tokens above (a blank's beams)."""
    return KVCache(self.k, self.v, jnp.asarray(lengths, jnp.int32))


def write_chunk(buffer, new, lengths, *, fresh: bool, axes):
  """buffer [..., B, H, C, D] (a cache buffer, stacked or one layer's) with new [..., B, L, H, D] (a chunk's keys or
  values) written at entries lengths .. lengths + L - 1 of each row (lengths int [B]; `fresh`: all 0)."""
  lead = new.ndim - 4
  if fresh:  # the chunk goes to entries 0..L-1, head-major
    new = nn.with_logical_constraint(jnp.swapaxes(new, -3, -2).astype(buffer.dtype), axes)
    return nn.with_logical_constraint(jax.lax.dynamic_update_slice(buffer, new, (0,) * buffer.ndim), axes)
  # One scatter, in place under a loop's donated carry. The advanced indices (row, slot) are split by the head
  # axis, so the updates are laid out [B, L, ..., H, D].
  batch, length = new.shape[lead], new.shape[lead + 1]
  rows = jnp.arange(batch)[:, None]
  slots = lengths[:, None] + jnp.arange(length)[None, :]  # [B, L]; past the capacity: dropped
  new = jnp.moveaxis(new, (lead, lead + 1), (0, 1)).astype(buffer.dtype)
  index = (slice(None),) * lead + (rows, slice(None), slots)
  return nn.with_logical_constraint(buffer.at[index].set(new, mode="drop"), axes)
