"""GLM flash attention for GPU in Pallas (Triton lowering), with the mask fused and masked blocks skipped.

Mask. No [L, L] mask exists anywhere: each query row carries the inclusive interval [lo, hi] of keys it
may attend (attention_blocks.row_intervals: segment start .. max(q, segment start + sep - 1), clipped to
the segment; empty for padding), and a tile's mask is two integer comparisons per element.

Block skipping. Both interval ends never decrease along the real rows, so query block i sees exactly the
key blocks [first(i), first(i) + count(i)) (attention_blocks.key_block_ranges). The forward and dQ kernels
run on a grid over (B, H, query blocks) and `fori_loop` over only those key blocks; the dK/dV kernel runs
on a grid over (B, H, key blocks) and loops over the mirror table's query blocks
(attention_blocks.query_block_ranges). Skipped tiles are neither loaded nor computed: Part A of
other segments, the causal future of Part B, and padding cost nothing.

Numerics. Matmuls take the input dtype (bf16 or f32) and accumulate in f32; softmax statistics are
f32. The backward is a `jax.custom_vjp` that recomputes each tile's probabilities from the saved
log-sum-exp (no [L, L] residual). Padding rows return zeros and get zero gradients.

Dropout. Each probability is kept or dropped by a hash of (seed, batch, head, query row, key column)
(attention_blocks.dropout_keep), so the forward and both backward kernels recompute the same keep-mask
from integers, nothing [L, L] is stored, and the mask does not depend on the block sizes (the TPU kernel
draws the same one). The softmax normalizer counts dropped probabilities, as dropout after softmax does.

Limits (each raises, naming the alternative): head dim 64 or 128, power-of-two blocks >= 16. Values at
masked positions of a visited tile must be finite (p = 0 times a NaN value is still NaN); values in
skipped tiles are never read.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from glm_jax.ops import attention_blocks

HEAD_DIMS = (64, 128)
# (block_q, block_k, num_warps) per (dtype, head dim) when none are given. All three kernels were compiled at each
# for A100 (sm_80) and H100/H200 (sm_90a) by benchmarks/attention_compile.py, and none spills registers on either
# (docs/benchmarks.md has the sweep); no GPU has timed them. float32 matmuls run in TF32 with about twice the
# registers per tile: at bfloat16's 64 x 64 the dK/dV kernel spills 8 KiB per thread on sm_80, so float32 gets
# the largest tiles that spill nowhere (whose 16 or 32 rows make sm_90a use mma.sync rather than wgmma).
DEFAULT_TILING = {
  ("bfloat16", 64): (64, 64, 4),
  ("bfloat16", 128): (64, 64, 8),
  ("float32", 64): (32, 32, 4),
  ("float32", 128): (16, 32, 8),
}


def default_tiling(dtype, head_dim: int) -> tuple[int, int, int]:
  """(block_q, block_k, num_warps) of DEFAULT_TILING for q.dtype and the head dim."""
  return DEFAULT_TILING[(jnp.dtype(dtype).name, head_dim)]


@dataclasses.dataclass(frozen=True)
class _Config:
  block_q: int
  block_k: int
  scale: float
  interpret: bool
  num_warps: int
  num_stages: int
  dropout_rate: float = 0.0
  heads: int = 1
  length: int = 0  # the unpadded L: dropout's counters use it, so the keep-mask does not depend on the blocks

  def keep(self, stream, rows, cols):
    """Dropout keep-mask of a tile [len(rows), len(cols)]; stream = (seed, batch index, head index)."""
    seed, b, h = stream
    return attention_blocks.dropout_keep(
      seed, b, h, rows[:, None], cols[None, :], self.heads, self.length, self.dropout_rate
    )


def attention(
  q,
  k,
  v,
  *,
  sep,
  segment_ids,
  dropout_rate: float = 0.0,
  dropout_rng=None,
  block_q: int | None = None,
  block_k: int | None = None,
  interpret: bool = False,
  num_warps: int | None = None,
  num_stages: int = 2,
):
  """q, k, v [B, L, H, D]; sep, segment_ids int32 [B, L] (canonical). Returns [B, L, H, D] in q.dtype.

  Softmax in float32, logits scaled by 1/sqrt(D). L need not be a multiple of the blocks (the tail is
  padded internally and sliced off). Blocks and warps left None come from DEFAULT_TILING.
  `interpret=True` runs the kernels in the Pallas interpreter (CPU).
  """
  batch, length, heads, head_dim = q.shape
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate={dropout_rate} must be in [0, 1)")
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError(f"dropout_rate={dropout_rate} needs a dropout_rng")
  if head_dim not in HEAD_DIMS:
    raise ValueError(
      f"head dim {head_dim} is not supported by the pallas_gpu kernel (supported: {HEAD_DIMS}); "
      "use implementation='xla'"
    )
  if q.dtype not in (jnp.float32, jnp.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
    raise ValueError(f"q, k, v must all be float32 or bfloat16; got {q.dtype}, {k.dtype}, {v.dtype}")
  default_q, default_k, default_warps = default_tiling(q.dtype, head_dim)
  block_q, block_k = block_q or default_q, block_k or default_k
  for name, block in (("block_q", block_q), ("block_k", block_k)):
    if block < 16 or block & (block - 1):
      raise ValueError(f"{name}={block} must be a power of two >= 16 (Triton tile shapes)")
  config = _Config(
    block_q=block_q,
    block_k=block_k,
    scale=1.0 / math.sqrt(head_dim),
    interpret=interpret,
    num_warps=num_warps or default_warps,
    num_stages=num_stages,
    dropout_rate=float(dropout_rate),
    heads=heads,
    length=length,
  )
  seed = attention_blocks.dropout_seed(dropout_rng) if dropout_rate > 0.0 else jnp.zeros((1,), jnp.int32)

  padded = attention_blocks.padded_length(length, block_q, block_k)
  lo, hi = attention_blocks.row_intervals(sep, segment_ids, padded)
  first, count = attention_blocks.key_block_ranges(lo, hi, block_q, block_k)
  q_first, q_count = attention_blocks.query_block_ranges(first, count, padded // block_k)
  extra = ((0, 0), (0, padded - length), (0, 0), (0, 0))
  q, k, v = (jnp.pad(x, extra) for x in (q, k, v))
  out = _flash(config, q, k, v, lo, hi, first, count, q_first, q_count, seed)
  return out[:, :length]


def _tile_mask(lo, hi, key_start, block_k):
  """bool [rows, block_k]: key key_start + c lies in row r's interval [lo[r], hi[r]]."""
  keys = key_start + jnp.arange(block_k, dtype=jnp.int32)
  return (keys[None, :] >= lo[:, None]) & (keys[None, :] <= hi[:, None])


