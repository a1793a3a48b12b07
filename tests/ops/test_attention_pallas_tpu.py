"""The Pallas TPU kernel against the materialized-mask reference: outputs and all three gradients.

Off-TPU the kernels run in Pallas's TPU interpret mode (pltpu.InterpretParams: simulated VMEM, DMAs and
scalar prefetch) on CPU, which is slow, so shapes are smaller than in the GPU kernel's tests; on a TPU
(JAX_PLATFORMS=tpu) the same tests run the compiled Mosaic kernels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import ops
from glm_jax.ops import attention_blocks, attention_pallas_tpu, testing

IMPLEMENTATION = "pallas_tpu"
INTERPRET = jax.default_backend() != "tpu"


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
@pytest.mark.parametrize("length,block_q,block_k", [(100, 16, 32), (77, 32, 64)])
def test_packed_rows_match_reference(length, block_q, block_k):
  # Eight rows of 1..8 segments, each with sep 0, the full segment or random, tail padding.
  rng = np.random.default_rng(length)
  sep, segment_ids = testing.packed_batch(
    rng, batch=8, length=length, max_segments=8, pad_max=length // 3, segments=range(1, 9)
  )
  q, k, v = testing.random_qkv(rng, 8, length, 1, 64)
  assert_matches_reference(q, k, v, sep, segment_ids, block_q, block_k)


@pytest.mark.slow
def test_bfloat16_head_dim_128_matches_reference():
  rng = np.random.default_rng(2)
  sep, segment_ids = testing.packed_batch(rng, batch=2, length=64, max_segments=5, pad_max=20)
  q, k, v = testing.random_qkv(rng, 2, 64, 1, 128, jnp.bfloat16)
  assert_matches_reference(q, k, v, sep, segment_ids, block_q=16, block_k=32)


def test_key_value_index_map_only_names_visited_blocks():
  """The grid runs nk steps per query block; the index map must name only blocks of the query block's
  range and stay on the last one past it (an unchanged block index issues no DMA)."""
  segment_ids = jnp.asarray([[1] * 40 + [2] * 50 + [0] * 38], jnp.int32)
  sep = jnp.asarray([[6] * 40 + [50] * 50 + [0] * 38], jnp.int32)
  lo, hi = attention_blocks.row_intervals(sep, segment_ids, 128)
  first, count = (np.asarray(x) for x in attention_blocks.key_block_ranges(lo, hi, 16, 16))
  visible = testing.block_visibility(sep, segment_ids, 128, 16, 16)
  for i in range(8):
    blocks = [int(attention_pallas_tpu._visited(first, count, (0, i), j)) for j in range(8)]
    n = int(count[0, i])
    if n:
      assert blocks[:n] == list(range(first[0, i], first[0, i] + n)) and set(blocks[n:]) <= {blocks[n - 1]}
      assert set(np.flatnonzero(visible[0, i])) <= set(blocks)
    else:
      assert len(set(blocks)) == 1 and not visible[0, i].any()
  assert (count[0] < 8).all() and (count[0, 6:] == 0).all()


@pytest.mark.slow
def test_poisoned_skipped_blocks_are_never_read():
  testing.assert_skipped_blocks_never_read(IMPLEMENTATION, heads=1, interpret=INTERPRET)


def test_no_length_by_length_array_is_materialized():
  testing.assert_no_length_by_length_array(IMPLEMENTATION, block_q=32, block_k=32, interpret=INTERPRET)


@pytest.mark.slow
def test_dropout_matches_the_reference_with_the_same_keep_mask():
  """Dropout inside the kernel: forward and the three gradients equal the materialized computation with the
  kernel's counter-hash keep-mask (which does not depend on the block sizes)."""
  testing.assert_dropout_matches_reference(IMPLEMENTATION, block_q=16, block_k=32, interpret=INTERPRET)


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
  with pytest.raises(ValueError, match="block_k=12"):
    run(block_k=12)
  with pytest.raises(ValueError, match="float32 or bfloat16"):
    ops.attention(*(q.astype(jnp.float16),) * 3, sep=jnp.array([4]), implementation=IMPLEMENTATION)
