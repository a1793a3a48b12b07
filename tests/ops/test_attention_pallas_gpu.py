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
  testing.assert_matches_reference(
    q, k, v, sep, segment_ids, IMPLEMENTATION, block_q=block_q, block_k=block_k, interpret=INTERPRET
  )


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
  sep, segment_ids = testing.packed_batch(
    rng, batch=8, length=length, max_segments=8, pad_max=length // 3, segments=range(1, 9)
  )
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
  testing.assert_skipped_blocks_never_read(IMPLEMENTATION, heads=2, interpret=INTERPRET)


def test_no_length_by_length_array_is_materialized():
  testing.assert_no_length_by_length_array(IMPLEMENTATION, block_q=32, block_k=32, interpret=INTERPRET)


@pytest.mark.slow
def test_dropout_matches_the_reference_with_the_same_keep_mask():
  """Dropout inside the kernel: forward and the three gradients equal the materialized computation with the
  kernel's counter-hash keep-mask (which does not depend on the block sizes)."""
  testing.assert_dropout_matches_reference(IMPLEMENTATION, block_q=32, block_k=16, interpret=INTERPRET)


def test_unsupported_configurations_raise():
  q = jnp.zeros((1, 32, 1, 64), jnp.float32)
  run = functools.partial(
    ops.attention, q, q, q, sep=jnp.array([4]), implementation=IMPLEMENTATION, interpret=INTERPRET
  )
  with pytest.raises(ValueError, match="needs a dropout_rng"):
    run(dropout_rate=0.1)
  with pytest.raises(ValueError, match=r"dropout_rate=1.0 must be in \[0, 1\)"):
    run(dropout_rate=1.0, dropout_rng=jax.random.key(0))
  with pytest.raises(ValueError, match="head dim 48"):
    ops.attention(*(jnp.zeros((1, 32, 1, 48)),) * 3, sep=jnp.array([4]), implementation=IMPLEMENTATION)
  with pytest.raises(ValueError, match="block_k=24"):
    run(block_k=24)
  with pytest.raises(ValueError, match="float32 or bfloat16"):
    ops.attention(*(q.astype(jnp.float16),) * 3, sep=jnp.array([4]), implementation=IMPLEMENTATION)
