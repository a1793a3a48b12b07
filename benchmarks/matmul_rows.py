"""Matrix products at decoding's row counts: what one weight product costs at M = 1, 8 and 32 rows.

    PYTHONPATH=. python benchmarks/matmul_rows.py                 # CPU, GLM-Base's h->4h shape (768 x 3072)
    PYTHONPATH=. python benchmarks/matmul_rows.py --k 1024 --n 4096

A decoding step multiplies M = batch rows by every weight matrix. For each M it prints, per [K, N] float32 product
(best of 5 rounds, each over --matrices distinct matrices, so that the weights are read from memory and not from
cache): XLA's time, its GFLOP/s and weight GB/s, the time relative to M = 1, and numpy's (its BLAS) time in the
same process. A last line gives XLA's GFLOP/s on one large square product, the chip's practical peak. Where M = 8
costs far more than M = 1, the products, not the weight reads, bound a batch's decoding rate.
"""

from __future__ import annotations

import argparse
import time


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--k", type=int, default=768)
  parser.add_argument("--n", type=int, default=3072)
  parser.add_argument("--rows", default="1,8,32")
  parser.add_argument("--matrices", type=int, default=12)
  parser.add_argument("--square", type=int, default=2048, help="side of the large product (0: skip)")
  return parser.parse_args(argv)


def _best(fn, rounds: int = 5) -> float:
  fn()
  best = float("inf")
  for _ in range(rounds):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main(argv=None):
  args = parse_args(argv)
  import jax
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(0)
  host = [rng.standard_normal((args.k, args.n), np.float32) for _ in range(args.matrices)]
  weights = [jnp.asarray(w) for w in host]

  @jax.jit
  def chain(x, weights):
    return sum(jnp.sum(x @ w) for w in weights)

  print(f"# [{args.k}, {args.n}] float32 products, {args.matrices} distinct matrices, {jax.devices()[0].device_kind}")
  print("| rows | XLA ms | GFLOP/s | weight GB/s | vs 1 row | numpy ms |")
  print("| ---: | ---: | ---: | ---: | ---: | ---: |")
  one = None
  for rows in (int(r) for r in args.rows.split(",")):
    x = rng.standard_normal((rows, args.k), np.float32)
    device_x = jnp.asarray(x)
    seconds = _best(lambda: chain(device_x, weights).block_until_ready()) / args.matrices
    numpy_seconds = _best(lambda: [x @ w for w in host]) / args.matrices
    one = one or seconds
    flops = 2 * rows * args.k * args.n
    print(f"| {rows} | {seconds * 1e3:.3f} | {flops / seconds / 1e9:.1f} | {4 * args.k * args.n / seconds / 1e9:.1f} "
          f"| {seconds / one:.2f}x | {numpy_seconds * 1e3:.3f} |")  # fmt: skip
  if args.square:
    a = jnp.asarray(rng.standard_normal((args.square, args.square), np.float32))
    square = jax.jit(lambda a: a @ a)
    seconds = _best(lambda: square(a).block_until_ready())
    print(f"# XLA on one {args.square}^3 product: {2 * args.square**3 / seconds / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
  main()
