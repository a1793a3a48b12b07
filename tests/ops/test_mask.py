"""mask.py against the attention rule written as a plain Python loop."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from glm_jax.ops import mask as mask_lib


def rule_by_loop(sep, segment_ids):
  """docs/design.md, verbatim: q attends k iff same nonzero segment and (k <= q or k in that segment's Part A)."""
  batch, length = segment_ids.shape
  allowed = np.zeros((batch, length, length), bool)
  for b in range(batch):
    for q in range(length):
      for k in range(length):
        if segment_ids[b, q] == 0 or segment_ids[b, q] != segment_ids[b, k]:
          continue
        start = k
        while start > 0 and segment_ids[b, start - 1] == segment_ids[b, k]:
          start -= 1
        allowed[b, q, k] = k <= q or k - start < sep[b, k]
  return allowed


@st.composite
def packed_rows(draw, batch=3, length=16):
  """[B, L] segment ids (contiguous 1..n, tail padding) and per-token sep in [0, segment length].

  One fixed shape, so that jax compiles each mask function once for all examples.
  """
  segment_ids = np.zeros((batch, length), np.int32)
  sep = np.zeros((batch, length), np.int32)
  for b in range(batch):
    used = draw(st.integers(0, length))
    start, segment = 0, 1
    while start < used:
      stop = draw(st.integers(start + 1, used))
      segment_ids[b, start:stop] = segment
      sep[b, start:stop] = draw(st.integers(0, stop - start))
      start, segment = stop, segment + 1
  return sep, segment_ids


@settings(max_examples=150, deadline=None)
@given(packed_rows())
def test_dense_mask_is_the_rule(rows):
  sep, segment_ids = rows
  np.testing.assert_array_equal(
    mask_lib.dense_mask(jnp.asarray(sep), jnp.asarray(segment_ids)), rule_by_loop(sep, segment_ids)
  )


@settings(max_examples=150, deadline=None)
@given(packed_rows())
def test_key_intervals_are_the_dense_mask(rows):
  sep, segment_ids = rows
  length = segment_ids.shape[1]
  lo, hi = mask_lib.key_intervals(jnp.asarray(sep), jnp.asarray(segment_ids))
  keys = np.arange(length)
  from_intervals = (keys >= np.asarray(lo)[:, :, None]) & (keys <= np.asarray(hi)[:, :, None])
  np.testing.assert_array_equal(from_intervals, mask_lib.dense_mask(jnp.asarray(sep), jnp.asarray(segment_ids)))
  # Both ends never decrease along a segment: what lets kernels bound key blocks by first/last row.
  same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
  assert np.all(np.diff(np.asarray(lo))[same] >= 0) and np.all(np.diff(np.asarray(hi))[same] >= 0)


def test_segment_starts():
  segment_ids = jnp.asarray([[1, 1, 2, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], jnp.int32)
  assert mask_lib.segment_starts(segment_ids).tolist() == [[0, 0, 2, 2, 2, 5, 6, 6], [0] * 8]


def test_padding_rows_get_the_empty_interval():
  lo, hi = mask_lib.key_intervals(jnp.asarray([[3, 3, 3, 0, 0]]), jnp.asarray([[1, 1, 1, 0, 0]]))
  assert lo.tolist() == [[0, 0, 0, 5, 5]] and hi.tolist() == [[2, 2, 2, -1, -1]]


def test_canonicalize_broadcasts_per_example_sep_to_one_segment_rows():
  sep, segment_ids = mask_lib.canonicalize(jnp.asarray([2, 5]), None, 6)
  assert sep.dtype == jnp.int32 and segment_ids.dtype == jnp.int32
  assert sep.tolist() == [[2] * 6, [5] * 6] and segment_ids.tolist() == [[1] * 6] * 2


@pytest.mark.parametrize(
  "sep_shape,segment_shape,message",
  [
    ((2, 5), None, "sep has shape"),
    ((2, 6, 1), None, "sep has shape"),
    ((2, 6), (2, 5), "segment_ids has shape"),
  ],
)
def test_canonicalize_rejects_bad_shapes(sep_shape, segment_shape, message):
  segment_ids = None if segment_shape is None else jnp.ones(segment_shape, jnp.int32)
  with pytest.raises(ValueError, match=message):
    mask_lib.canonicalize(jnp.zeros(sep_shape, jnp.int32), segment_ids, 6)
