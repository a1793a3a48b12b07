"""The blockwise XLA attention against the materialized-mask reference: outputs, gradients, dropout."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import ops
from glm_jax.ops import attention_xla, mask as mask_lib, testing

H, D = 2, 16


def qkv(rng, batch, length, dtype=jnp.float32):
  return testing.random_qkv(rng, batch, length, H, D, dtype)


def value_and_grads(q, k, v, cotangent, sep, segment_ids, implementation, block_q, block_k):
  return testing.value_and_grads(
    q, k, v, cotangent, sep, segment_ids, implementation, (("block_q", block_q), ("block_k", block_k))
  )


def assert_matches_reference(q, k, v, sep, segment_ids, block_q, block_k):
  """The xla path on (q, k, v) vs the reference in float32 on the same values (bf16: one rounding)."""
  testing.assert_matches_reference(
    q, k, v, sep, segment_ids, "xla", f32_tol=1e-5, bf16_tol=1e-2, block_q=block_q, block_k=block_k
  )


@pytest.mark.parametrize("sep_value", ["zero", "one", "L-1", "L", "random"])
def test_per_example_sep_matches_reference(sep_value):
  rng = np.random.default_rng(1)
  batch, length = 3, 40
  sep = {
    "zero": np.zeros(batch),
    "one": np.ones(batch),
    "L-1": np.full(batch, length - 1),
    "L": np.full(batch, length),
    "random": rng.integers(0, length + 1, size=batch),
  }[sep_value]
  q, k, v = qkv(rng, batch, length)
  assert_matches_reference(q, k, v, jnp.asarray(sep, jnp.int32), None, block_q=16, block_k=8)


@pytest.mark.parametrize(
  "length,block_q,block_k", [(64, 16, 16), (50, 16, 32), (37, 32, 8), (100, 64, 64), (24, 512, 512)]
)
def test_packed_rows_match_reference(length, block_q, block_k):
  rng = np.random.default_rng(length)
  sep, segment_ids = testing.packed_batch(rng, batch=4, length=length, max_segments=8, pad_max=length // 4)
  q, k, v = qkv(rng, 4, length)
  assert_matches_reference(q, k, v, sep, segment_ids, block_q, block_k)


def test_bfloat16_matches_float32_reference():
  rng = np.random.default_rng(2)
  sep, segment_ids = testing.packed_batch(rng, batch=2, length=72, max_segments=4, pad_max=10)
  q, k, v = qkv(rng, 2, 72, jnp.bfloat16)
  assert_matches_reference(q, k, v, sep, segment_ids, block_q=32, block_k=16)


@pytest.mark.slow
def test_long_packed_rows_match_reference():
  rng = np.random.default_rng(3)
  sep, segment_ids = testing.packed_batch(rng, batch=2, length=256, max_segments=8, pad_max=40)
  for dtype in (jnp.float32, jnp.bfloat16):
    q, k, v = qkv(rng, 2, 256, dtype)
    assert_matches_reference(q, k, v, sep, segment_ids, block_q=64, block_k=32)


def test_sep_beyond_segment_length_attends_whole_segment_only():
  rng = np.random.default_rng(4)
  segment_ids = np.array([[1] * 10 + [2] * 14], np.int32)
  sep = np.array([[25] * 10 + [3] * 14], np.int32)  # segment 1's sep exceeds its 10 tokens
  lo, hi = attention_xla.clipped_key_intervals(jnp.asarray(sep), jnp.asarray(segment_ids))
  assert hi[0, :10].tolist() == [9] * 10 and lo[0, 10:].tolist() == [10] * 14
  q, k, v = qkv(rng, 1, 24)
  assert_matches_reference(q, k, v, sep, segment_ids, block_q=8, block_k=8)


def test_key_block_bounds_skip_blocks_no_row_sees():
  # Row 0: two segments of 16 (Part A 4 and 16), then 8 padding; blocks of 8.
  segment_ids = np.array([[1] * 16 + [2] * 16 + [0] * 8], np.int32)
  sep = np.array([[4] * 16 + [16] * 16 + [0] * 8], np.int32)
  lo, hi = attention_xla.clipped_key_intervals(jnp.asarray(sep), jnp.asarray(segment_ids))
  first, end = attention_xla._key_block_bounds(
    lo.reshape(1, 5, 8).swapaxes(0, 1), hi.reshape(1, 5, 8).swapaxes(0, 1), block_k=8
  )
  # Segment 1 is causal after token 4, segment 2 fully bidirectional, padding sees nothing.
  assert first.tolist() == [0, 0, 2, 2, 0] and end.tolist() == [1, 2, 4, 4, 0]
  # The backward's view: per key block, the query blocks that visit it.
  q_first, q_end = attention_xla._query_block_bounds(first, end, num_k=5)
  assert q_first.tolist() == [0, 1, 2, 2, 0] and q_end.tolist() == [2, 2, 4, 4, 0]


def test_nan_at_padding_never_reaches_outputs_or_gradients():
  # Padding queries, keys and values all poisoned; the cotangent is nonzero on padding rows too.
  rng = np.random.default_rng(5)
  segment_ids = np.array([[1] * 20 + [2] * 15 + [0] * 13], np.int32)
  sep = np.array([[7] * 20 + [15] * 15 + [0] * 13], np.int32)
  q, k, v = qkv(rng, 1, 48)
  cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  poisoned = [x.at[:, 35:].set(jnp.nan) for x in (q, k, v)]
  clean = value_and_grads(q, k, v, cotangent, sep, segment_ids, "xla", 16, 16)
  dirty = value_and_grads(*poisoned, cotangent, sep, segment_ids, "xla", 16, 16)
  for c, d in zip(clean, dirty):
    np.testing.assert_array_equal(np.asarray(d), np.asarray(c))
  assert not np.asarray(clean[0][:, 35:]).any() and not np.asarray(clean[2][:, 35:]).any()


def test_nan_in_other_segments_key_blocks_never_reaches_outputs_or_gradients():
  # Segments aligned to blocks: segment 1's query blocks never visit segment 2's key blocks at all.
  rng = np.random.default_rng(6)
  segment_ids = np.array([[1] * 32 + [2] * 32], np.int32)
  sep = np.array([[5] * 32 + [20] * 32], np.int32)
  q, k, v = qkv(rng, 1, 64)
  cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32).at[:, 32:].set(0.0)
  poisoned = [x.at[:, 32:].set(jnp.nan) for x in (k, v)]
  clean = value_and_grads(q, k, v, cotangent, sep, segment_ids, "xla", 16, 16)
  dirty = value_and_grads(q, *poisoned, cotangent, sep, segment_ids, "xla", 16, 16)
  for c, d in zip(clean, dirty):
    np.testing.assert_array_equal(np.asarray(d)[:, :32], np.asarray(c)[:, :32])


def test_nan_keys_a_row_cannot_see_never_reach_its_output():
  # Keys of other segments and future Part B tokens, inside the row's own tiles.
  rng = np.random.default_rng(7)
  segment_ids = np.array([[1] * 12 + [2] * 12], np.int32)
  sep = np.array([[4] * 12 + [6] * 12], np.int32)
  q, k, v = qkv(rng, 1, 24)
  poisoned = k.at[:, 9:].set(jnp.nan)  # rows 0..8 of segment 1 see keys 0..8 only
  clean = ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation="xla", block_q=24, block_k=24)
  dirty = ops.attention(q, poisoned, v, sep=sep, segment_ids=segment_ids, implementation="xla", block_q=24, block_k=24)
  np.testing.assert_array_equal(np.asarray(dirty[:, :9]), np.asarray(clean[:, :9]))


def dense_keep_mask(rng, rate, shape, length, block_q, block_k):
  """The per-tile draws of attention_xla assembled into one [B, H, L, L] keep-mask."""
  block_q, block_k = min(block_q, length), min(block_k, length)
  num_q, num_k = -(-length // block_q), -(-length // block_k)
  rows = [
    jnp.concatenate(
      [attention_xla.tile_keep_mask(rng, rate, i, j, num_k, (*shape, block_q, block_k)) for j in range(num_k)], axis=-1
    )
    for i in range(num_q)
  ]
  return jnp.concatenate(rows, axis=-2)[..., :length, :length]


def reference_with_keep(q, k, v, sep, segment_ids, keep, rate):
  """The reference's computation with a given dropout keep-mask [B, H, L, L]."""
  mask = mask_lib.dense_mask(sep, segment_ids)[:, None]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  probs = jnp.where(mask, jax.nn.softmax(jnp.where(mask, logits, -1e30), axis=-1), 0.0)
  probs = jnp.where(keep, probs / (1.0 - rate), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def test_dropout_matches_dense_computation_with_the_same_mask():
  rng = np.random.default_rng(8)
  length, rate, block_q, block_k = 45, 0.3, 16, 8
  sep, segment_ids = testing.packed_batch(rng, batch=2, length=length, max_segments=3, pad_max=6)
  q, k, v = qkv(rng, 2, length)
  cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  key = jax.random.key(3)
  keep = dense_keep_mask(key, rate, (2, H), length, block_q, block_k)

  def xla_loss(q, k, v):
    return jnp.sum(
      cotangent
      * ops.attention(
        q,
        k,
        v,
        sep=sep,
        segment_ids=segment_ids,
        implementation="xla",
        dropout_rate=rate,
        dropout_rng=key,
        block_q=block_q,
        block_k=block_k,
      )
    )

  def dense_loss(q, k, v):
    return jnp.sum(cotangent * reference_with_keep(q, k, v, jnp.asarray(sep), jnp.asarray(segment_ids), keep, rate))

  got = jax.jit(jax.value_and_grad(xla_loss, argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.value_and_grad(dense_loss, argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_dropout_is_reproducible_and_keeps_the_expected_value():
  rng = np.random.default_rng(9)
  length, rate, samples = 32, 0.5, 256
  sep, segment_ids = testing.packed_batch(rng, batch=1, length=length, max_segments=2, pad_max=4)
  q, k, v = qkv(rng, 1, length)
  run = jax.jit(
    lambda key: ops.attention(
      q,
      k,
      v,
      sep=sep,
      segment_ids=segment_ids,
      implementation="xla",
      dropout_rate=rate,
      dropout_rng=key,
      block_q=16,
      block_k=8,
    )
  )
  keys = jax.random.split(jax.random.key(0), samples)
  np.testing.assert_array_equal(run(keys[0]), run(keys[0]))
  assert not np.allclose(run(keys[0]), run(keys[1]))
  draws = np.stack([np.asarray(run(key)) for key in keys])
  expected = np.asarray(ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation="xla"))
  stderr = draws.std(axis=0) / np.sqrt(samples)
  assert np.all(np.abs(draws.mean(axis=0) - expected) <= 5 * stderr + 1e-6)
  assert np.abs(draws.mean(axis=0) - expected).mean() < 0.1 * np.abs(expected).mean()


@pytest.mark.slow
def test_works_under_jit_scan_and_remat():
  """A layer stack as the model runs it: lax.scan over layers with rematerialized attention and dropout."""
  rng = np.random.default_rng(10)
  sep, segment_ids = testing.packed_batch(rng, batch=2, length=30, max_segments=3, pad_max=5)
  x = jnp.asarray(rng.normal(size=(2, 30, H, D)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, D, D)) / np.sqrt(D), jnp.float32)

  def stack(weights, x, remat):
    def layer(h, inputs):
      w, key = inputs

      def attend(h):
        return ops.attention(
          h @ w,
          h,
          h,
          sep=sep,
          segment_ids=segment_ids,
          implementation="xla",
          dropout_rate=0.1,
          dropout_rng=key,
          block_q=16,
          block_k=8,
        )

      return h + (jax.checkpoint(attend) if remat else attend)(h), None

    return jnp.sum(jax.lax.scan(layer, x, (weights, jax.random.split(jax.random.key(1), 3)))[0] ** 2)

  plain = jax.jit(jax.grad(functools.partial(stack, remat=False)))(weights, x)
  remat = jax.jit(jax.grad(functools.partial(stack, remat=True)))(weights, x)
  np.testing.assert_allclose(remat, plain, rtol=1e-4, atol=1e-4 * np.abs(np.asarray(plain)).max())
  assert np.isfinite(np.asarray(plain)).all() and np.abs(np.asarray(plain)).max() > 0


@pytest.mark.slow
def test_glm_model_with_scan_remat_and_dropout():
  """Inside the Flax model (nn.scan over layers, nn.remat, attention dropout): remat changes no gradient."""
  from glm_jax.model import GLM, preset

  rng = np.random.default_rng(11)
  sep, segment_ids = testing.packed_batch(rng, batch=2, length=24, max_segments=3, pad_max=4)
  ids = jnp.asarray(rng.integers(0, 256, size=(2, 24)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(24, dtype=jnp.int32), (2, 24))

  def grads(policy):
    config = preset(
      "tiny", vocab_size=256, max_length=32, attention_implementation="xla", attention_dropout=0.1, remat_policy=policy
    )
    model = GLM(config)
    params = jax.jit(model.init)(jax.random.key(0), ids, positions, positions, sep=sep, segment_ids=segment_ids)[
      "params"
    ]

    def loss(params):
      logits = model.apply(
        {"params": params},
        ids,
        positions,
        positions,
        sep=sep,
        segment_ids=segment_ids,
        deterministic=False,
        rngs={"dropout": jax.random.key(1)},
      )
      return jnp.mean(logits**2)

    return jax.jit(jax.grad(loss))(params)

  plain, remat = grads("none"), grads("full")
  for p, r in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(r, p, rtol=1e-4, atol=1e-6)