def _forward_kernel(
  seed_ref, first_ref, count_ref, lo_ref, hi_ref, q_ref, k_ref, v_ref, out_ref, lse_ref, *, config: _Config
):
  """One (b, h, query block): q_ref [bq, D], k_ref, v_ref [Lp, D], lo_ref, hi_ref [bq]."""
  q, lo, hi = q_ref[...], lo_ref[...], hi_ref[...]
  block_q, head_dim = q.shape
  scale, block_k = config.scale, config.block_k
  rows = pl.program_id(2) * block_q + jnp.arange(block_q, dtype=jnp.int32)
  stream = (seed_ref[0], pl.program_id(0), pl.program_id(1))  # read outside the loop (the interpreter needs it)

  def key_block(j, carry):
    m, l, acc = carry
    cols = pl.ds(j * block_k, block_k)
    k, v = k_ref[cols, :], v_ref[cols, :]
    s = plgpu.dot(q, k, trans_b=True) * scale
    s = jnp.where(_tile_mask(lo, hi, j * block_k, block_k), s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=-1))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with nothing visible yet
    p = jnp.exp(s - m_safe[:, None])
    alpha = jnp.exp(m - m_safe)
    l = alpha * l + p.sum(axis=-1)  # the softmax normalizer counts dropped probabilities too
    if config.dropout_rate > 0.0:
      keep = config.keep(stream, rows, j * block_k + jnp.arange(block_k, dtype=jnp.int32))
      p = jnp.where(keep, p * (1.0 / (1.0 - config.dropout_rate)), 0.0)
    acc = alpha[:, None] * acc + plgpu.dot(p.astype(v.dtype), v)
    return m_new, l, acc

  init = (
    jnp.full((block_q,), -jnp.inf, jnp.float32),
    jnp.zeros((block_q,), jnp.float32),
    jnp.zeros((block_q, head_dim), jnp.float32),
  )
  first = first_ref[()]
  m, l, acc = jax.lax.fori_loop(first, first + count_ref[()], key_block, init)
  empty = l == 0.0  # padding rows
  l_safe = jnp.where(empty, 1.0, l)
  out_ref[...] = jnp.where(empty[:, None], 0.0, acc / l_safe[:, None]).astype(out_ref.dtype)
  lse_ref[...] = jnp.where(empty, 0.0, m + jnp.log(l_safe))


