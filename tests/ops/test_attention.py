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
    starts = [
      next(s for s in range(i, -1, -1) if s == 0 or segment_ids[b, s - 1] != segment_ids[b, i]) for i in range(length)
    ]
    for i in range(length):
      if segment_ids[b, i] == 0:
        continue
      keys = [
        j for j in range(length) if segment_ids[b, j] == segment_ids[b, i] and (j <= i or j - starts[j] < sep[b, j])
      ]
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
  dropped = ops.attention(
    q, k, v, sep=np.array([3]), implementation="reference", dropout_rate=0.5, dropout_rng=jax.random.key(0)
  )
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


@pytest.mark.parametrize(
  "shapes",
  [
    ((1, 4, 1, 4), (1, 5, 1, 4), (1, 4, 1, 4)),
    ((4, 1, 4), (4, 1, 4), (4, 1, 4)),
    ((1, 4, 1, 4), (1, 4, 1, 4), (1, 4, 2, 4)),
  ],
)
def test_bad_qkv_shapes_raise(shapes):
  q, k, v = (jnp.zeros(s) for s in shapes)
  with pytest.raises(ValueError, match=r"q, k, v must share one \[B, L, H, D\] shape"):
    ops.attention(q, k, v, sep=np.array([2]))


@pytest.mark.parametrize(
  "sep,segment_ids,message",
  [
    (np.zeros((1, 5), np.int32), None, "sep has shape"),
    (np.zeros((1, 4), np.int32), np.ones((1, 3), np.int32), "segment_ids has shape"),
  ],
)
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
    ops.attention(q, k, v, sep=np.array([2]), implementation="xla", dropout_rate=1.0, dropout_rng=jax.random.key(0))
  with pytest.raises(ValueError, match="block_q=0, block_k=8 must be positive"):
    ops.attention(q, k, v, sep=np.array([2]), implementation="xla", block_q=0, block_k=8)


# --- Pallas kernels under a device mesh: run per shard (shard_map), never gathered by XLA ------------------------

MESH_SPEC = jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None)


def _mesh():
  return jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


def _packed_inputs(batch=4, length=64, heads=4, head_dim=64, dtype=jnp.float32):
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.standard_normal((batch, length, heads, head_dim)), dtype) for _ in range(3))
  segment_ids = np.zeros((batch, length), np.int32)
  sep = np.zeros((batch, length), np.int32)
  for row in range(batch):  # two segments and padding, different per row
    a, b = 20 + 3 * row, 50 + 2 * row
    segment_ids[row, :a], segment_ids[row, a:b] = 1, 2
    sep[row, :a], sep[row, a:b] = 5 + row, (b - a) // 2
  return q, k, v, jnp.asarray(sep), jnp.asarray(segment_ids)


def _in_mesh(fn, mesh):
  def wrapped(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)

  return wrapped


def test_pallas_under_a_mesh_runs_per_shard_and_matches_reference():
  """Executed in interpret mode, the GPU kernel's. The TPU interpreter runs kernels through host callbacks, which
  do not run under shard_map on CPU (jax 0.10.2: a 2-device mesh fails with "No registered implementation for
  ... xla.sdy.GlobalToLocalShape for Host", an 8-device one stalls), so the TPU kernel's placement is checked by
  lowering, below."""
  implementation = "pallas_gpu"
  mesh = _mesh()
  q, k, v, sep, segment_ids = _packed_inputs()
  blocks = dict(block_q=32, block_k=32)

  def loss(impl, options):
    def f(q, k, v, sep, segment_ids):
      out = ops.attention(
        q, k, v, sep=sep, segment_ids=segment_ids, implementation=impl, partition_spec=MESH_SPEC, **options
      )
      return (out.astype(jnp.float32) ** 2).sum(), out

    return f

  qkv_sharding = jax.sharding.NamedSharding(mesh, MESH_SPEC)
  row_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None))
  args = [jax.device_put(x, qkv_sharding) for x in (q, k, v)] + [
    jax.device_put(x, row_sharding) for x in (sep, segment_ids)
  ]
  fn = jax.value_and_grad(loss(implementation, dict(interpret=True, **blocks)), argnums=(0, 1, 2), has_aux=True)
  (_, out), grads = jax.jit(_in_mesh(fn, mesh))(*args)
  (_, want), want_grads = jax.value_and_grad(loss("reference", {}), argnums=(0, 1, 2), has_aux=True)(
    q, k, v, sep, segment_ids
  )
  assert out.sharding.spec == MESH_SPEC
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-5)
  for got, expected in zip(grads, want_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-4)


