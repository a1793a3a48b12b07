"""Blockwise GLM attention in plain XLA: online-softmax forward, recomputing backward.

The forward visits one [B, H, block_q, block_k] tile of logits at a time and keeps a running max, sum
and output per query row. The backward (a jax.custom_vjp) recomputes each tile's probabilities from the
saved log-sum-exp instead of storing them, so temporary memory is O(L * block), not O(L^2).

Masking uses the interval form of the rule (mask.key_intervals): row q may attend keys [lo(q), hi(q)],
so a tile's mask is two comparisons per row, and a query block only visits the key blocks that the
union of its rows' intervals (over the batch) touches; the other key blocks are skipped by the loop
bounds, not computed and masked.

Dropout: tile (i, j) draws its keep-mask from fold_in(dropout_rng, i * num_k_blocks + j)
(`tile_keep_mask`), so the backward regenerates the forward's mask exactly.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from glm_jax.ops import mask as mask_lib

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 256  # fastest of 256/512 at L=2048 on CPU (benchmarks/attention.py)


def tile_keep_mask(dropout_rng, dropout_rate: float, q_block, k_block, num_k_blocks: int, shape) -> jax.Array:
  """Dropout keep-mask of tile (q_block, k_block): bool `shape` = [B, H, block_q, block_k]."""
  rng = jax.random.fold_in(dropout_rng, q_block * num_k_blocks + k_block)
  return jax.random.bernoulli(rng, 1.0 - dropout_rate, shape)


def clipped_key_intervals(sep: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """mask.key_intervals with `hi` clipped to the row's segment end; int32 [B, L] each.

  The clip only matters when sep exceeds its segment's length, where the rule allows the whole segment
  and nothing beyond it.
  """
  length = segment_ids.shape[-1]
  idx = jnp.arange(length, dtype=jnp.int32)
  lo, hi = mask_lib.key_intervals(sep, segment_ids)
  is_end = jnp.concatenate(
    [segment_ids[:, 1:] != segment_ids[:, :-1], jnp.ones_like(segment_ids[:, :1], bool)], axis=-1
  )
  segment_end = jax.lax.cummin(jnp.where(is_end, idx, length), axis=1, reverse=True)
  return lo, jnp.minimum(hi, segment_end)


def attention(
  q,
  k,
  v,
  *,
  sep,
  segment_ids,
  dropout_rate: float = 0.0,
  dropout_rng=None,
  block_q: int = DEFAULT_BLOCK_Q,
  block_k: int = DEFAULT_BLOCK_K,
):
  """q, k, v [B, L, H, D]; sep, segment_ids int32 [B, L] (canonical). Returns [B, L, H, D] in q.dtype.

  Softmax in float32, logits scaled by 1/sqrt(D); padding rows return zeros. Block sizes are static
  and clamped to L; L need not be a multiple of them (the tail is padded and masked).
  """
  batch, length, heads, head_dim = q.shape
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate={dropout_rate} must be in [0, 1)")
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError(f"dropout_rate={dropout_rate} needs a dropout_rng")
  if block_q < 1 or block_k < 1:
    raise ValueError(f"block_q={block_q}, block_k={block_k} must be positive")
  block_q, block_k = min(block_q, length), min(block_k, length)
  num_q, num_k = -(-length // block_q), -(-length // block_k)

  lo, hi = clipped_key_intervals(sep, segment_ids)
  pad_rows = ((0, 0), (0, num_q * block_q - length))
  lo = jnp.pad(lo, pad_rows, constant_values=num_k * block_k).reshape(batch, num_q, block_q).swapaxes(0, 1)
  hi = jnp.pad(hi, pad_rows, constant_values=-1).reshape(batch, num_q, block_q).swapaxes(0, 1)
  first, end = _key_block_bounds(lo, hi, block_k)

  # Padding rows see nothing and no row sees a padding key, so zeroing q, k, v there changes nothing
  # except that garbage (NaN) at padding cannot leak through 0 * NaN in the tile matmuls.
  is_token = (segment_ids != 0)[:, :, None, None]
  scale = 1.0 / math.sqrt(head_dim)
  qb = _to_blocks(jnp.where(is_token, q, 0).astype(jnp.float32) * scale, block_q, num_q)
  kb = _to_blocks(jnp.where(is_token, k, 0), block_k, num_k)
  vb = _to_blocks(jnp.where(is_token, v, 0), block_k, num_k)
  out = _blockwise(float(dropout_rate), qb, kb, vb, lo, hi, first, end, dropout_rng if dropout_rate > 0.0 else None)
  out = out.transpose(1, 0, 3, 2, 4).reshape(batch, num_q * block_q, heads, head_dim)[:, :length]
  return out.astype(q.dtype)


def _to_blocks(x: jax.Array, block: int, num_blocks: int) -> jax.Array:
  """[B, L, H, D] -> float32 [num_blocks, B, H, block, D], zero-padded along L."""
  batch, length, heads, head_dim = x.shape
  x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, num_blocks * block - length), (0, 0), (0, 0)))
  return x.reshape(batch, num_blocks, block, heads, head_dim).transpose(1, 0, 3, 2, 4)


def _key_block_bounds(lo: jax.Array, hi: jax.Array, block_k: int) -> tuple[jax.Array, jax.Array]:
  """Per query block, the key blocks [first, end) its rows can see (union over rows and batch)."""
  valid = hi >= lo  # [num_q, B, block_q]
  has_any = valid.any(axis=(1, 2))
  k_min = jnp.min(jnp.where(valid, lo, jnp.iinfo(jnp.int32).max), axis=(1, 2))
  k_max = jnp.max(jnp.where(valid, hi, -1), axis=(1, 2))
  return jnp.where(has_any, k_min // block_k, 0), jnp.where(has_any, k_max // block_k + 1, 0)


def _tile_mask(lo_i: jax.Array, hi_i: jax.Array, j, block_k: int) -> jax.Array:
  """bool [B, 1, block_q, block_k]: key j * block_k + c lies in row r's interval [lo, hi]."""
  keys = j * block_k + jnp.arange(block_k, dtype=jnp.int32)
  return ((keys >= lo_i[:, :, None]) & (keys <= hi_i[:, :, None]))[:, None]


