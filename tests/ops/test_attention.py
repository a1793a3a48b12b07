"""The attention entry point (dispatch, argument checks) and the reference oracle against a numpy loop."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import ops


def attention_by_loop(q, k, v, sep, segment_ids):
  """One query row at a time, the design.md rule written out; float64 numpy. Padding rows are zero."""
  batch, length, heads, head_dim = q.shape
  out = np.zeros(q.shape)
  for b in range(batch):
    starts = [next(s for s in range(i, -1, -1) if s == 0 or segment_ids[b, s - 1] != segment_ids[b, i])
              for i in range(length)]
    for i in range(length):
      if segment_ids[b, i] == 0:
        continue
      keys = [j for j in range(length) if segment_ids[b, j] == segment_ids[b, i]
              and (j <= i or j - starts[j] < sep[b, j])]
      for h in range(heads):
        logits = np.array([q[b, i, h] @ k[b, j, h] for j in keys]) / np.sqrt(head_dim)
        probs = np.exp(logits - logits.max())
        out[b, i, h] = (probs / probs.sum()) @ v[b, keys, h]
  return out


def random_qkv(seed, shape):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=shape).astype(np.float32) for _ in range(3))


@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_packed_rows_match_the_loop(implementation):
  segment_ids = np.array([[1] * 5 + [2] * 7 + [3] * 2 + [0] * 2, [1] * 16], np.int32)
  sep = np.array([[2] * 5 + [7] * 7 + [0] * 2 + [0] * 2, [9] * 16], np.int32)
  q, k, v = random_qkv(0, (2, 16, 2, 8))
  out = ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation=implementation)
  np.testing.assert_allclose(out, attention_by_loop(q, k, v, sep, segment_ids), rtol=1e-5, atol=1e-6)


def test_per_example_sep_is_one_segment_per_row():
  q, k, v = random_qkv(1, (3, 10, 1, 4))
  sep = np.array([0, 4, 10], np.int32)
  out = ops.attention(q, k, v, sep=sep, implementation="reference")
  want = attention_by_loop(q, k, v, np.repeat(sep[:, None], 10, 1), np.ones((3, 10), np.int32))
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_reference_dropout_changes_the_output():
  q, k, v = random_qkv(2, (1, 8, 1, 4))
  plain = ops.attention(q, k, v, sep=np.array([3]), implementation="reference")
  dropped = ops.attention(q, k, v, sep=np.array([3]), implementation="reference", dropout_rate=0.5,
                          dropout_rng=jax.random.key(0))
  assert dropped.shape == plain.shape and not np.allclose(dropped, plain)


def test_default_implementation_on_cpu_is_xla():
  assert jax.default_backend() == "cpu"
  assert ops.default_implementation() == "xla"
  with pytest.raises(ValueError, match="no GLM attention implementation for platform 'abacus'"):
    ops.default_implementation("abacus")


def test_unknown_implementation_raises():
  q, k, v = random_qkv(3, (1, 4, 1, 4))
  with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
    ops.attention(q, k, v, sep=np.array([2]), implementation="flash")


@pytest.mark.parametrize("shapes", [((1, 4, 1, 4), (1, 5, 1, 4), (1, 4, 1, 4)),
                                    ((4, 1, 4), (4, 1, 4), (4, 1, 4)),
                                    ((1, 4, 1, 4), (1, 4, 1, 4), (1, 4, 2, 4))])
def test_bad_qkv_shapes_raise(shapes):
  q, k, v = (jnp.zeros(s) for s in shapes)
  with pytest.raises(ValueError, match=r"q, k, v must share one \[B, L, H, D\] shape"):
    ops.attention(q, k, v, sep=np.array([2]))


@pytest.mark.parametrize("sep,segment_ids,message", [
    (np.zeros((1, 5), np.int32), None, "sep has shape"),
    (np.zeros((1, 4), np.int32), np.ones((1, 3), np.int32), "segment_ids has shape"),
])
def test_bad_sep_or_segment_shapes_raise(sep, segment_ids, message):
  q, k, v = random_qkv(4, (1, 4, 1, 4))
  with pytest.raises(ValueError, match=message):
    ops.attention(q, k, v, sep=sep, segment_ids=segment_ids)


@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_dropout_without_rng_raises(implementation):
  q, k, v = random_qkv(5, (1, 4, 1, 4))
  with pytest.raises(ValueError, match="dropout_rate=0.1 needs a dropout_rng"):
    ops.attention(q, k, v, sep=np.array([2]), implementation=implementation, dropout_rate=0.1)


def test_xla_rejects_invalid_dropout_rate_and_block_sizes():
  q, k, v = random_qkv(6, (1, 4, 1, 4))
  with pytest.raises(ValueError, match=r"dropout_rate=1.0 must be in \[0, 1\)"):
    ops.attention(q, k, v, sep=np.array([2]), implementation="xla", dropout_rate=1.0,
                  dropout_rng=jax.random.key(0))
  with pytest.raises(ValueError, match="block_q=0, block_k=8 must be positive"):
    ops.attention(q, k, v, sep=np.array([2]), implementation="xla", block_q=0, block_k=8)
