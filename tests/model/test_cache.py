"""The model call with a KVCache: a prefilled Part A then Part B fed token by token (or as chunks) gives the full
forward's logits at every position, in every layout (scanned layers with a stacked cache; unrolled layers with a
stacked cache, or a layered one, which each layer writes and then attends in place); the cache's bookkeeping
(lengths, stale entries)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.data import example as example_lib
from glm_jax.data.example import SpecialIds
from glm_jax.model import GLM, GLMConfig
from glm_jax.model.cache import KVCache

IDS = SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7)


def _model(scan_layers=True):
  config = GLMConfig(vocab_size=100, num_layers=2, hidden_size=32, num_heads=4, max_length=64, scan_layers=scan_layers)
  model = GLM(config)
  ids = jnp.ones((1, 8), jnp.int32)
  return model, model.init(jax.random.key(0), ids, ids, ids, sep=jnp.array([4]))["params"]


# The stacked cache under unrolled layers is the rarest layout (decoding lays the cache out per layer): slow only.
LAYOUTS = ["scanned", pytest.param("unrolled", marks=pytest.mark.slow), "unrolled-layered"]


def _allocate(model, layout, batch, capacity):
  cache = KVCache.allocate(model.config, batch, capacity)
  return cache.layered() if layout.endswith("layered") else cache


def _rows():
  """Two GLM examples (Part A with blanks of every kind, Part B spans) of different lengths."""
  first = example_lib.from_spans([2, 10, 3, 11, 12, 5, 1], [(2, [20, 21]), (5, [22, 23, 24])], IDS)
  second = example_lib.from_spans([2, 13, 14, 4, 15], [(3, [25])], IDS)
  return first, second


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cached_logits_equal_the_full_forward_at_every_step(layout):
  model, params = _model(layout == "scanned")
  apply = jax.jit(lambda p, *a, **k: model.apply({"params": p}, *a, **k))
  first, second = _rows()
  rows = [first, second]
  width = max(r["input_ids"].size for r in rows)
  batch = example_lib.batch([example_lib.pad(r, width) for r in rows])
  full = np.asarray(
    apply(
      params,
      batch["input_ids"],
      batch["position_ids"],
      batch["block_position_ids"],
      sep=batch["sep"],
      segment_ids=batch["segment_ids"],
    )  # fmt: skip
  )
  part_a = [int(r["sep"][0]) for r in rows]
  a_width = max(part_a)
  a_batch = {k: v[:, :a_width] for k, v in batch.items()}
  a_batch["segment_ids"] = (np.arange(a_width)[None] < np.array(part_a)[:, None]).astype(np.int32)
  cache = _allocate(model, layout, 2, 32)
  logits, cache = apply(
    params, a_batch["input_ids"], a_batch["position_ids"], a_batch["block_position_ids"], sep=np.array(part_a),
    segment_ids=a_batch["segment_ids"], cache=cache,
  )  # fmt: skip
  np.testing.assert_array_equal(cache.lengths, part_a)
  for b in range(2):
    np.testing.assert_allclose(logits[b, : part_a[b]], full[b, : part_a[b]], atol=1e-5, rtol=0)
  # Part B one token per step; a row whose B is over feeds padding (segment 0) and its length stops.
  steps = max(r["input_ids"].size - a for r, a in zip(rows, part_a))
  for t in range(steps):
    column = {}
    for name in ("input_ids", "position_ids", "block_position_ids"):
      column[name] = np.array([[r[name][a + t] if a + t < r[name].size else 0] for r, a in zip(rows, part_a)])
    live = np.array([[int(a + t < r["input_ids"].size)] for r, a in zip(rows, part_a)], np.int32)
    logits, cache = apply(
      params, column["input_ids"], column["position_ids"], column["block_position_ids"], sep=np.zeros(2, np.int32),
      segment_ids=live, cache=cache,
    )  # fmt: skip
    for b, (r, a) in enumerate(zip(rows, part_a)):
      if live[b, 0]:
        np.testing.assert_allclose(logits[b, 0], full[b, a + t], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(cache.lengths, [r["input_ids"].size for r in rows])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_chunk_of_part_b_equals_the_full_forward(layout):
  model, params = _model(layout == "scanned")
  first, _ = _rows()
  a = int(first["sep"][0])
  f = {k: v[None] for k, v in first.items()}
  full = model.apply({"params": params}, f["input_ids"], f["position_ids"], f["block_position_ids"], sep=f["sep"])
  cache = _allocate(model, layout, 1, 32)
  _, cache = model.apply(
    {"params": params}, f["input_ids"][:, :a], f["position_ids"][:, :a], f["block_position_ids"][:, :a],
    sep=np.array([a]), cache=cache,
  )  # fmt: skip
  logits, cache = model.apply(
    {"params": params}, f["input_ids"][:, a:], f["position_ids"][:, a:], f["block_position_ids"][:, a:],
    sep=np.array([0]), cache=cache,
  )  # fmt: skip
  np.testing.assert_allclose(logits[0], full[0, a:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lowered_lengths_forget_the_entries_above(layout):
  """A discarded beam's tokens above a row's length are stale: feeding after them equals never having fed them."""
  model, params = _model(layout == "scanned")
  ids = np.array([[2, 10, 3, 11]])
  position, zeros = np.arange(4)[None], np.zeros((1, 4), np.int32)
  fresh = _allocate(model, layout, 1, 16)
  _, prefilled = model.apply({"params": params}, ids, position, zeros, sep=np.array([4]), cache=fresh)
  step = lambda cache, token, block: model.apply(  # noqa: E731
    {"params": params}, np.array([[token]]), np.array([[2]]), np.array([[block]]), sep=np.array([0]), cache=cache
  )
  _, detour = step(prefilled, 6, 1)
  _, detour = step(detour, 40, 2)
  want, _ = step(prefilled, 6, 1)
  got, _ = step(detour.with_lengths(prefilled.lengths), 6, 1)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_chunk_larger_than_the_cache_is_refused():
  model, params = _model()
  ids = np.ones((1, 8), np.int32)
  with pytest.raises(ValueError, match="does not fit a cache of 4 entries"):
    model.apply({"params": params}, ids, ids, ids, sep=np.array([8]), cache=KVCache.allocate(model.config, 1, 4))


def test_a_layered_cache_round_trips_and_needs_unrolled_layers():
  model, params = _model()
  cache = KVCache.allocate(model.config, 2, 8)
  cache = KVCache(cache.k + jnp.arange(8.0), cache.v - 1.0, jnp.array([3, 5], jnp.int32))
  layered = cache.layered()
  assert layered.is_layered and len(layered.k) == 2 and layered.capacity == cache.capacity == 8
  np.testing.assert_array_equal(layered.stacked().k, cache.k)
  np.testing.assert_array_equal(layered.take(jnp.array([1, 1, 0])).stacked().k, cache.take(jnp.array([1, 1, 0])).k)
  ids = np.ones((1, 1), np.int32)
  with pytest.raises(ValueError, match="layered cache .* scan_layers=False"):
    model.apply({"params": params}, ids, ids, ids, sep=np.array([0]), cache=layered.take(jnp.array([0])))