def _dropped(config: _Config, stream, x, rows, cols):
  """x [rows, cols] zero where dropout drops, scaled by 1 / (1 - rate) where it keeps (identity without dropout):
  applied to dP after dropout it gives dP before, and to P the probabilities that multiplied V."""
  if config.dropout_rate == 0.0:
    return x
  return jnp.where(config.keep(stream, rows, cols), x * (1.0 / (1.0 - config.dropout_rate)), 0.0)


def _dq_kernel(
  seed_ref,
  first_ref,
  count_ref,
  lo_ref,
  hi_ref,
  q_ref,
  k_ref,
  v_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dq_ref,
  *,
  config: _Config,
):
  """One (b, h, query block): dQ over its visible key blocks. q_ref, do_ref [bq, D], k_ref, v_ref [Lp, D]."""
  q, do, lo, hi = q_ref[...], do_ref[...], lo_ref[...], hi_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  scale, block_k = config.scale, config.block_k
  rows = pl.program_id(2) * q.shape[0] + jnp.arange(q.shape[0], dtype=jnp.int32)
  stream = (seed_ref[0], pl.program_id(0), pl.program_id(1))

  def key_block(j, dq):
    cols = pl.ds(j * block_k, block_k)
    k, v = k_ref[cols, :], v_ref[cols, :]
    mask = _tile_mask(lo, hi, j * block_k, block_k)
    s = plgpu.dot(q, k, trans_b=True) * scale
    p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
    dp = _dropped(
      config, stream, plgpu.dot(do, v, trans_b=True), rows, j * block_k + jnp.arange(block_k, dtype=jnp.int32)
    )
    ds = p * (dp - delta[:, None]) * scale
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  first = first_ref[()]
  dq = jax.lax.fori_loop(first, first + count_ref[()], key_block, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(
  seed_ref,
  q_first_ref,
  q_count_ref,
  lo_ref,
  hi_ref,
  q_ref,
  k_ref,
  v_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dk_ref,
  dv_ref,
  *,
  config: _Config,
):
  """One (b, h, key block): dK, dV over the query blocks that see it. k_ref, v_ref [bk, D], q_ref [Lp, D]."""
  k, v = k_ref[...], v_ref[...]
  block_k = k.shape[0]
  scale, block_q = config.scale, config.block_q
  key_start = pl.program_id(2) * block_k
  cols = key_start + jnp.arange(block_k, dtype=jnp.int32)
  stream = (seed_ref[0], pl.program_id(0), pl.program_id(1))

  def query_block(i, carry):
    dk, dv = carry
    rows = pl.ds(i * block_q, block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
    lse, delta = lse_ref[rows], delta_ref[rows]
    mask = _tile_mask(lo_ref[rows], hi_ref[rows], key_start, block_k)
    s = plgpu.dot(q, k, trans_b=True) * scale
    p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
    rows = i * block_q + jnp.arange(block_q, dtype=jnp.int32)
    dp = _dropped(config, stream, plgpu.dot(do, v, trans_b=True), rows, cols)
    ds = p * (dp - delta[:, None]) * scale
    p_kept = _dropped(config, stream, p, rows, cols)  # the probabilities that multiplied V
    dv = dv + plgpu.dot(p_kept.astype(do.dtype), do, trans_a=True)
    dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  q_first = q_first_ref[()]
  dk, dv = jax.lax.fori_loop(q_first, q_first + q_count_ref[()], query_block, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _specs(block_q: int, block_k: int, length: int, head_dim: int):
  """BlockSpecs on a grid (b, h, block): a block of rows, the whole row range, per-row scalars, a table entry."""
  return dict(
    rows_q=pl.BlockSpec((None, block_q, None, head_dim), lambda b, h, i: (b, i, h, 0)),
    rows_k=pl.BlockSpec((None, block_k, None, head_dim), lambda b, h, i: (b, i, h, 0)),
    all_rows=pl.BlockSpec((None, length, None, head_dim), lambda b, h, i: (b, 0, h, 0)),
    row_scalars_q=pl.BlockSpec((None, block_q), lambda b, h, i: (b, i)),
    all_row_scalars=pl.BlockSpec((None, length), lambda b, h, i: (b, 0)),
    head_rows_q=pl.BlockSpec((None, None, block_q), lambda b, h, i: (b, h, i)),
    all_head_rows=pl.BlockSpec((None, None, length), lambda b, h, i: (b, h, 0)),
    table=pl.BlockSpec((None, None), lambda b, h, i: (b, i)),
    seed=pl.BlockSpec((1,), lambda b, h, i: (0,)),
  )


def _call(config: _Config, kernel, grid, in_specs, out_specs, out_shape, name):
  return pl.pallas_call(
    kernel,
    grid=grid,
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    compiler_params=plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
    interpret=config.interpret,
    name=name,
  )


def _forward(config: _Config, q, k, v, lo, hi, first, count, q_first, q_count, seed):
  batch, length, heads, head_dim = q.shape
  s = _specs(config.block_q, config.block_k, length, head_dim)
  out, lse = _call(
    config,
    functools.partial(_forward_kernel, config=config),
    (batch, heads, length // config.block_q),
    [
      s["seed"],
      s["table"],
      s["table"],
      s["row_scalars_q"],
      s["row_scalars_q"],
      s["rows_q"],
      s["all_rows"],
      s["all_rows"],
    ],
    [s["rows_q"], s["head_rows_q"]],
    [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, length), jnp.float32)],
    "glm_flash_forward",
  )(seed, first, count, lo, hi, q, k, v)
  return out, (q, k, v, lo, hi, first, count, q_first, q_count, seed, out, lse)


def _backward(config: _Config, residuals, dout):
  q, k, v, lo, hi, first, count, q_first, q_count, seed, out, lse = residuals
  batch, length, heads, head_dim = q.shape
  # rowsum(dO * O) = rowsum(dP * P) with dropout too: O already holds the dropped, rescaled probabilities.
  delta = jnp.einsum("blhd,blhd->bhl", out.astype(jnp.float32), dout.astype(jnp.float32))
  dout = dout.astype(q.dtype)
  s = _specs(config.block_q, config.block_k, length, head_dim)
  dq = _call(
    config,
    functools.partial(_dq_kernel, config=config),
    (batch, heads, length // config.block_q),
    [
      s["seed"],
      s["table"],
      s["table"],
      s["row_scalars_q"],
      s["row_scalars_q"],
      s["rows_q"],
      s["all_rows"],
      s["all_rows"],
      s["rows_q"],
      s["head_rows_q"],
      s["head_rows_q"],
    ],
    s["rows_q"],
    jax.ShapeDtypeStruct(q.shape, q.dtype),
    "glm_flash_dq",
  )(seed, first, count, lo, hi, q, k, v, dout, lse, delta)
  dk, dv = _call(
    config,
    functools.partial(_dkv_kernel, config=config),
    (batch, heads, length // config.block_k),
    [
      s["seed"],
      s["table"],
      s["table"],
      s["all_row_scalars"],
      s["all_row_scalars"],
      s["all_rows"],
      s["rows_k"],
      s["rows_k"],
      s["all_rows"],
      s["all_head_rows"],
      s["all_head_rows"],
    ],
    [s["rows_k"], s["rows_k"]],
    [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    "glm_flash_dkv",
  )(seed, q_first, q_count, lo, hi, q, k, v, dout, lse, delta)
  return dq, dk, dv, None, None, None, None, None, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(config, q, k, v, lo, hi, first, count, q_first, q_count, seed):
  """q, k, v [B, Lp, H, D], Lp a multiple of both blocks; int32 tables from attention_blocks; int32 [1] seed."""
  return _forward(config, q, k, v, lo, hi, first, count, q_first, q_count, seed)[0]


_flash.defvjp(_forward, _backward)
