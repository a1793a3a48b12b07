"""Per-row key intervals and per-block range tables shared by the Pallas GLM attention kernels.

Each query row q may attend the keys of one interval [lo(q), hi(q)] (mask.key_intervals, with hi
clipped to the row's own segment end), and both ends never decrease along the real (non-padding) rows.
A query block i of `block_q` rows therefore needs exactly the key blocks

    first(i) = min(lo over real rows of i) // block_k   ...   max(hi over real rows of i) // block_k

and nothing outside them; `key_block_ranges` tabulates [first, first + count) per (batch, query block).
Blocks without a real row get count 0. The backward dK/dV pass walks the mirror table
(`query_block_ranges`): for each key block, the query blocks whose range contains it.

The kernels still apply the exact per-row mask inside each visited tile, so the tables only decide
which tiles are computed at all (and, on TPU, which tiles are copied into VMEM).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from glm_jax.ops import mask as mask_lib


def padded_length(length: int, block_q: int, block_k: int) -> int:
  """The smallest multiple of both block sizes that holds `length` rows."""
  step = math.lcm(block_q, block_k)
  return -(-length // step) * step


def row_intervals(sep: jax.Array, segment_ids: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
  """Inclusive key interval [lo, hi] of each query row, int32 [B, length] each, `length` >= L.

  `hi` is clipped to the row's segment end (a `sep` longer than its segment allows the whole segment
  and nothing beyond it). Padding rows, including the rows past L that the kernels add to fill the
  last block, get the empty interval lo = length, hi = -1.
  """
  seq_len = segment_ids.shape[-1]
  idx = jnp.arange(seq_len, dtype=jnp.int32)
  lo, hi = mask_lib.key_intervals(sep, segment_ids)
  is_end = jnp.concatenate(
    [segment_ids[:, 1:] != segment_ids[:, :-1], jnp.ones_like(segment_ids[:, :1], bool)], axis=-1
  )
  segment_end = jax.lax.cummin(jnp.where(is_end, idx, seq_len), axis=1, reverse=True)
  hi = jnp.minimum(hi, segment_end)
  pad = segment_ids == 0
  lo = jnp.where(pad, length, lo)
  extra = ((0, 0), (0, length - seq_len))
  return jnp.pad(lo, extra, constant_values=length), jnp.pad(hi, extra, constant_values=-1)


def key_block_ranges(lo: jax.Array, hi: jax.Array, block_q: int, block_k: int) -> tuple[jax.Array, jax.Array]:
  """Per (batch, query block), the key blocks [first, first + count) it sees; int32 [B, nq] each.

  lo, hi: int32 [B, Lp] from `row_intervals`, Lp a multiple of block_q.
  """
  batch, length = lo.shape
  lo = lo.reshape(batch, length // block_q, block_q)
  hi = hi.reshape(batch, length // block_q, block_q)
  real = hi >= lo
  has_any = real.any(axis=-1)
  k_min = jnp.min(jnp.where(real, lo, length), axis=-1)
  k_max = jnp.max(jnp.where(real, hi, -1), axis=-1)
  first = jnp.where(has_any, k_min // block_k, 0)
  count = jnp.where(has_any, k_max // block_k + 1 - first, 0)
  return first.astype(jnp.int32), count.astype(jnp.int32)


def query_block_ranges(first: jax.Array, count: jax.Array, num_k: int) -> tuple[jax.Array, jax.Array]:
  """The mirror table: per (batch, key block), the query blocks [q_first, q_first + q_count) whose key
  range contains it; int32 [B, nk] each.

  The ranges of `key_block_ranges` move forward with the query block, so the query blocks seeing a key
  block are contiguous; taking first and last keeps the table exact even where they are not (a block
  inside the range that does not see the key block is then visited and fully masked).
  """
  num_q = first.shape[1]
  kb = jnp.arange(num_k, dtype=jnp.int32)
  sees = (first[:, :, None] <= kb) & (kb < (first + count)[:, :, None])  # [B, nq, nk]
  has_any = sees.any(axis=1)
  q_first = jnp.argmax(sees, axis=1)
  q_last = num_q - 1 - jnp.argmax(sees[:, ::-1], axis=1)
  q_first = jnp.where(has_any, q_first, 0)
  q_count = jnp.where(has_any, q_last + 1 - q_first, 0)
  return q_first.astype(jnp.int32), q_count.astype(jnp.int32)


# Attention dropout inside the kernels: a counter-based hash, so a tile's keep-mask is recomputed from integers
# (forward and both backward kernels agree without storing it) and does not depend on the block sizes. Values are
# int32 with wrapping arithmetic; the constants are murmur3's, written as int32.
_FMIX_1, _FMIX_2, _GOLDEN = -2048144789, -1028477387, -1640531527  # 0x85ebca6b, 0xc2b2ae35, 0x9e3779b9


def _fmix(x: jax.Array) -> jax.Array:
  """murmur3's 32-bit finalizer (a bijection of int32 with good avalanche)."""
  x = x ^ jax.lax.shift_right_logical(x, 16)
  x = x * _FMIX_1
  x = x ^ jax.lax.shift_right_logical(x, 13)
  x = x * _FMIX_2
  return x ^ jax.lax.shift_right_logical(x, 16)


def dropout_seed(dropout_rng: jax.Array) -> jax.Array:
  """The int32 [1] seed of the kernels' dropout, drawn from a jax PRNG key."""
  return jax.lax.bitcast_convert_type(jax.random.bits(dropout_rng, (1,), jnp.uint32), jnp.int32)


def dropout_keep(
  seed: jax.Array, batch_index, head_index, rows: jax.Array, cols: jax.Array, num_heads: int, length: int, rate: float
) -> jax.Array:
  """Whether attention probability (batch_index, head_index, row, col) is kept, bool of rows' and cols' broadcast
  shape (int32 arrays, e.g. [R, 1] and [1, C]). Kept with probability 1 - rate, independently per element as far
  as a 32-bit hash allows; a function of the indices and `seed` only."""
  stream = jnp.asarray(batch_index, jnp.int32) * num_heads + head_index + 1
  key = _fmix(seed ^ _fmix(stream * _GOLDEN))
  bits = _fmix(_fmix((rows * length + cols) ^ key) + key)
  return (bits & 0x7FFFFFFF) >= int(rate * 2**31)
