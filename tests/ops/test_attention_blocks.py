"""Block-range tables of the Pallas kernels against the rule at block granularity."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from glm_jax.ops import attention_blocks, mask as mask_lib


def tables(sep, segment_ids, block_q, block_k):
  padded = attention_blocks.padded_length(segment_ids.shape[1], block_q, block_k)
  return padded, *(np.asarray(x) for x in _tables(jnp.asarray(sep), jnp.asarray(segment_ids), block_q, block_k))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _tables(sep, segment_ids, block_q, block_k):
  padded = attention_blocks.padded_length(segment_ids.shape[1], block_q, block_k)
  lo, hi = attention_blocks.row_intervals(sep, segment_ids, padded)
  first, count = attention_blocks.key_block_ranges(lo, hi, block_q, block_k)
  q_first, q_count = attention_blocks.query_block_ranges(first, count, padded // block_k)
  return lo, hi, first, count, q_first, q_count


def block_visibility(sep, segment_ids, padded, block_q, block_k):
  """bool [B, nq, nk] from the rule itself: does any row of query block i attend any key of block j."""
  dense = _dense_mask(jnp.asarray(sep), jnp.asarray(segment_ids))
  length = dense.shape[-1]
  full = np.zeros((dense.shape[0], padded, padded), bool)
  full[:, :length, :length] = dense
  return full.reshape(-1, padded // block_q, block_q, padded // block_k, block_k).any(axis=(2, 4))


def _dense_mask(sep, segment_ids):
  return np.asarray(jax.jit(mask_lib.dense_mask)(sep, segment_ids))


def ranges_to_sets(first, count, size):
  return (first[..., None] <= np.arange(size)) & (np.arange(size) < (first + count)[..., None])


@st.composite
def packed_rows(draw):
  length = 96  # one shape: the tables compile once per block pair
  used = draw(st.integers(1, length))
  cuts = sorted(draw(st.sets(st.integers(1, max(1, used - 1)), max_size=7)) - {used})
  bounds = [0, *cuts, used]
  segment_ids = np.zeros((1, length), np.int32)
  sep = np.zeros((1, length), np.int32)
  for s, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
    segment_ids[0, start:stop] = s + 1
    sep[0, start:stop] = draw(st.integers(0, stop - start + 3))  # beyond the segment too
  return sep, segment_ids


@settings(max_examples=50, deadline=None)
@given(packed_rows(), st.sampled_from([(8, 8), (16, 8), (8, 32), (24, 16)]))
def test_tables_cover_every_allowed_pair_and_mirror_each_other(rows, blocks):
  sep, segment_ids = rows
  block_q, block_k = blocks
  padded, lo, hi, first, count, q_first, q_count = tables(sep, segment_ids, block_q, block_k)
  visible = block_visibility(sep, segment_ids, padded, block_q, block_k)
  visited = ranges_to_sets(first, count, padded // block_k)
  # Visited ⊇ needed; the ranges are the tightest intervals holding the needed blocks.
  assert not (visible & ~visited).any()
  needed_count = np.where(visible.any(-1), visible.shape[-1] - visible.argmax(-1) - visible[..., ::-1].argmax(-1), 0)
  np.testing.assert_array_equal(count, needed_count)
  # The mirror table visits, for each key block, exactly the query blocks whose range holds it.
  mirrored = ranges_to_sets(q_first, q_count, padded // block_q)  # [B, nk, nq]
  np.testing.assert_array_equal(mirrored, visited.swapaxes(1, 2))
  # The per-row intervals are the rule: key k in [lo, hi] iff allowed.
  keys = np.arange(segment_ids.shape[1])
  dense = _dense_mask(jnp.asarray(sep), jnp.asarray(segment_ids))
  lo, hi = np.asarray(lo)[:, : segment_ids.shape[1], None], np.asarray(hi)[:, : segment_ids.shape[1], None]
  np.testing.assert_array_equal((keys >= lo) & (keys <= hi), dense)


def test_causal_heavy_rows_skip_most_blocks():
  # GLM-shaped: short Part A, long causal Part B, two packed examples and padding; blocks of 16.
  segment_ids = np.array([[1] * 96 + [2] * 128 + [0] * 32], np.int32)
  sep = np.array([[10] * 96 + [20] * 128 + [0] * 32], np.int32)
  padded, *_, first, count, q_first, q_count = tables(sep, segment_ids, 16, 16)
  visited = ranges_to_sets(first, count, padded // 16)
  assert visited.sum() < 0.3 * visited.size
  # Known rows: query block 0 sees key block 0 only; padding blocks (14, 15) see and are seen by nothing.
  assert (first[0, 0], count[0, 0]) == (0, 1)
  assert count[0, 14:].tolist() == [0, 0] and q_count[0, 14:].tolist() == [0, 0]
  # Segment 2 starts at block 6: its query blocks never visit segment 1's key blocks.
  assert first[0, 6:14].min() == 6


@pytest.mark.parametrize("length,block_q,block_k,want", [(100, 16, 32, 128), (64, 64, 64, 64), (5, 8, 24, 24)])
def test_padded_length_is_a_multiple_of_both_blocks(length, block_q, block_k, want):
  assert attention_blocks.padded_length(length, block_q, block_k) == want
