"""Decoding benchmark: tokens/s of glm_jax.infer.generate against the full-recompute path and the memory bound.

    PYTHONPATH=. python benchmarks/decode.py                        # CPU, GLM-Base shape, batch 1, 8, 32
    PYTHONPATH=. python benchmarks/decode.py --platform gpu         # the same on a GPU, cache and compute in bf16
    PYTHONPATH=. python benchmarks/decode.py --preset tiny --prompt_length 32 --new_tokens 8   (a quick check)

A random model of the preset's shape fills one [gMASK] at the end of a prompt of --prompt_length tokens with
exactly --new_tokens tokens (greedy; no stop token, so every row decodes the same number). For each batch size it
reports, from steady-state calls (after a first call that compiles, whose time is reported too):
- decode tokens/s: the rate of the decoding steps alone, B * (N - 1) / (time of an N-token call - time of a
  1-token call), so the prefill of Part A, the same in both, cancels;
- prefill s: the time of the 1-token call (Part A through the model once, one step);
- end to end tokens/s: B * N / time of the N-token call;
and the ratios of decode tokens/s against batch 1 and against the baseline in the same process: the full-recompute
greedy path (glm_jax.infer.recompute: one forward over the whole padded row per new token, batch 1), the path
`infer` took before the cache. The bound is the time to read, per decoding step, the weights once and every row's
cache (its mean length over the span) at the memory bandwidth measured here (a large array summed once, best of 5).
The matmul ceiling is the other bound: B / the time of one step's matrix products alone (each layer's four weight
matrices and the tied logits, at M = B rows, with the model's own weights, timed as one jitted chain, best of 5, a
trivial call's time subtracted): the rate the batch would decode at if attention, norms and the loop cost nothing.
Both bounds are upper bounds; the lower one binds. At batch 1 the two are close; at batch 8 and 32 on a CPU the
products run far below the chip's peak and the matmul ceiling is the lower one.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--platform", default="cpu", choices=["cpu", "gpu", "tpu"])
  parser.add_argument("--preset", default="glm-base")
  parser.add_argument("--prompt_length", type=int, default=256)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--batch_sizes", default="1,8,32")
  parser.add_argument("--dtype", default=None, help="compute and cache dtype (default: float32 on CPU, else bf16)")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
  parser.add_argument("--skip_baseline", action="store_true")
  return parser.parse_args(argv)


def memory_bandwidth(jax, jnp) -> float:
  """Bytes per second of one read of a 512 MiB float32 array (a reduction), best of 5."""
  x = jnp.ones((128 * 1024 * 1024,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  best = min(_timed(lambda: total(x).block_until_ready()) for _ in range(5))
  return x.nbytes / best


def matmul_step(jax, jnp, params, batch: int):
  """A jitted function of x [batch, E] that runs one decoding step's matrix products with the model's weights
  (unstacked: per layer the query_key_value, attention output, h->4h and 4h->h kernels, then the logits
  against the word embeddings), each product's input a slice of the previous output, so nothing is skipped."""
  layers = sorted((k for k in params if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
  words = params["word_embeddings"]["embedding"]
  hidden = words.shape[1]
  kernels = []
  for name in layers:
    layer = params[name]
    qkv = layer["attention"]["query_key_value"]["kernel"]
    out = layer["attention"]["dense"]["kernel"]
    kernels += [qkv.reshape(hidden, -1), out.reshape(-1, hidden)]
    kernels += [layer["mlp"]["dense_h_to_4h"]["kernel"], layer["mlp"]["dense_4h_to_h"]["kernel"]]

  @jax.jit
  def step(x, kernels, words):
    for w in kernels:
      x = x[:, : w.shape[0]] @ w
    return jnp.einsum("be,ve->bv", x[:, :hidden], words)

  x = jnp.ones((batch, hidden), words.dtype)
  return lambda: step(x, kernels, words).block_until_ready()


def dispatch_seconds(jax, jnp) -> float:
  """The time of a call of a trivial jitted function (subtracted from the matmul chain's)."""
  x = jnp.ones((8,), jnp.float32)
  touch = jax.jit(lambda x: x + 1)
  return _best(lambda: touch(x).block_until_ready())


def _best(fn, calls: int = 5, rounds: int = 5) -> float:
  """Seconds of one call of fn, best over `rounds` of `calls` calls (after one untimed call)."""
  fn()
  return min(_timed(lambda: [fn() for _ in range(calls)]) / calls for _ in range(rounds))


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv=None):
  args = parse_args(argv)
  import os

  os.environ.setdefault("JAX_PLATFORMS", args.platform if args.platform != "gpu" else "cuda")
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from glm_jax.data.example import SpecialIds
  from glm_jax.infer import recompute
  from glm_jax.infer.decode import DecodeOptions, generate
  from glm_jax.model import GLM, preset, unstack_layers
  from glm_jax.model.config import num_params

  dtype = args.dtype or ("float32" if args.platform == "cpu" else "bfloat16")
  config = preset(args.preset, dtype=dtype, param_dtype=dtype)
  model = GLM(config)
  ids = SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7)
  dummy = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(lambda key: model.init(key, dummy, dummy, dummy, sep=jnp.array([4]))["params"])(jax.random.key(0))
  unrolled = unstack_layers(nn.unbox(params), config.num_layers)
  rng = np.random.default_rng(0)
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  bandwidth = memory_bandwidth(jax, jnp)
  dispatch = dispatch_seconds(jax, jnp)
  cache_bytes_per_token = 2 * config.num_layers * config.hidden_size * jnp.dtype(dtype).itemsize
  mean_cache = args.prompt_length + 1 + args.new_tokens / 2
  options = DecodeOptions(max_span_length=args.new_tokens, stop_ids=())

  def prompt():
    body = rng.integers(10, config.vocab_size, args.prompt_length - 2).tolist()
    return [ids.cls, *body, ids.gmask]

  print(f"# {args.preset}: {num_params(config) / 1e6:.0f}M params ({weight_bytes / 1e9:.2f} GB {dtype}), "
        f"prompt {args.prompt_length}, {args.new_tokens} new tokens per row, greedy")  # fmt: skip
  print(f"# {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} CPUs, {platform.machine()}, "
        f"measured memory bandwidth {bandwidth / 1e9:.1f} GB/s, jax {jax.__version__}")  # fmt: skip
  baseline = None
  if not args.skip_baseline:
    next_token = recompute.make_next_token_fn(model, params)
    row = prompt()
    length = len(row) + args.new_tokens + 1

    def recompute_once():
      recompute.fill_blanks(next_token, row[1:], ids, length, args.new_tokens, stop_ids=())

    first = _timed(recompute_once)
    steady = statistics.median(_timed(recompute_once) for _ in range(max(1, args.repeats - 1)))
    baseline = args.new_tokens / steady
    print(f"full recompute (baseline), batch 1: {baseline:8.2f} tokens/s   first call {first:6.1f} s")
  print("| batch | decode tokens/s | vs full recompute | vs batch 1 | bound tokens/s | of bound | prefill s "
        "| matmul ceiling tokens/s | of ceiling | end to end tokens/s | first call s |")  # fmt: skip
  print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  one_token = dataclasses.replace(options, max_span_length=1)
  batch_one = None
  for batch in (int(b) for b in args.batch_sizes.split(",")):
    prompts = [prompt() for _ in range(batch)]
    call = lambda o: generate(model, params, prompts, ids=ids, options=o)  # noqa: E731
    first = _timed(lambda: call(options))
    call(one_token)  # compiles the 1-token program
    whole = statistics.median(_timed(lambda: call(options)) for _ in range(args.repeats))
    prefill = statistics.median(_timed(lambda: call(one_token)) for _ in range(args.repeats))
    rate = batch * (args.new_tokens - 1) / max(whole - prefill, 1e-9)
    batch_one = batch_one or rate
    step_bytes = weight_bytes + batch * mean_cache * cache_bytes_per_token
    bound = batch * bandwidth / step_bytes
    products = _best(matmul_step(jax, jnp, unrolled, batch)) - dispatch
    # Products faster than a trivial call's time cannot be told from it: no ceiling, rather than a made-up one.
    ceiling = f"{batch / products:.1f} | {rate * products / batch:.0%}" if products > 0 else "- | -"
    versus = f"{rate / baseline:.1f}x" if baseline else "-"
    print(f"| {batch} | {rate:.1f} | {versus} | {rate / batch_one:.1f}x | {bound:.1f} | {rate / bound:.0%} | "
          f"{prefill:.2f} | {ceiling} | {batch * args.new_tokens / whole:.1f} | {first:.1f} |")  # fmt: skip


if __name__ == "__main__":
  main()
