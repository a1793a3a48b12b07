"""GLM flash attention for TPU in Pallas (Mosaic), with the mask fused and masked blocks skipped.

Mask. No [L, L] mask exists anywhere: each query row carries the inclusive interval [lo, hi] of keys it
may attend (attention_blocks.row_intervals: segment start .. max(q, segment start + sep - 1), clipped to
the segment; empty for padding), and a tile's mask is two integer comparisons per element. The per-row
scalars travel lane-broadcast ([B, Lp, 128], one (block_q, 128) VMEM tile per query block).

Block skipping. Both interval ends never decrease along the real rows, so query block i sees exactly the
key blocks [first(i), first(i) + count(i)) (attention_blocks.key_block_ranges). Mosaic grids are static,
so the forward and dQ kernels run on a grid (B, H, query blocks, nk) whose last axis counts visited key
blocks: the tables are scalar-prefetched (`pltpu.PrefetchScalarGridSpec`), the key/value index map
returns block first(i) + min(j, count(i) - 1), and for j >= count(i) it keeps returning the last visited
block, so the pipeline sees an unchanged block index and issues no DMA, while `pl.when(j < count(i))`
skips the body. The dK/dV kernel mirrors this on a grid (B, H, key blocks, nq) over the query blocks
that see each key block (attention_blocks.query_block_ranges). Skipped tiles are never copied to VMEM.

Numerics. Matmuls take the input dtype (bf16 or f32) and accumulate in f32; softmax statistics are
f32 in VMEM scratch. The backward is a `jax.custom_vjp` that recomputes each tile's probabilities from
the saved log-sum-exp. Padding rows return zeros and get zero gradients. q, k, v are moved to
[B, H, L, D] for the kernels (Mosaic tiles the last two dimensions).

Dropout: the GPU kernel's counter-hash keep-mask (attention_blocks.dropout_keep), recomputed in each kernel.

Limits (each raises, naming the alternative): head dim 64 or 128, on a real TPU block_q a multiple of 8 and
block_k a multiple of 128. Values at masked positions of a visited tile must
be finite; values in skipped tiles are never read. `interpret=True` runs Pallas's TPU interpreter on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from glm_jax.ops import attention_blocks

HEAD_DIMS = (64, 128)
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 128
LANES = 128
_NT = (((1,), (1,)), ((), ()))  # contract the last dims: x @ y.T


@dataclasses.dataclass(frozen=True)
class _Config:
  block_q: int
  block_k: int
  scale: float
  interpret: bool
  dropout_rate: float = 0.0
  vmem_limit_bytes: int | None = None
  heads: int = 1
  length: int = 0  # the unpadded L: dropout's counters use it, so the keep-mask does not depend on the blocks

  def dropped(self, seed, x, query_block, key_block):
    """x [bq, bk] of tile (query_block, key_block) at the grid point's (batch, head): zero where dropout drops,
    scaled by 1 / (1 - rate) where it keeps; x itself without dropout."""
    if self.dropout_rate == 0.0:
      return x
    shape = x.shape
    rows = query_block * shape[0] + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    cols = key_block * shape[1] + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    keep = attention_blocks.dropout_keep(
      seed, pl.program_id(0), pl.program_id(1), rows, cols, self.heads, self.length, self.dropout_rate
    )
    return jnp.where(keep, x * (1.0 / (1.0 - self.dropout_rate)), 0.0)


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
  interpret: bool = False,
  vmem_limit_bytes: int | None = None,
):
  """q, k, v [B, L, H, D]; sep, segment_ids int32 [B, L] (canonical). Returns [B, L, H, D] in q.dtype.

  Softmax in float32, logits scaled by 1/sqrt(D). L need not be a multiple of the blocks (the tail is
  padded internally and sliced off). `interpret=True` runs the kernels in Pallas's TPU interpret mode.
  `vmem_limit_bytes` raises (or lowers) Mosaic's scoped VMEM limit, for blocks larger than the default
  limit holds; a kernel that needs more than the limit fails to compile (CompileTimeScopedVmemOom).
  """
  batch, length, heads, head_dim = q.shape
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate={dropout_rate} must be in [0, 1)")
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError(f"dropout_rate={dropout_rate} needs a dropout_rng")
  if head_dim not in HEAD_DIMS:
    raise ValueError(
      f"head dim {head_dim} is not supported by the pallas_tpu kernel (supported: {HEAD_DIMS}); "
      "use implementation='xla'"
    )
  block_multiples = (8, 8) if interpret else (8, LANES)
  for name, block, multiple in zip(("block_q", "block_k"), (block_q, block_k), block_multiples):
    if block < multiple or block % multiple:
      raise ValueError(f"{name}={block} must be a positive multiple of {multiple} (Mosaic tile shape)")
  if q.dtype not in (jnp.float32, jnp.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
    raise ValueError(f"q, k, v must all be float32 or bfloat16; got {q.dtype}, {k.dtype}, {v.dtype}")
  config = _Config(
    block_q=block_q,
    block_k=block_k,
    scale=1.0 / math.sqrt(head_dim),
    interpret=interpret,
    dropout_rate=float(dropout_rate),
    vmem_limit_bytes=vmem_limit_bytes,
    heads=heads,
    length=length,
  )
  seed = attention_blocks.dropout_seed(dropout_rng) if dropout_rate > 0.0 else jnp.zeros((1,), jnp.int32)

  padded = attention_blocks.padded_length(length, block_q, block_k)
  lo, hi = attention_blocks.row_intervals(sep, segment_ids, padded)
  first, count = attention_blocks.key_block_ranges(lo, hi, block_q, block_k)
  q_first, q_count = attention_blocks.query_block_ranges(first, count, padded // block_k)
  extra = ((0, 0), (0, padded - length), (0, 0), (0, 0))
  q, k, v = (jnp.pad(x, extra).swapaxes(1, 2) for x in (q, k, v))  # [B, H, Lp, D]
  out = _flash(config, q, k, v, lo, hi, first, count, q_first, q_count, seed)
  return out.swapaxes(1, 2)[:, :length]


def _lanes(x: jax.Array) -> jax.Array:
  """[..., Lp] -> [..., Lp, 128]: per-row scalars as a (rows, 128) VMEM tile."""
  return jnp.broadcast_to(x[..., None], (*x.shape, LANES))


def _tile_mask(lo_ref, hi_ref, key_block, block_q: int, block_k: int):
  """bool [block_q, block_k]: key key_block * block_k + c lies in row r's interval [lo, hi]."""
  keys = key_block * block_k + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
  return (keys >= lo_ref[:, :1]) & (keys <= hi_ref[:, :1])


