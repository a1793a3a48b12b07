"""GLM attention on GPU: the Pallas kernel against cuDNN and the reference, TFLOP/s on allowed pairs.

    python benchmarks/attention_gpu.py                 # on a GPU: every case, fwd and fwd+bwd
    python benchmarks/attention_gpu.py --dry_run       # anywhere: checks the FLOP accounting, no timing

Cases are GLM-shaped rows (one segment per row, Part A = sep_fraction * L bidirectional, Part B causal):
GLM-Large (H=16, D=64, L=512), GLM-2B (H=32, D=64, L=1024), then H=16, D=64 at L=2048..8192, with
B = --tokens // L. Implementations:

    pallas_gpu     ops.attention(implementation="pallas_gpu"): fused GLM mask, skipped blocks
    cudnn_causal   jax.nn.dot_product_attention(implementation="cudnn", is_causal=True): not GLM's mask
                   (Part A is not bidirectional); the speed of a tuned causal kernel, for scale
    cudnn_mask     jax.nn.dot_product_attention(implementation="cudnn", mask=<[B, 1, L, L] GLM mask>)
    reference      ops.attention(implementation="reference"): materialized mask, XLA

FLOPs count only the pairs each implementation must compute: the GLM rule's allowed pairs (sum over rows
of the key-interval lengths, checked against dense_mask.sum() by --dry_run), or the causal pairs for
cudnn_causal; 4 * D FLOPs per pair forward, 2.5 times that backward. A program whose temporary memory
exceeds --max_temp_gb is compiled (to report its size) but not run; one that fails to compile reports
the error's first line.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import ops
from glm_jax.ops import attention_blocks, mask as mask_lib

IMPLEMENTATIONS = ("pallas_gpu", "cudnn_causal", "cudnn_mask", "reference")
BACKWARD_FLOP_FACTOR = 2.5  # dQ, dK, dV, dP and the recomputed S: 5 matmuls against the forward's 2


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  batch: int
  heads: int
  head_dim: int
  length: int


def cases(tokens: int, lengths: list[int]) -> list[Case]:
  named = [Case("GLM-Large", max(1, tokens // 512), 16, 64, 512), Case("GLM-2B", max(1, tokens // 1024), 32, 64, 1024)]
  return named + [Case(f"L={n}", max(1, tokens // n), 16, 64, n) for n in lengths]


def glm_mask_inputs(batch: int, length: int, sep_fraction: float):
  """Canonical per-token sep and segment ids [B, L] of GLM-shaped rows."""
  sep = jnp.full((batch,), int(sep_fraction * length), jnp.int32)
  return mask_lib.canonicalize(sep, None, length)


def allowed_pairs(sep: jax.Array, segment_ids: jax.Array) -> int:
  """Number of (query, key) pairs the rule allows, from the per-row key intervals (no [L, L] array)."""
  lo, hi = attention_blocks.row_intervals(sep, segment_ids, segment_ids.shape[1])
  return int(jnp.sum(jnp.maximum(hi - lo + 1, 0)))


def causal_pairs(batch: int, length: int) -> int:
  return batch * length * (length + 1) // 2


def programs(implementation: str, sep, segment_ids, block_q: int, block_k: int):
  """{"fwd": f(q, k, v, cotangent), "fwd+bwd": g(q, k, v, cotangent)} for one implementation."""
  if implementation == "pallas_gpu":

    def attend(q, k, v):
      return ops.attention(
        q, k, v, sep=sep, segment_ids=segment_ids, implementation="pallas_gpu", block_q=block_q, block_k=block_k
      )
  elif implementation == "reference":

    def attend(q, k, v):
      return ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation="reference")
  elif implementation == "cudnn_causal":

    def attend(q, k, v):
      return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
  elif implementation == "cudnn_mask":
    mask = mask_lib.dense_mask(sep, segment_ids)[:, None]  # [B, 1, L, L], built outside the timed program

    def attend(q, k, v):
      return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
  else:
    raise ValueError(f"unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")

  def forward(q, k, v, cotangent):
    del cotangent
    return attend(q, k, v)

  def forward_backward(q, k, v, cotangent):
    def loss(q, k, v):
      return jnp.sum(attend(q, k, v).astype(jnp.float32) * cotangent.astype(jnp.float32))

    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  return {"fwd": forward, "fwd+bwd": forward_backward}


@dataclasses.dataclass
class Result:
  seconds: float | None
  note: str = ""


def measure(fn, args, repeats: int, max_temp_bytes: float) -> Result:
  try:
    compiled = jax.jit(fn).lower(*args).compile()
  except Exception as error:  # an implementation that cannot run this case is reported, not fatal
    return Result(None, f"failed: {str(error).splitlines()[0][:80]}")
  temp = compiled.memory_analysis().temp_size_in_bytes
  if temp > max_temp_bytes:
    return Result(None, f"skipped: {temp / 2**30:.1f} GiB temp")
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return Result(statistics.median(times))


def dry_run(args, all_cases: list[Case]) -> None:
  """CPU-safe checks: the allowed-pair count against the materialized rule, and the kernel in interpret mode."""
  rng = np.random.default_rng(0)
  for length in (64, 100, 257):
    for fraction in (0.0, args.sep_fraction, 1.0):
      sep, segment_ids = glm_mask_inputs(2, length, fraction)
      want = int(mask_lib.dense_mask(sep, segment_ids).sum())
      assert allowed_pairs(sep, segment_ids) == want, (length, fraction)
    # Packed rows with padding, as the pipeline produces them.
    segment_ids = np.repeat(np.arange(1, 5), -(-length // 4))[:length][None].astype(np.int32)
    segment_ids[:, -(length // 5) :] = 0
    part_a = np.concatenate([[0], rng.integers(0, length // 3, size=4)])  # per segment; 0 for padding
    sep, segment_ids = jnp.asarray(part_a[segment_ids], jnp.int32), jnp.asarray(segment_ids)
    assert allowed_pairs(sep, segment_ids) == int(mask_lib.dense_mask(sep, segment_ids).sum()), length
  for case in all_cases:
    sep, segment_ids = glm_mask_inputs(1, case.length, args.sep_fraction)
    pairs = case.batch * allowed_pairs(sep, segment_ids)
    flops = 4 * case.head_dim * case.heads * pairs
    print(
      f"{case.name}: B={case.batch} H={case.heads} D={case.head_dim} L={case.length} "
      f"allowed pairs={pairs} ({pairs / causal_pairs(case.batch, case.length):.2f}x causal) "
      f"fwd GFLOP={flops / 1e9:.1f} fwd+bwd GFLOP={flops * (1 + BACKWARD_FLOP_FACTOR) / 1e9:.1f}"
    )
  sep, segment_ids = glm_mask_inputs(1, 96, args.sep_fraction)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 96, 2, 64)), jnp.float32) for _ in range(3))
  got = ops.attention(
    q, k, v, sep=sep, segment_ids=segment_ids, implementation="pallas_gpu", block_q=32, block_k=32, interpret=True
  )
  want = ops.attention(q, k, v, sep=sep, segment_ids=segment_ids, implementation="reference")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  print("dry run ok: allowed-pair counts equal dense_mask.sum(); pallas_gpu (interpreted) matches reference")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="2048,4096,8192", help="extra lengths after the two model cases")
  parser.add_argument("--tokens", type=int, default=8192, help="B = tokens // L")
  parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
  parser.add_argument("--sep_fraction", type=float, default=0.5)
  parser.add_argument("--block_q", type=int, default=64)
  parser.add_argument("--block_k", type=int, default=64)
  parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--max_temp_gb", type=float, default=40.0)
  parser.add_argument("--dry_run", action="store_true", help="check the FLOP accounting on CPU; no timing")
  args = parser.parse_args()
  all_cases = cases(args.tokens, [int(x) for x in args.lengths.split(",") if x])
  if args.dry_run:
    dry_run(args, all_cases)
    return
  if jax.default_backend() != "gpu":
    raise SystemExit(f"no GPU (backend {jax.default_backend()!r}); use --dry_run, or benchmarks/attention.py on CPU")
  implementations = args.implementations.split(",")
  print(
    f"device={jax.devices()[0].device_kind} dtype={args.dtype} sep={args.sep_fraction}*L "
    f"blocks={args.block_q}x{args.block_k} repeats={args.repeats} (median)"
  )
  header = ("case", "B", "H", "L", "impl", "pass", "ms", "TFLOP/s", "pallas speedup")
  rows = []
  for case in all_cases:
    sep, segment_ids = glm_mask_inputs(case.batch, case.length, args.sep_fraction)
    keys = jax.random.split(jax.random.key(0), 4)
    shape = (case.batch, case.length, case.heads, case.head_dim)
    inputs = [jax.random.normal(key, shape, jnp.dtype(args.dtype)) for key in keys]
    glm_flops = 4 * case.head_dim * case.heads * allowed_pairs(sep, segment_ids)
    causal_flops = 4 * case.head_dim * case.heads * causal_pairs(case.batch, case.length)
    for pass_name, factor in (("fwd", 1.0), ("fwd+bwd", 1.0 + BACKWARD_FLOP_FACTOR)):
      results = {}
      for impl in implementations:
        fn = programs(impl, sep, segment_ids, args.block_q, args.block_k)[pass_name]
        results[impl] = measure(fn, inputs, args.repeats, args.max_temp_gb * 2**30)
      ours = results.get("pallas_gpu")
      for impl, result in results.items():
        flops = (causal_flops if impl == "cudnn_causal" else glm_flops) * factor
        if result.seconds is None:
          ms, tflops, speedup = result.note, "-", "-"
        else:
          ms, tflops = f"{result.seconds * 1e3:.2f}", f"{flops / result.seconds / 1e12:.1f}"
          speedup = "-" if ours is None or ours.seconds is None else f"{result.seconds / ours.seconds:.2f}x"
        rows.append(
          (case.name, str(case.batch), str(case.heads), str(case.length), impl, pass_name, ms, tflops, speedup)
        )
        print(" | ".join(rows[-1]), flush=True)
  widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
  print("\n| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for row in rows:
    print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
  print(
    "\nTFLOP/s on the pairs each computes (GLM allowed pairs; causal pairs for cudnn_causal); "
    "pallas speedup: implementation time / pallas_gpu time (higher: pallas_gpu faster)"
  )


if __name__ == "__main__":
  main()
