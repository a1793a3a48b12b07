"""Queries against a key/value cache: a chunk after each row's cached tokens equals the reference attention over the
whole row (cache entries + chunk) with the GLM rule."""

from __future__ import annotations

import numpy as np
import pytest

from glm_jax import ops


def _case(seed, batch=3, capacity=12, chunk=4, heads=2, dim=8):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.normal(size=(batch, chunk, heads, dim)).astype(np.float32) for _ in range(3))
  # Head-major, as the cache holds them: [B, H, Lc, D].
  k_cache, v_cache = (rng.normal(size=(batch, heads, capacity, dim)).astype(np.float32) for _ in range(2))
  return q, k, v, k_cache, v_cache


@pytest.mark.parametrize("chunk_sep", [0, 2])
def test_chunk_against_the_cache_equals_the_whole_row(chunk_sep):
  q, k, v, k_cache, v_cache = _case(0)
  lengths = np.array([5, 0, 12], np.int32)
  real = np.array([4, 3, 1], np.int32)  # real chunk tokens per row; the rest is padding
  segment_ids = (np.arange(4)[None, :] < real[:, None]).astype(np.int32)
  sep = np.full((3,), chunk_sep, np.int32)
  out = np.asarray(
    ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, k_cache=k_cache, v_cache=v_cache, cache_lengths=lengths)
  )
  for b in range(3):
    n, c = int(lengths[b]), int(real[b])
    # The oracle's row: the cache's valid entries as Part A (seen by all), then the chunk's real tokens, whose own
    # first `chunk_sep` tokens are bidirectional among themselves (Part A of the chunk).
    keys = np.concatenate([k_cache[b, :, :n].swapaxes(0, 1), k[b, :c]])[None]
    values = np.concatenate([v_cache[b, :, :n].swapaxes(0, 1), v[b, :c]])[None]
    queries = np.concatenate([np.zeros((n, *q.shape[2:]), np.float32), q[b, :c]])[None]
    row_sep = np.array([n + min(chunk_sep, c)], np.int32)
    want = np.asarray(ops.attention(queries, keys, values, sep=row_sep, implementation="reference"))[0, n:]
    np.testing.assert_allclose(out[b, :c], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[b, c:], 0.0)  # padding queries


def test_cache_arguments_are_checked():
  q, k, v, k_cache, v_cache = _case(1)
  with pytest.raises(ValueError, match="needs all of k_cache, v_cache and cache_lengths"):
    ops.attention(q, k, v, sep=np.zeros(3, np.int32), k_cache=k_cache)
  with pytest.raises(ValueError, match="cache_lengths has shape"):
    ops.attention(q, k, v, sep=np.zeros(3, np.int32), k_cache=k_cache, v_cache=v_cache, cache_lengths=np.zeros(2))
  with pytest.raises(ValueError, match="k_cache and v_cache must share"):
    ops.attention(q, k, v, sep=np.zeros(3, np.int32), k_cache=k_cache[:, :1], v_cache=v_cache, cache_lengths=[1] * 3)


@pytest.mark.parametrize("chunk_sep", [0, 2])
def test_a_chunk_written_into_the_cache_first_attends_as_the_separate_chunk(chunk_sep):
  """chunk_in_cache: the chunk's k, v at entries lengths..lengths+Lq-1 (as a decode step writes them in place)."""
  q, k, v, k_cache, v_cache = _case(2)
  lengths = np.array([5, 0, 8], np.int32)
  real = np.array([4, 3, 1], np.int32)
  segment_ids = (np.arange(4)[None, :] < real[:, None]).astype(np.int32)
  sep = np.full((3,), chunk_sep, np.int32)
  written_k, written_v = k_cache.copy(), v_cache.copy()
  for b in range(3):
    written_k[b, :, lengths[b] : lengths[b] + 4] = k[b].swapaxes(0, 1)
    written_v[b, :, lengths[b] : lengths[b] + 4] = v[b].swapaxes(0, 1)
  common = dict(sep=sep, segment_ids=segment_ids, cache_lengths=lengths)
  want = ops.attention(q, k, v, k_cache=k_cache, v_cache=v_cache, **common)
  got = ops.attention(q, k, v, k_cache=written_k, v_cache=written_v, chunk_in_cache=True, **common)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="chunk_in_cache needs"):
    ops.attention(q, k, v, sep=sep, chunk_in_cache=True)