def _forward_kernel(
  first_ref,
  count_ref,
  seed_ref,
  lo_ref,
  hi_ref,
  q_ref,
  k_ref,
  v_ref,
  out_ref,
  lse_ref,
  m_scratch,
  l_scratch,
  acc_scratch,
  *,
  config: _Config,
):
  """Grid point (b, h, query block i, visit j): q_ref [bq, D], k_ref, v_ref [bk, D] (key block first + j)."""
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  block_q, block_k = q_ref.shape[0], k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    m_scratch[...] = jnp.full(m_scratch.shape, -jnp.inf, jnp.float32)
    l_scratch[...] = jnp.zeros(l_scratch.shape, jnp.float32)
    acc_scratch[...] = jnp.zeros(acc_scratch.shape, jnp.float32)

  @pl.when(j < count_ref[b, i])
  def _visit():
    k, v = k_ref[...], v_ref[...]
    key_block = first_ref[b, i] + j
    s = jax.lax.dot_general(q_ref[...], k, _NT, preferred_element_type=jnp.float32) * config.scale
    s = jnp.where(_tile_mask(lo_ref, hi_ref, key_block, block_q, block_k), s, -jnp.inf)
    m_prev = m_scratch[...]  # [bq, 128], lane-broadcast
    m_new = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with nothing visible yet
    p = jnp.exp(s - m_safe[:, :1])
    alpha = jnp.exp(m_prev - m_safe)
    m_scratch[...] = m_new
    l_scratch[...] = alpha * l_scratch[...] + p.sum(axis=-1, keepdims=True)  # counts dropped p too
    p = config.dropped(seed_ref[0], p, i, key_block)
    pv = jax.lax.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    acc_scratch[...] = alpha[:, :1] * acc_scratch[...] + pv

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    l = l_scratch[...]
    empty = l == 0.0  # padding rows
    l_safe = jnp.where(empty, 1.0, l)
    out = acc_scratch[...] / l_safe[:, :1]
    out_ref[...] = jnp.where(empty[:, :1], 0.0, out).astype(out_ref.dtype)
    lse_ref[...] = jnp.where(empty, 0.0, m_scratch[...] + jnp.log(l_safe))


