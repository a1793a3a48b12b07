"""GLM attention benchmark: median time and XLA temporary memory, forward and forward+backward.

    python benchmarks/attention.py --platform cpu --lengths 512,1024,2048,4096,8192

Each implementation of the platform (IMPLEMENTATIONS) runs every length on one GLM-shaped case: one
segment per row with Part A = sep_fraction * L (bidirectional), the rest causal. Ratios are taken
against the platform's baseline (its first entry) in the same run. Temporary memory is XLA's own
accounting of the compiled program (`compile().memory_analysis().temp_size_in_bytes`); a baseline whose
program needs more than --max_temp_gb is compiled (to report its size) but not run.
To add a platform, add its entries to IMPLEMENTATIONS; the first entry is the baseline.

On a GPU (`--platform gpu`, the default there) it runs benchmarks/attention_gpu.py, which takes that file's
flags: the Pallas kernel against cuDNN and the reference in TFLOP/s on allowed pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from glm_jax import ops


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  implementation: str
  options: tuple[tuple[str, int], ...] = ()


IMPLEMENTATIONS = {
  "cpu": (
    Entry("reference", "reference"),
    Entry("xla", "xla", (("block_q", 512), ("block_k", 256))),
  ),
}


@dataclasses.dataclass
class Result:
  seconds: float | None  # None: not run
  temp_bytes: int


def make_inputs(batch, length, heads, head_dim, dtype, sep_fraction):
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, cotangent = (jax.random.normal(key, (batch, length, heads, head_dim), dtype) for key in keys)
  sep = jnp.full((batch,), int(sep_fraction * length), jnp.int32)
  return q, k, v, cotangent, sep


def programs(entry: Entry, dropout_rate: float = 0.0):
  options = dict(entry.options)
  if dropout_rate > 0.0:
    options.update(dropout_rate=dropout_rate, dropout_rng=jax.random.key(1))

  def forward(q, k, v, cotangent, sep):
    del cotangent
    return ops.attention(q, k, v, sep=sep, implementation=entry.implementation, **options)

  def forward_backward(q, k, v, cotangent, sep):
    def loss(q, k, v):
      out = ops.attention(q, k, v, sep=sep, implementation=entry.implementation, **options)
      return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32))

    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  return {"fwd": forward, "fwd+bwd": forward_backward}


def measure(fn, args, repeats: int, max_temp_bytes: float | None) -> Result:
  compiled = jax.jit(fn).lower(*args).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  if max_temp_bytes is not None and temp > max_temp_bytes:
    return Result(None, temp)
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return Result(statistics.median(times), temp)


def fmt_time(result: Result) -> str:
  return "skipped" if result.seconds is None else f"{result.seconds * 1e3:.1f}"


def ratio(base: Result, result: Result, field: str) -> str:
  a, b = getattr(base, field), getattr(result, field)
  return "-" if a is None or b is None else f"{a / b:.1f}x"


def main():
  platforms = sorted([*IMPLEMENTATIONS, "gpu"])
  platform_parser = argparse.ArgumentParser(add_help=False)
  platform_parser.add_argument("--platform", default=jax.default_backend(), choices=platforms)
  platform, rest = platform_parser.parse_known_args()
  if platform.platform == "gpu":
    import attention_gpu  # benchmarks/attention_gpu.py, beside this file: it takes every other flag

    sys.argv = [attention_gpu.__file__, *rest]
    return attention_gpu.main()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[platform_parser])
  parser.add_argument("--lengths", default="512,1024,2048,4096,8192")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--sep_fraction", type=float, default=0.8)
  parser.add_argument("--dropout_rate", type=float, default=0.0)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
    "--max_temp_gb",
    type=float,
    default=4.0,
    help="the baseline is not run where its program needs more temporary memory",
  )
  args = parser.parse_args()
  entries = IMPLEMENTATIONS[args.platform]
  print(
    f"platform={args.platform} device={jax.devices()[0].device_kind} B={args.batch} H={args.heads} "
    f"D={args.head_dim} dtype={args.dtype} sep={args.sep_fraction}*L dropout={args.dropout_rate} "
    f"repeats={args.repeats} (median)"
  )
  header = ("L", "impl", "pass", "ms", "temp MiB", "speedup", "less temp")
  rows = []
  for length in (int(x) for x in args.lengths.split(",")):
    inputs = make_inputs(args.batch, length, args.heads, args.head_dim, jnp.dtype(args.dtype), args.sep_fraction)
    for pass_name in ("fwd", "fwd+bwd"):
      base = None
      for n, entry in enumerate(entries):
        limit = args.max_temp_gb * 2**30 if n == 0 else None
        result = measure(programs(entry, args.dropout_rate)[pass_name], inputs, args.repeats, limit)
        base = base or result
        rows.append(
          (
            str(length),
            entry.name,
            pass_name,
            fmt_time(result),
            f"{result.temp_bytes / 2**20:.1f}",
            ratio(base, result, "seconds"),
            ratio(base, result, "temp_bytes"),
          )
        )
        print(" | ".join(rows[-1]), flush=True)
  widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
  print("\n| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for row in rows:
    print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
  print(
    f"\nspeedup, less temp: {entries[0].name} / implementation (higher is better); "
    f"skipped: {entries[0].name} needs more than --max_temp_gb={args.max_temp_gb} of temporary memory"
  )


if __name__ == "__main__":
  main()
