"""The Pallas GPU kernel against the materialized-mask reference: outputs and all three gradients.

On a machine without a GPU the kernels run in the Pallas interpreter; with one (run with
JAX_PLATFORMS=cuda CUDA_VISIBLE_DEVICES=0) the same tests run the compiled Triton kernels.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import ops
from glm_jax.ops import testing

IMPLEMENTATION = "pallas_gpu"
INTERPRET = jax.default_backend() != "gpu"


def assert_matches_reference(q, k, v, sep, segment_ids, block_q, block_k):
  testing.assert_matches_reference(q, k, v, sep, segment_ids, IMPLEMENTATION, block_q=block_q, block_k=block_k,
                                   interpret=INTERPRET)


def kernel_and_reference(q, k, v, sep, segment_ids, block_q, block_k):
  return testing.against_reference(q, k, v, sep, segment_ids, IMPLEMENTATION, block_q=block_q, block_k=block_k,
                                   interpret=INTERPRET)


@pytest.mark.slow
def test_per_example_sep_extremes_match_reference():
  # One row each: sep = 0 (all causal), 1, L-1, L (all bidirectional); L not a multiple of the blocks.
  rng = np.random.default_rng(1)
  length = 72
  sep = jnp.asarray([0, 1, length - 1, length], jnp.int32)
  q, k, v = testing.random_qkv(rng, 4, length, 1, 64)
  assert_matches_reference(q, k, v, sep, None, block_q=32, block_k=32)


@pytest.mark.slow
@pytest.mark.parametrize("length,block_q,block_k", [(100, 16, 32), (128, 64, 16), (77, 32, 64)])
def test_packed_rows_match_reference(length, block_q, block_k):
  # Eight rows of 1..8 segments, each with sep 0, the full segment or random, tail padding.
  rng = np.random.default_rng(length)
  sep, segment_ids = testing.packed_batch(rng, batch=8, length=length, max_segments=8, pad_max=length // 3,
                                          segments=range(1, 9))
  q, k, v = testing.random_qkv(rng, 8, length, 2, 64)
  assert_matches_reference(q, k, v, sep, segment_ids, block_q, block_k)


@pytest.mark.slow
def test_bfloat16_and_head_dim_128_match_reference():
  rng = np.random.default_rng(2)
  sep, segment_ids = testing.packed_batch(rng, batch=2, length=96, max_segments=5, pad_max=20)
  for dtype, head_dim in ((jnp.bfloat16, 64), (jnp.float32, 128), (jnp.bfloat16, 128)):
    q, k, v = testing.random_qkv(rng, 2, 96, 1, head_dim, dtype)
    assert_matches_reference(q, k, v, sep, segment_ids, block_q=32, block_k=32)


@pytest.mark.slow
def test_poisoned_skipped_blocks_are_never_read():
  """NaN keys and values in whole key blocks that chosen query blocks cannot see (another segment,
  the causal future of Part B, padding): those query blocks' outputs and dQ, and dK/dV of key blocks
  only they see, equal the reference on clean inputs. A kernel that loaded a skipped block and masked it
  would spread NaN through p * v = 0 * NaN."""
  length, block = 128, 32
  # Row 0: segment 1 (tokens 0..63, Part A 8), segment 2 (64..95, Part A 0), padding 96..127.
  # Row 1: one segment, Part A 4: block 0 must not read the future blocks 1..3.
  segment_ids = np.array([[1] * 64 + [2] * 32 + [0] * 32, [1] * 128], np.int32)
  sep = np.array([[8] * 64 + [0] * 32 + [0] * 32, [4] * 128], np.int32)
  checked_query_blocks = [{0, 1}, {0}]
  visible = testing.block_visibility(sep, segment_ids, length, block, block)
  rng = np.random.default_rng(3)
  q, k, v = testing.random_qkv(rng, 2, length, 2, 64)
  poisoned_k, poisoned_v = np.array(k), np.array(v)
  checks = []
  for b, rows in enumerate(checked_query_blocks):
    seen = visible[b, sorted(rows)].any(axis=0)
    assert not seen.all(), "the test needs a poisoned block"
    for j in np.flatnonzero(~seen):
      poisoned_k[b, j * block:(j + 1) * block] = np.nan
      poisoned_v[b, j * block:(j + 1) * block] = np.nan
    only_seen_by_rows = [j for j in np.flatnonzero(seen) if set(np.flatnonzero(visible[b, :, j])) <= rows]
    checks.append((b, sorted(rows), only_seen_by_rows))
  got, _ = kernel_and_reference(q, jnp.asarray(poisoned_k), jnp.asarray(poisoned_v), sep, segment_ids, block, block)
  _, want = kernel_and_reference(q, k, v, sep, segment_ids, block, block)
  out, dq, dk, dv = (np.asarray(x) for x in got)
  want = [np.asarray(x) for x in want]
  assert sum(len(c[2]) for c in checks) > 0
  for b, rows, key_blocks in checks:
    rows = np.concatenate([np.arange(i * block, (i + 1) * block) for i in rows])
    keys = np.concatenate([np.arange(j * block, (j + 1) * block) for j in key_blocks] or [np.zeros(0, int)])
    for name, g, w, index in (("out", out, want[0], rows), ("dq", dq, want[1], rows), ("dk", dk, want[2], keys),
                              ("dv", dv, want[3], keys)):
      np.testing.assert_allclose(g[b, index], w[b, index], rtol=2e-5, atol=2e-5, err_msg=f"{name} row {b}")


def _shapes_outside_kernels(jaxpr):
  """Shapes of every value of a jaxpr and its sub-jaxprs, not descending into pallas_call bodies."""
  for eqn in jaxpr.eqns:
    yield from (var.aval.shape for var in eqn.outvars if hasattr(var.aval, "shape"))
    if eqn.primitive.name == "pallas_call":
      continue
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _shapes_outside_kernels(inner)


def test_no_length_by_length_array_is_materialized():
  length = 256
  rng = np.random.default_rng(4)
  sep, segment_ids = testing.packed_batch(rng, batch=1, length=length, max_segments=3)
  q, k, v = testing.random_qkv(rng, 1, length, 1, 64)

  def loss(q, k, v):
    return ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation=IMPLEMENTATION,
                         block_q=32, block_k=32, interpret=INTERPRET).sum()

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v).jaxpr
  shapes = list(_shapes_outside_kernels(jaxpr))
  assert any(length in s for s in shapes)
  assert not [s for s in shapes if sum(d >= length for d in s) >= 2]


def test_unsupported_configurations_raise():
  q = jnp.zeros((1, 32, 1, 64), jnp.float32)
  run = functools.partial(ops.attention, q, q, q, sep=jnp.array([4]), implementation=IMPLEMENTATION,
                          interpret=INTERPRET)
  with pytest.raises(ValueError, match="implementation='xla' or set attention_dropout=0"):
    run(dropout_rate=0.1, dropout_rng=jax.random.key(0))
  with pytest.raises(ValueError, match="head dim 48"):
    ops.attention(*(jnp.zeros((1, 32, 1, 48)),) * 3, sep=jnp.array([4]), implementation=IMPLEMENTATION)
  with pytest.raises(ValueError, match="block_k=24"):
    run(block_k=24)
  with pytest.raises(ValueError, match="float32 or bfloat16"):
    ops.attention(*(q.astype(jnp.float16),) * 3, sep=jnp.array([4]), implementation=IMPLEMENTATION)