def _probabilities_and_ds(q, k, v, do, lse, delta, mask, config: _Config, seed, query_block, key_block):
  """Recomputed tile: the probabilities that multiplied V (after dropout) [bq, bk] (f32), and
  dS = p * (dP - delta) * scale with dP the gradient of the probabilities before dropout."""
  s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * config.scale
  p = jnp.where(mask, jnp.exp(s - lse), 0.0)
  dp = config.dropped(seed, jax.lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32), query_block, key_block)
  return config.dropped(seed, p, query_block, key_block), p * (dp - delta) * config.scale


def _dq_kernel(
  first_ref,
  count_ref,
  seed_ref,
  lo_ref,
  hi_ref,
  q_ref,
  k_ref,
  v_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dq_ref,
  dq_scratch,
  *,
  config: _Config,
):
  """Grid point (b, h, query block i, visit j), as in the forward."""
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  block_q, block_k = q_ref.shape[0], k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    dq_scratch[...] = jnp.zeros(dq_scratch.shape, jnp.float32)

  @pl.when(j < count_ref[b, i])
  def _visit():
    k = k_ref[...]
    key_block = first_ref[b, i] + j
    mask = _tile_mask(lo_ref, hi_ref, key_block, block_q, block_k)
    _, ds = _probabilities_and_ds(
      q_ref[...], k, v_ref[...], do_ref[...], lse_ref[:, :1], delta_ref[:, :1], mask, config, seed_ref[0], i, key_block
    )
    dq_scratch[...] += jax.lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = dq_scratch[...].astype(dq_ref.dtype)


def _dkv_kernel(
  q_first_ref,
  q_count_ref,
  seed_ref,
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
  dk_scratch,
  dv_scratch,
  *,
  config: _Config,
):
  """Grid point (b, h, key block j, visit i): q-side refs hold query block q_first(j) + i."""
  b, j, i = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  block_q, block_k = q_ref.shape[0], k_ref.shape[0]

  @pl.when(i == 0)
  def _init():
    dk_scratch[...] = jnp.zeros(dk_scratch.shape, jnp.float32)
    dv_scratch[...] = jnp.zeros(dv_scratch.shape, jnp.float32)

  @pl.when(i < q_count_ref[b, j])
  def _visit():
    q, do = q_ref[...], do_ref[...]
    mask = _tile_mask(lo_ref, hi_ref, j, block_q, block_k)
    p, ds = _probabilities_and_ds(
      q,
      k_ref[...],
      v_ref[...],
      do,
      lse_ref[:, :1],
      delta_ref[:, :1],
      mask,
      config,
      seed_ref[0],
      q_first_ref[b, j] + i,
      j,
    )
    dv_scratch[...] += jax.lax.dot(p.T.astype(do.dtype), do, preferred_element_type=jnp.float32)
    dk_scratch[...] += jax.lax.dot(ds.T.astype(q.dtype), q, preferred_element_type=jnp.float32)

  @pl.when(i == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = dk_scratch[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_scratch[...].astype(dv_ref.dtype)


def _visited(first_ref, count_ref, row, visit):
  """Block visited at step `visit` of table row `row`; past the row's count it stays on the last visited
  block (no new DMA), and for an empty row it stays on the row's (unused) first entry."""
  return first_ref[row] + jnp.minimum(visit, jnp.maximum(count_ref[row] - 1, 0))


def _pallas(config: _Config, kernel, grid, in_specs, out_specs, out_shape, scratch, name):
  grid_spec = pltpu.PrefetchScalarGridSpec(
    num_scalar_prefetch=3, grid=grid, in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch
  )
  return pl.pallas_call(
    kernel,
    grid_spec=grid_spec,
    out_shape=out_shape,
    name=name,
    compiler_params=pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"), vmem_limit_bytes=config.vmem_limit_bytes
    ),
    interpret=pltpu.InterpretParams() if config.interpret else False,
  )


def _query_major_specs(block_q: int, block_k: int, head_dim: int):
  """Specs on the grid (b, h, query block i, visit j) of the forward and dQ kernels."""

  def kv_block(b, h, i, j, first_ref, count_ref, *_):
    return b, h, _visited(first_ref, count_ref, (b, i), j), 0

  return dict(
    row_scalars=pl.BlockSpec((None, block_q, LANES), lambda b, h, i, j, *_: (b, i, 0)),
    q_rows=pl.BlockSpec((None, None, block_q, head_dim), lambda b, h, i, j, *_: (b, h, i, 0)),
    head_row_scalars=pl.BlockSpec((None, None, block_q, LANES), lambda b, h, i, j, *_: (b, h, i, 0)),
    kv_rows=pl.BlockSpec((None, None, block_k, head_dim), kv_block),
  )


def _forward(config: _Config, q, k, v, lo, hi, first, count, q_first, q_count, seed):
  batch, heads, length, head_dim = q.shape
  bq, bk = config.block_q, config.block_k
  s = _query_major_specs(bq, bk, head_dim)
  out, lse = _pallas(
    config,
    functools.partial(_forward_kernel, config=config),
    (batch, heads, length // bq, length // bk),
    [s["row_scalars"], s["row_scalars"], s["q_rows"], s["kv_rows"], s["kv_rows"]],
    [s["q_rows"], s["head_row_scalars"]],
    [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, length, LANES), jnp.float32)],
    [
      pltpu.VMEM((bq, LANES), jnp.float32),
      pltpu.VMEM((bq, LANES), jnp.float32),
      pltpu.VMEM((bq, head_dim), jnp.float32),
    ],
    "glm_flash_forward",
  )(first, count, seed, _lanes(lo), _lanes(hi), q, k, v)
  return out, (q, k, v, lo, hi, first, count, q_first, q_count, seed, out, lse[..., 0])