def _logits(qi, kj, lo_i, hi_i, j):
  """Masked tile logits [B, H, block_q, block_k] (-inf where masked) and the tile mask."""
  mask = _tile_mask(lo_i, hi_i, j, kj.shape[-2])
  s = jnp.einsum("bhqd,bhkd->bhqk", qi, kj)
  return jnp.where(mask, s, -jnp.inf), mask


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blockwise(dropout_rate, qb, kb, vb, lo, hi, first, end, dropout_rng):
  """Blocked attention: qb [nq, B, H, bq, D] (pre-scaled), kb, vb [nk, B, H, bk, D]; returns like qb."""
  return _forward(dropout_rate, qb, kb, vb, lo, hi, first, end, dropout_rng)[0]


def _forward(dropout_rate, qb, kb, vb, lo, hi, first, end, dropout_rng):
  num_k = kb.shape[0]

  def query_block(xs):
    i, qi, lo_i, hi_i, first_i, end_i = xs
    batch, heads, block_q, head_dim = qi.shape

    def key_block(j, carry):
      m, l, acc = carry
      s, _ = _logits(qi, kb[j], lo_i, hi_i, j)
      m_new = jnp.maximum(m, s.max(axis=-1))
      m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)  # rows with nothing visible yet
      p = jnp.exp(s - m_safe[..., None])
      alpha = jnp.exp(m - m_safe)
      l = alpha * l + p.sum(axis=-1)
      if dropout_rate > 0.0:
        keep = tile_keep_mask(dropout_rng, dropout_rate, i, j, num_k, p.shape)
        p = jnp.where(keep, p / (1.0 - dropout_rate), 0.0)
      acc = alpha[..., None] * acc + jnp.einsum("bhqk,bhkd->bhqd", p, vb[j])
      return m_new, l, acc

    init = (
      jnp.full((batch, heads, block_q), -jnp.inf, jnp.float32),
      jnp.zeros((batch, heads, block_q), jnp.float32),
      jnp.zeros((batch, heads, block_q, head_dim), jnp.float32),
    )
    m, l, acc = jax.lax.fori_loop(first_i, end_i, key_block, init)
    empty = l == 0.0  # padding rows
    out = acc / jnp.where(empty, 1.0, l)[..., None]
    lse = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))
    return out, lse

  indices = jnp.arange(qb.shape[0], dtype=jnp.int32)
  out, lse = jax.lax.map(query_block, (indices, qb, lo, hi, first, end))
  return out, (qb, kb, vb, out, lse, lo, hi, first, end, dropout_rng)


