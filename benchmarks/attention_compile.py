"""The Pallas attention kernels compiled for accelerators this machine does not have: their static resource use.

    python -m pip install -q --no-deps --upgrade --target .deviceless -r benchmarks/deviceless_compilers.txt   # once
    python benchmarks/attention_compile.py            # re-runs itself with .deviceless on PYTHONPATH, CPU only

GPU: the forward, dQ and dK/dV kernels of `pallas_gpu` (fwd+bwd of one row, L=8192) for each case, compiled by the
Triton pipeline of XLA's CUDA plugin to PTX and by ptxas for each compute capability (glm_jax/deviceless.py).
Reported per kernel: shared memory per thread block against the device's limit (a block over it cannot launch),
registers per thread, and spill stores (bytes per thread: spilled registers go to local memory, slow).
TPU: the forward+backward program of `pallas_tpu` compiled by libtpu for one chip of each generation (the Mosaic
kernels with the XLA program around them, VMEM allocation included); reported: whether it compiled.
None of this runs a kernel; speed needs the device (benchmarks/attention_gpu.py).

`--json PATH` also writes every result; tests/ops/test_attention_compile.py runs `--quick` and checks them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp

from glm_jax import deviceless, ops
from glm_jax.ops import attention_pallas_gpu, attention_pallas_tpu

GPU_CASES = [(dtype, head_dim) for dtype in ("bfloat16", "float32") for head_dim in (64, 128)]
GPU_LENGTH = 8192  # L is a static shape of the kernels: compile the longest rows they are meant for
TPU_TOPOLOGIES = ("v4:2x2x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2")
TPU_CASES = [("bfloat16", 128, 1000, 0.1), ("float32", 64, 1000, 0.0), ("bfloat16", 64, 8192, 0.1)]


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--compute_capabilities", default="9.0,8.0", help=f"of {sorted(deviceless.GPU_NAMES)}")
  parser.add_argument("--tpu_topologies", default=",".join(TPU_TOPOLOGIES))
  parser.add_argument(
    "--gpu_blocks",
    default="",
    help="comma-separated QxK block sizes (e.g. 64x64,128x64); default: the kernel's defaults",
  )
  parser.add_argument("--num_warps", type=int, default=None, help="GPU; default: the kernel's")
  parser.add_argument("--dropout_rate", type=float, default=0.0, help="GPU cases' attention dropout")
  parser.add_argument("--tpu_vmem_limit_bytes", type=int, default=None, help="Mosaic's VMEM limit; default: its own")
  parser.add_argument("--skip_gpu", action="store_true")
  parser.add_argument("--skip_tpu", action="store_true")
  parser.add_argument("--quick", action="store_true", help="fewer cases (the test suite's run)")
  parser.add_argument("--dtypes", default=None, help="only the cases of these dtypes (comma-separated); default: all")
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args(argv)
  known = {case[0] for case in GPU_CASES + TPU_CASES}
  if args.dtypes is not None and not set(args.dtypes.split(",")) <= known:
    parser.error(f"--dtypes={args.dtypes}: not a dtype of the cases ({', '.join(sorted(known))})")
  return args


def _grad_program(implementation: str, shape, dtype, dropout_rate: float, sharding=None, **options):
  """jit(grad) of sum(attention(...)) over q, k, v and abstract inputs: the forward and both backward kernels."""

  def loss(q, k, v, sep, segment_ids, rng):
    out = ops.attention(
      q,
      k,
      v,
      sep=sep,
      segment_ids=segment_ids,
      implementation=implementation,
      dropout_rate=dropout_rate,
      dropout_rng=rng if dropout_rate else None,
      **options,
    )
    return out.astype(jnp.float32).sum()

  qkv = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding)
  rows = jax.ShapeDtypeStruct(shape[:2], jnp.int32, sharding=sharding)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(qkv, qkv, qkv, rows, rows, rng)


def gpu_results(args) -> list[dict]:
  cases = GPU_CASES[::3] if args.quick else GPU_CASES  # quick: bf16 D=64 (GLM's) and f32 D=128
  cases = [case for case in cases if _chosen(args, case[0])]
  blocks = [tuple(int(n) for n in text.split("x")) for text in args.gpu_blocks.split(",") if text] or [None]
  results = []
  for dtype, head_dim in cases:
    for block in blocks:
      options = {} if block is None else dict(block_q=block[0], block_k=block[1])
      if args.num_warps:
        options["num_warps"] = args.num_warps
      lowered = _grad_program("pallas_gpu", (1, GPU_LENGTH, 1, head_dim), dtype, args.dropout_rate, **options).lower(
        lowering_platforms=("cuda",)
      )
      for kernel in deviceless.triton_kernels(lowered):
        for capability in args.compute_capabilities.split(","):
          report = deviceless.compile_triton(kernel, capability)
          fields = {k: v for k, v in dataclasses.asdict(report).items() if k != "ptxas_log"}
          results.append(
            dict(
              fields,
              dtype=dtype,
              head_dim=head_dim,
              dropout_rate=args.dropout_rate,
              blocks=_blocks("pallas_gpu", dtype, head_dim, block),
              shared_memory_limit=report.shared_memory_limit,
              fits=report.fits,
            )
          )
  return results


def _chosen(args, dtype: str) -> bool:
  return args.dtypes is None or dtype in args.dtypes.split(",")


def _blocks(implementation: str, dtype: str, head_dim: int, block) -> str:
  if block is not None:
    return f"{block[0]}x{block[1]}"
  if implementation == "pallas_gpu":
    return "{}x{}".format(*attention_pallas_gpu.default_tiling(dtype, head_dim)[:2])
  return f"{attention_pallas_tpu.DEFAULT_BLOCK_Q}x{attention_pallas_tpu.DEFAULT_BLOCK_K}"


def tpu_results(args) -> list[dict]:
  topologies = args.tpu_topologies.split(",")
  results = []
  for topology in topologies:
    device = deviceless.tpu_devices(topology)[0]  # the kernels run per device: one device's program
    sharding = jax.sharding.SingleDeviceSharding(device)
    kind = device.device_kind
    cases = [case for case in TPU_CASES if _chosen(args, case[0])]
    cases = cases[:1] if args.quick and topology != topologies[0] else cases
    for dtype, head_dim, length, dropout_rate in cases:
      options = {} if args.tpu_vmem_limit_bytes is None else dict(vmem_limit_bytes=args.tpu_vmem_limit_bytes)
      traced = _grad_program("pallas_tpu", (2, length, 2, head_dim), dtype, dropout_rate, sharding, **options)
      start = time.perf_counter()
      entry = dict(
        topology=topology,
        device_kind=kind,
        dtype=dtype,
        head_dim=head_dim,
        length=length,
        dropout_rate=dropout_rate,
        blocks=_blocks("pallas_tpu", dtype, head_dim, None),
      )
      try:
        traced.lower().compile()
        entry.update(compiled=True, error=None)
      except Exception as error:  # noqa: BLE001 (reported, and the tests check which cases fail)
        entry.update(compiled=False, error=" ".join(str(error).split())[:300])
      entry["compile_seconds"] = round(time.perf_counter() - start, 2)
      results.append(entry)
  return results


def print_tables(gpu: list[dict], tpu: list[dict]) -> None:
  if gpu:
    print(
      "\n| kernel | GPU (target) | dtype | D | blocks | warps | stages | smem KiB | limit KiB | registers "
      "| spill bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in gpu:
      print(
        f"| {r['name']} | {deviceless.GPU_NAMES[r['compute_capability']]} ({r['target']}) | {r['dtype']} "
        f"| {r['head_dim']} | {r['blocks']} | {r['num_warps']} | {r['num_stages']} "
        f"| {r['shared_memory_bytes'] / 1024:.0f}{'' if r['fits'] else ' (over)'} "
        f"| {r['shared_memory_limit'] / 1024:.0f} | {r['registers']} | {r['spill_bytes']} |"
      )
  if tpu:
    print("\n| TPU (topology) | dtype | D | L | blocks | dropout | compiled | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in tpu:
      compiled = "yes" if r["compiled"] else f"no: {r['error']}"
      print(
        f"| {r['device_kind']} ({r['topology']}) | {r['dtype']} | {r['head_dim']} | {r['length']} "
        f"| {r['blocks']} | {r['dropout_rate']} | {compiled} | {r['compile_seconds']} |"
      )


def main(argv=None) -> None:
  args = parse_args(argv)
  deviceless.reexec_in_environment()
  print(f"# jax {jax.__version__}; deviceless compilers from {deviceless.compilers_dir()}")
  gpu = [] if args.skip_gpu else gpu_results(args)
  tpu = [] if args.skip_tpu else tpu_results(args)
  print_tables(gpu, tpu)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(gpu=gpu, tpu=tpu), f, indent=1)


if __name__ == "__main__":
  main()