def test_pallas_inside_a_shard_map_over_some_axes_splits_over_the_rest():
  """A user's shard_map over "data" alone: the kernel runs on each (fsdp, tensor) block of its local batch."""
  mesh = _mesh()
  q, k, v, sep, segment_ids = _packed_inputs()
  data = jax.sharding.PartitionSpec("data")

  def loss(q, k, v, sep, segment_ids):
    def inner(q, k, v, sep, segment_ids):
      assert jax.sharding.get_abstract_mesh().manual_axes == ("data",)
      return ops.attention(
        q,
        k,
        v,
        sep=sep,
        segment_ids=segment_ids,
        implementation="pallas_gpu",
        interpret=True,
        block_q=32,
        block_k=32,
        partition_spec=MESH_SPEC,
      )

    out = jax.shard_map(inner, mesh=mesh, in_specs=(data,) * 5, out_specs=data, axis_names={"data"}, check_vma=False)(
      q, k, v, sep, segment_ids
    )
    return (out**2).sum(), out

  def reference_loss(q, k, v, sep, segment_ids):
    out = ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation="reference")
    return (out**2).sum(), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v, sep, segment_ids)
  (_, want), want_grads = jax.value_and_grad(reference_loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, sep, segment_ids)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-5)
  for got, expected in zip(grads, want_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-4)


def test_pallas_dropout_under_a_mesh_draws_a_different_stream_on_every_shard():
  """Each shard's kernel numbers its rows from 0; with the dropout_rng folded with the shard index, two shards
  given the same rows still drop differently (and one device's computation is reproducible)."""
  mesh = _mesh()
  q, k, v, sep, segment_ids = _packed_inputs(batch=4)
  q, k, v, sep, segment_ids = (jnp.concatenate([x[:1]] * 4) for x in (q, k, v, sep, segment_ids))  # 4 equal rows

  def f(q, k, v):
    return ops.attention(
      q,
      k,
      v,
      sep=sep,
      segment_ids=segment_ids,
      implementation="pallas_gpu",
      interpret=True,
      block_q=32,
      block_k=32,
      partition_spec=MESH_SPEC,
      dropout_rate=0.5,
      dropout_rng=jax.random.key(0),
    )

  q, k, v = (jax.device_put(x, jax.sharding.NamedSharding(mesh, MESH_SPEC)) for x in (q, k, v))
  out = np.asarray(jax.jit(_in_mesh(f, mesh))(q, k, v))
  assert not np.allclose(out[0], out[1]) and not np.allclose(out[0], out[2])  # rows on different shards
  np.testing.assert_array_equal(out, np.asarray(jax.jit(_in_mesh(f, mesh))(q, k, v)))


@pytest.mark.parametrize(
  "implementation,platform,target,local_qkv",
  [
    ("pallas_gpu", "cuda", "__gpu$xla.gpu.triton", "tensor<2x256x2x128xbf16>"),  # [B, L, H, D]
    ("pallas_tpu", "tpu", "tpu_custom_call", "tensor<2x2x256x128xbf16>"),
  ],
)  # the TPU kernel's [B, H, L, D]
def test_pallas_kernel_lowered_under_a_mesh_sees_only_its_shard(implementation, platform, target, local_qkv):
  """The kernel's custom call has per-device operands: batch 8 / (data * fsdp), heads 4 / tensor."""
  mesh = _mesh()
  qkv = jax.ShapeDtypeStruct((8, 256, 4, 128), jnp.bfloat16, sharding=jax.sharding.NamedSharding(mesh, MESH_SPEC))
  rows = jax.ShapeDtypeStruct(
    (8, 256), jnp.int32, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None))
  )

  def f(q, k, v, sep, segment_ids):
    return ops.attention(
      q, k, v, sep=sep, segment_ids=segment_ids, implementation=implementation, partition_spec=MESH_SPEC
    )

  text = jax.jit(_in_mesh(f, mesh)).trace(qkv, qkv, qkv, rows, rows).lower(lowering_platforms=(platform,)).as_text()
  calls = [line for line in text.splitlines() if f"custom_call @{target}(" in line]
  assert len(calls) == 1
  operand_types = calls[0].rsplit(": (", 1)[1].split(") -> ")[0]
  assert operand_types.count(local_qkv) == 3, operand_types  # q, k, v of one device
  assert "tensor<8x" not in operand_types  # no operand holds the global batch


def test_pallas_under_a_mesh_without_partition_spec_raises():
  mesh = _mesh()
  q, k, v, sep, segment_ids = _packed_inputs()

  def f(q, k, v):
    return ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation="pallas_gpu", interpret=True)

  with pytest.raises(ValueError, match="needs partition_spec=.*whole batch on every device"):
    jax.jit(_in_mesh(f, mesh))(q, k, v)
  with pytest.raises(ValueError, match="may split only B and H"):
    jax.jit(
      _in_mesh(
        lambda q, k, v: ops.attention(
          q,
          k,
          v,
          sep=sep,
          segment_ids=segment_ids,
          implementation="pallas_gpu",
          interpret=True,
          partition_spec=jax.sharding.PartitionSpec("data", "fsdp", None, None),
        ),
        mesh,
      )
    )(q, k, v)