def _backward(dropout_rate, residuals, dout):
  qb, kb, vb, out, lse, lo, hi, first, end, dropout_rng = residuals
  num_k = kb.shape[0]
  delta = jnp.sum(dout * out, axis=-1)  # [nq, B, H, bq]; equals rowsum(P * dP) even with dropout
  lse = jnp.where(jnp.isneginf(lse), 0.0, lse)
  q_first, q_end = _query_block_bounds(first, end, num_k)

  # Tiles are computed transposed, [B, H, block_k, block_q], so that dk and dv (accumulated over the
  # inner loop) are plain matmuls; dq is accumulated across key blocks in one [nq, ...] buffer.
  def key_block(dq, xs):
    j, kj, vj, q_first_j, q_end_j = xs

    def query_block(i, inner):
      dk_j, dv_j, dq = inner
      qi, do_i, lse_i, delta_i = qb[i], dout[i], lse[i], delta[i]
      mask = _tile_mask(lo[i], hi[i], j, kj.shape[-2]).swapaxes(-1, -2)
      s = jnp.where(mask, jnp.einsum("bhkd,bhqd->bhkq", kj, qi), -jnp.inf)
      p = jnp.exp(s - lse_i[:, :, None, :])
      dp = jnp.einsum("bhkd,bhqd->bhkq", vj, do_i)
      if dropout_rate > 0.0:
        tile_shape = (*qi.shape[:3], kj.shape[2])  # drawn as in the forward, then transposed
        keep = tile_keep_mask(dropout_rng, dropout_rate, i, j, num_k, tile_shape).swapaxes(-1, -2)
        p_dropped = jnp.where(keep, p / (1.0 - dropout_rate), 0.0)
        dp = jnp.where(keep, dp / (1.0 - dropout_rate), 0.0)
      else:
        p_dropped = p
      ds = jnp.where(mask, p * (dp - delta_i[:, :, None, :]), 0.0)
      dk_j = dk_j + jnp.einsum("bhkq,bhqd->bhkd", ds, qi)
      dv_j = dv_j + jnp.einsum("bhkq,bhqd->bhkd", p_dropped, do_i)
      dq = dq.at[i].add(jnp.einsum("bhkq,bhkd->bhqd", ds, kj))
      return dk_j, dv_j, dq

    init = (jnp.zeros_like(kj), jnp.zeros_like(vj), dq)
    dk_j, dv_j, dq = jax.lax.fori_loop(q_first_j, q_end_j, query_block, init)
    return dq, (dk_j, dv_j)

  indices = jnp.arange(num_k, dtype=jnp.int32)
  dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros_like(qb), (indices, kb, vb, q_first, q_end))
  return dq, dk, dv, None, None, None, None, None


def _query_block_bounds(first: jax.Array, end: jax.Array, num_k: int) -> tuple[jax.Array, jax.Array]:
  """Per key block, the query blocks [q_first, q_end) whose key range [first, end) contains it."""
  num_q = first.shape[0]
  sees = (first[:, None] <= jnp.arange(num_k)) & (jnp.arange(num_k) < end[:, None])  # [nq, nk]
  has_any = sees.any(axis=0)
  q_first = jnp.argmax(sees, axis=0)
  q_end = num_q - jnp.argmax(sees[::-1], axis=0)
  return jnp.where(has_any, q_first, 0).astype(jnp.int32), jnp.where(has_any, q_end, 0).astype(jnp.int32)


_blockwise.defvjp(_forward, _backward)
