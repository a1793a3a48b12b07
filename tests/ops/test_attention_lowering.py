"""The Pallas kernels lower for the platforms they are written for, from this CPU-only machine.

`jax.jit(...).trace(...).lower(lowering_platforms=("cuda",))` runs the Pallas -> Triton lowering of the GPU
kernels, and `("tpu",)` the Pallas -> Mosaic lowering of the TPU kernels, without the hardware: every block
shape, index map, scalar-prefetch operand and op in the kernel bodies must be accepted by the real lowering
(the interpret-mode tests run none of it). The compilers after it (Triton to PTX and ptxas; libtpu) are
test_attention_compile.py's; what stays unchecked without a device is running them.
"""

import math
import re

import jax
import jax.numpy as jnp
import pytest

from glm_jax import deviceless
from glm_jax.ops import attention_pallas_gpu
from glm_jax.ops.attention import attention as glm_attention

KERNELS = {  # implementation, lowering platform, the custom call its kernels become
  "gpu": ("pallas_gpu", "cuda", "__gpu$xla.gpu.triton"),
  "tpu": ("pallas_tpu", "tpu", "tpu_custom_call"),
}


def _lowered_text(implementation, platform, *, length, head_dim, dtype, grad, batch=2, heads=2, **kwargs):
  """StableHLO text of the kernel's forward (or of its three input gradients) on packed rows."""
  qkv = jax.ShapeDtypeStruct((batch, length, heads, head_dim), dtype)
  sep = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  segment_ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)

  def forward(q, k, v, sep, segment_ids):
    return glm_attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation=implementation, **kwargs)

  fn = forward
  if grad:
    fn = jax.grad(lambda *a: forward(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2))
  return jax.jit(fn).trace(qkv, qkv, qkv, sep, segment_ids).lower(lowering_platforms=(platform,)).as_text()


def _kernel_calls(text, target):
  return len(re.findall(re.escape(f"stablehlo.custom_call @{target}("), text))


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("dtype,head_dim", [(jnp.bfloat16, 64), (jnp.float32, 128)])
def test_forward_and_backward_lower_to_the_platform_kernels(kernel, dtype, head_dim):
  implementation, platform, target = KERNELS[kernel]
  forward = _lowered_text(implementation, platform, length=1000, head_dim=head_dim, dtype=dtype, grad=False)
  assert _kernel_calls(forward, target) == 1
  backward = _lowered_text(implementation, platform, length=1000, head_dim=head_dim, dtype=dtype, grad=True)
  assert _kernel_calls(backward, target) == 3  # the forward (for the log-sum-exp), dQ, and dK/dV


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_long_rows_lower(kernel):
  implementation, platform, target = KERNELS[kernel]
  text = _lowered_text(implementation, platform, length=8192, head_dim=128, dtype=jnp.bfloat16, grad=True, batch=1)
  assert _kernel_calls(text, target) == 3


@pytest.mark.parametrize(
  "kernel,length,head_dim,blocks",
  [
    ("gpu", 300, 64, [(32, 64), (128, 32)]),
    ("tpu", 700, 128, [(128, 256), (256, 128)]),  # Mosaic tiles: multiples of 128
  ],
)
def test_kernels_lower_with_other_block_sizes(kernel, length, head_dim, blocks):
  implementation, platform, target = KERNELS[kernel]
  for block_q, block_k in blocks:
    text = _lowered_text(
      implementation,
      platform,
      length=length,
      head_dim=head_dim,
      dtype=jnp.bfloat16,
      grad=True,
      block_q=block_q,
      block_k=block_k,
    )
    assert _kernel_calls(text, target) == 3


@pytest.mark.parametrize("dtype,head_dim", sorted(attention_pallas_gpu.DEFAULT_TILING))
def test_gpu_kernels_take_the_default_tiling_of_their_dtype_and_head_dim(dtype, head_dim):
  # DEFAULT_TILING is what benchmarks/attention_compile.py found spill-free; the kernels must launch with it.
  block_q, block_k, num_warps = attention_pallas_gpu.DEFAULT_TILING[(dtype, head_dim)]
  batch, length, heads = 2, 1024, 3
  qkv = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.dtype(dtype))
  rows = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  loss = lambda *a: glm_attention(*a[:3], sep=a[3], segment_ids=a[4], implementation="pallas_gpu").sum()  # noqa: E731
  lowered = (
    jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(qkv, qkv, qkv, rows, rows).lower(lowering_platforms=("cuda",))
  )
  kernels = {kernel.name: kernel for kernel in deviceless.triton_kernels(lowered)}
  assert sorted(kernels) == ["glm_flash_dkv", "glm_flash_dq", "glm_flash_forward"]
  assert {kernel.num_warps for kernel in kernels.values()} == {num_warps}
  for name, block in (("glm_flash_forward", block_q), ("glm_flash_dq", block_q), ("glm_flash_dkv", block_k)):
    assert math.prod(kernels[name].grid) == batch * heads * length // block, name