def _backward(config: _Config, residuals, dout):
  q, k, v, lo, hi, first, count, q_first, q_count, seed, out, lse = residuals
  batch, heads, length, head_dim = q.shape
  bq, bk = config.block_q, config.block_k
  delta = jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32), axis=-1)  # [B, H, Lp]
  dout = dout.astype(q.dtype)
  lo, hi, lse, delta = _lanes(lo), _lanes(hi), _lanes(lse), _lanes(delta)

  s = _query_major_specs(bq, bk, head_dim)
  dq = _pallas(
    config,
    functools.partial(_dq_kernel, config=config),
    (batch, heads, length // bq, length // bk),
    [
      s["row_scalars"],
      s["row_scalars"],
      s["q_rows"],
      s["kv_rows"],
      s["kv_rows"],
      s["q_rows"],
      s["head_row_scalars"],
      s["head_row_scalars"],
    ],
    s["q_rows"],
    jax.ShapeDtypeStruct(q.shape, q.dtype),
    [pltpu.VMEM((bq, head_dim), jnp.float32)],
    "glm_flash_dq",
  )(first, count, seed, lo, hi, q, k, v, dout, lse, delta)

  # Grid (b, h, key block j, visit i): the q side follows the mirror table.
  def q_block(b, h, j, i, q_first_ref, q_count_ref, *_):
    return _visited(q_first_ref, q_count_ref, (b, j), i)

  row_scalars = pl.BlockSpec((None, bq, LANES), lambda b, h, j, i, *t: (b, q_block(b, h, j, i, *t), 0))
  q_rows = pl.BlockSpec((None, None, bq, head_dim), lambda b, h, j, i, *t: (b, h, q_block(b, h, j, i, *t), 0))
  head_row_scalars = pl.BlockSpec((None, None, bq, LANES), lambda b, h, j, i, *t: (b, h, q_block(b, h, j, i, *t), 0))
  kv_rows = pl.BlockSpec((None, None, bk, head_dim), lambda b, h, j, i, *_: (b, h, j, 0))
  dk, dv = _pallas(
    config,
    functools.partial(_dkv_kernel, config=config),
    (batch, heads, length // bk, length // bq),
    [row_scalars, row_scalars, q_rows, kv_rows, kv_rows, q_rows, head_row_scalars, head_row_scalars],
    [kv_rows, kv_rows],
    [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    [pltpu.VMEM((bk, head_dim), jnp.float32), pltpu.VMEM((bk, head_dim), jnp.float32)],
    "glm_flash_dkv",
  )(q_first, q_count, seed, lo, hi, q, k, v, dout, lse, delta)
  return dq, dk, dv, None, None, None, None, None, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(config, q, k, v, lo, hi, first, count, q_first, q_count, seed):
  """q, k, v [B, H, Lp, D], Lp a multiple of both blocks; int32 tables from attention_blocks; int32 [1] seed."""
  return _forward(config, q, k, v, lo, hi, first, count, q_first, q_count, seed)[0]


_flash.defvjp(_forward, _backward)
