"""Scaling benchmark: per-device memory and step time against the mesh shape (CPU), MFU on one GPU.

    PYTHONPATH=. python benchmarks/scaling.py                       # CPU: 8 host devices vs 1
    PYTHONPATH=. python benchmarks/scaling.py --gpu                 # GLM-Large (L=512) and GLM-2B (L=1024)
    PYTHONPATH=. python benchmarks/scaling.py --gpu --dry_run       # the GPU code path, tiny shapes, on CPU
    python benchmarks/scaling.py --tpu v5e:2x4                      # compiled for a TPU slice, from this CPU

CPU mode sets `--xla_force_host_platform_device_count=8` before jax is imported and trains one model on
every mesh shape of --meshes, in one process. For each shape it reports, per device: the bytes of params +
optimizer state (summed over the addressable shards of the TrainState on each device, the largest device
taken), XLA's temporary and argument bytes of the compiled train step (`compile().memory_analysis()`; on a
multi-device mesh these are the per-device program's), and the step time (median and min). Ratios are
against the single-device run in the same process (the first row). A second table shows the memory knobs on one device:
remat policy, scan over layers and gradient accumulation, by compiled temporary bytes and step time.

GPU mode trains GLM-Large at L=512 and GLM-2B at L=1024 on one device with bf16 compute and float32 master
weights, and reports tokens/s and MFU (FLOPs per token from glm_jax/train/metrics.py, peak from its table).
Attention dropout defaults to 0 there (GLM v1 trains with 0.1: --attention_dropout=0.1).

TPU mode compiles the sharded train step of GLM-Large, GLM-2B and GLM-10B (bf16 compute, float32 params and AdamW,
the Pallas TPU attention kernel under shard_map) with libtpu for a TPU topology this machine does not have
(glm_jax/deviceless.py; it re-runs itself with the side folder of compilers on PYTHONPATH), on a mesh of its chips
(--tpu_mesh, default all on fsdp), and reports the compiled program's HBM per chip against the chip's: arguments
(params, optimizer state, batch), temporaries, and the peak (arguments + outputs - donated + temporaries). Nothing
runs: it says whether a configuration fits before a slice is rented.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gpu", action="store_true", help="MFU of GLM-Large / GLM-2B on one accelerator")
  parser.add_argument("--dry_run", action="store_true", help="with --gpu: tiny shapes on CPU, to test the path")
  parser.add_argument("--repeats", type=int, default=10, help="timed steps after one warm-up step")
  # CPU mode.
  parser.add_argument(
    "--meshes",
    default="1x1x1,8x1x1,1x8x1,1x4x2,2x2x2,1x2x4",
    help="data x fsdp x tensor shapes; 1x1x1 (the baseline) runs on one device",
  )
  parser.add_argument("--hidden_size", type=int, default=256)
  parser.add_argument("--num_heads", type=int, default=8)
  parser.add_argument("--num_layers", type=int, default=4)
  parser.add_argument("--vocab_size", type=int, default=8192)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--skip_knobs", action="store_true", help="CPU mode: skip the memory-knob table")
  # GPU mode: settings per model.
  parser.add_argument("--large_batch", type=int, default=32)
  parser.add_argument("--large_remat", default="minimal", choices=["none", "minimal", "full"])
  parser.add_argument("--2b_batch", dest="b2_batch", type=int, default=16)
  parser.add_argument("--2b_remat", dest="b2_remat", default="full", choices=["none", "minimal", "full"])
  parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="compute dtype")
  parser.add_argument("--accumulation_steps", type=int, default=1)
  parser.add_argument("--attention_implementation", default=None, help="default: the platform's (Pallas on GPU)")
  parser.add_argument(
    "--attention_dropout",
    type=float,
    default=0.0,
    help="attention dropout (GLM v1 trains with 0.1; the Pallas kernels apply it in-kernel)",
  )
  parser.add_argument("--peak_flops", type=float, default=None, help="per device; default: train/metrics.py")
  # TPU mode.
  parser.add_argument("--tpu", default=None, metavar="TOPOLOGY", help="compile for e.g. v5e:2x4, v4:2x2x1, v5p:2x2x2")
  parser.add_argument("--tpu_mesh", default=None, help="data x fsdp x tensor over the topology's chips; default 1xNx1")
  parser.add_argument("--10b_batch", dest="b10_batch", type=int, default=8)
  parser.add_argument("--10b_remat", dest="b10_remat", default="full", choices=["none", "minimal", "full"])
  args = parser.parse_args(argv)
  if args.dry_run and not (args.gpu or args.tpu):
    parser.error("--dry_run tests the --gpu or --tpu path; pass one of them")
  if args.gpu and args.tpu:
    parser.error("pass one of --gpu and --tpu")
  return args


ARGS = parse_args() if __name__ == "__main__" else None
# Before jax is imported: CPU mode needs 8 host devices for the meshes; the dry run stays on (one) CPU device.
if ARGS is not None and not ARGS.gpu and not ARGS.tpu:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
if ARGS is not None and (not ARGS.gpu or ARGS.dry_run):
  os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

from glm_jax import deviceless  # noqa: E402
from glm_jax.data import synthetic  # noqa: E402
from glm_jax.model import GLM, GLMConfig, preset  # noqa: E402
from glm_jax.train import aot, loop, metrics as metrics_lib, optimizer, partitioning, step as step_lib  # noqa: E402

MiB = 2**20
_OPTIMIZER = optimizer.OptimizerConfig(learning_rate=1e-4, warmup_steps=10)


@dataclasses.dataclass
class Measurement:
  state_bytes_per_device: int  # params + optimizer state on the fullest device
  state_bytes_total: int
  temp_bytes: int  # compiled train step, per device
  argument_bytes: int
  step_seconds: float  # median
  min_step_seconds: float


def parse_mesh(text: str) -> tuple[int, int, int]:
  dims = tuple(int(d) for d in text.split("x"))
  if len(dims) != 3:
    raise ValueError(f"mesh {text!r} is not data x fsdp x tensor (e.g. 1x4x2)")
  return dims


def state_bytes(state) -> tuple[int, int]:
  """(bytes on the fullest device, bytes of the whole state), from the addressable shards."""
  per_device = {}
  for leaf in jax.tree.leaves(state):
    for shard in leaf.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values()), sum(leaf.nbytes for leaf in jax.tree.leaves(state))


def measure(
  config: GLMConfig,
  shape: tuple[int, int, int],
  batch_size: int,
  length: int,
  repeats: int,
  accumulation_steps: int = 1,
) -> Measurement:
  """Initializes, compiles and times the train step of `config` on a mesh of `shape` (1x1x1: one device)."""
  data, fsdp, tensor = shape
  num_devices = data * fsdp * tensor
  mesh = partitioning.make_mesh(
    partitioning.MeshConfig(data=data, fsdp=fsdp, tensor=tensor), jax.devices()[:num_devices]
  )
  model = GLM(config)
  tx = optimizer.make_optimizer(_OPTIMIZER, 1000)
  state, shardings = partitioning.init_state(model, tx, mesh, jax.random.key(0), length)
  per_device, total = state_bytes(state)
  train_step = step_lib.jit_train_step(
    step_lib.make_train_step(model, tx, accumulation_steps=accumulation_steps), shardings, mesh
  )
  batches = synthetic.synthetic_batches(batch_size, length, config.vocab_size)
  batch = partitioning.global_batch(next(batches), mesh)
  rng = jax.random.key(1)
  compiled = train_step.lower(state, batch, rng).compile()
  memory = compiled.memory_analysis()
  state, metrics = compiled(state, batch, rng)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    batch = partitioning.global_batch(next(batches), mesh)
    start = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return Measurement(
    per_device, total, memory.temp_size_in_bytes, memory.argument_size_in_bytes, statistics.median(times), min(times)
  )


def _ms(m: Measurement) -> str:
  return f"{m.step_seconds * 1e3:.0f} ({m.min_step_seconds * 1e3:.0f})"


def cpu_mode(args: argparse.Namespace) -> None:
  config = GLMConfig(
    vocab_size=args.vocab_size,
    num_layers=args.num_layers,
    hidden_size=args.hidden_size,
    num_heads=args.num_heads,
    max_length=args.length,
  )
  devices = jax.devices()
  print(f"# {len(devices)} {devices[0].platform} devices, {os.cpu_count()} cores, jax {jax.__version__}")
  print(
    f"# model: E={config.hidden_size} H={config.num_heads} layers={config.num_layers} "
    f"V={config.padded_vocab_size} (float32); batch {args.batch_size} x L={args.length}; "
    f"step time: median (min) of {args.repeats} steps\n"
  )
  print(
    "| mesh (data x fsdp x tensor) | devices | state MiB/device | vs 1 device | ideal | temp MiB/device "
    "| args MiB/device | step ms | vs 1 device |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  baseline = None
  for text in args.meshes.split(","):
    shape = parse_mesh(text)
    m = measure(config, shape, args.batch_size, args.length, args.repeats)
    baseline = baseline or m
    _, fsdp, tensor = shape
    print(
      f"| {text} | {shape[0] * fsdp * tensor} | {m.state_bytes_per_device / MiB:.2f} "
      f"| {m.state_bytes_per_device / baseline.state_bytes_per_device:.3f} | {1 / (fsdp * tensor):.3f} "
      f"| {m.temp_bytes / MiB:.2f} | {m.argument_bytes / MiB:.2f} | {_ms(m)} "
      f"| {m.step_seconds / baseline.step_seconds:.2f}x |",
      flush=True,
    )
  if args.skip_knobs:
    return
  print("\n# memory knobs, one device\n")
  print("| remat | scan_layers | accumulation | temp MiB | vs none/scan | step ms | vs none/scan |")
  print("|---|---|---|---|---|---|---|")
  baseline = None
  for remat, scan, accumulation in (
    ("none", True, 1),
    ("minimal", True, 1),
    ("full", True, 1),
    ("none", False, 1),
    ("full", False, 1),
    ("none", True, 4),
  ):
    m = measure(
      config.replace(remat_policy=remat, scan_layers=scan),
      (1, 1, 1),
      args.batch_size,
      args.length,
      args.repeats,
      accumulation,
    )
    baseline = baseline or m
    print(
      f"| {remat} | {scan} | {accumulation} | {m.temp_bytes / MiB:.2f} "
      f"| {m.temp_bytes / baseline.temp_bytes:.2f} | {_ms(m)} "
      f"| {m.step_seconds / baseline.step_seconds:.2f}x |",
      flush=True,
    )


def gpu_mode(args: argparse.Namespace) -> None:
  """GLM-Large (L=512) and GLM-2B (L=1024) on one device: tokens/s and MFU."""
  device = jax.devices()[0]
  peak, estimate = metrics_lib.peak_flops_per_device(device, override=args.peak_flops)
  print(
    f"# {device.device_kind} ({device.platform}), jax {jax.__version__}; peak {peak / 1e12:.3g} TFLOP/s "
    f"per device{' (estimate)' if estimate else ''}; compute {args.dtype}, params float32; attention "
    f"{args.attention_implementation or 'platform default'}, attention dropout {args.attention_dropout}; "
    f"median of {args.repeats} steps; peak GiB: the device's peak so far in this process\n"
  )
  print("| model | L | batch | remat | accumulation | step ms | tokens/s | TFLOP/s | MFU | temp GiB | peak GiB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for name, config, length, batch_size in model_cases(args, ("GLM-Large", "GLM-2B")):
    m = measure(config, (1, 1, 1), batch_size, length, args.repeats, args.accumulation_steps)
    tokens_per_second = batch_size * length / m.step_seconds
    flops = metrics_lib.flops_per_token(config, length) * tokens_per_second
    stats = device.memory_stats() or {}
    peak_bytes = stats.get("peak_bytes_in_use")
    print(
      f"| {name} | {length} | {batch_size} | {config.remat_policy} | {args.accumulation_steps} "
      f"| {m.step_seconds * 1e3:.1f} "
      f"| {tokens_per_second:,.0f} | {flops / 1e12:.3g} | {flops / peak:.1%} | {m.temp_bytes / 2**30:.2f} "
      f"| {'-' if peak_bytes is None else f'{peak_bytes / 2**30:.2f}'} |",
      flush=True,
    )


def model_cases(args: argparse.Namespace, models: tuple[str, ...]) -> list[tuple[str, GLMConfig, int, int]]:
  """(name, config, L, global batch) of the GPU and TPU modes: bf16 compute, float32 params; tiny with --dry_run."""
  cases = {
    "GLM-Large": ("large", 512, args.large_batch, args.large_remat),
    "GLM-2B": ("2b", 1024, args.b2_batch, args.b2_remat),
    "GLM-10B": ("10b", 1024, args.b10_batch, args.b10_remat),
  }
  out = []
  for name in models:
    preset_name, length, batch_size, remat = cases[name]
    overrides = {}
    if args.dry_run:
      name, length, batch_size = f"{name} (dry run: tiny)", length // 8, 2
      overrides = dict(num_layers=2, hidden_size=128, num_heads=2, vocab_size=512)  # D=64, as the kernels take
    config = preset(
      preset_name,
      dtype=args.dtype,
      remat_policy=remat,
      max_length=length,
      attention_implementation=args.attention_implementation,
      attention_dropout=args.attention_dropout,
      **overrides,
    )
    out.append((name, config, length, batch_size))
  return out


def tpu_mode(args: argparse.Namespace) -> None:
  """Each model's train step compiled by libtpu for the topology: HBM per chip, nothing run."""
  devices = deviceless.tpu_devices(args.tpu)
  kind = devices[0].device_kind
  shape = parse_mesh(args.tpu_mesh) if args.tpu_mesh else (1, len(devices), 1)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(*shape), devices)  # as `train` and `compile` lay it out
  hbm = deviceless.TPU_HBM_BYTES[kind]
  models = ("GLM-Large", "GLM-2B") if args.dry_run else ("GLM-Large", "GLM-2B", "GLM-10B")
  print(
    f"# {kind} x {len(devices)} ({args.tpu}), mesh data x fsdp x tensor = {'x'.join(map(str, shape))}, "
    f"{hbm / 2**30:.0f} GiB HBM per chip; compute {args.dtype}, params and AdamW float32; compiled by libtpu "
    f"on this CPU, nothing run; jax {jax.__version__}\n"
  )
  print(
    "| model | L | global batch | remat | accumulation | args GiB/chip | temp GiB/chip | peak GiB/chip "
    "| of HBM | attention | Mosaic calls | compile s |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for name, config, length, batch_size in model_cases(args, models):
    batch_size = shape[0] * shape[1] if args.dry_run else batch_size
    # The platform default would be this process's (CPU: xla); the compiled program is for TPU.
    config = config.replace(attention_implementation=config.attention_implementation or "pallas_tpu")
    train_config = loop.TrainConfig(
      num_steps=1000, batch_size=batch_size, length=length, accumulation_steps=args.accumulation_steps
    )
    start = time.perf_counter()
    try:
      compiled = aot.compile_train_step(config, train_config, _OPTIMIZER, mesh)
    except jax.errors.JaxRuntimeError as error:
      if "RESOURCE_EXHAUSTED" not in str(error):
        raise
      print(
        f"| {name} | {length} | {batch_size} | {config.remat_policy} | {args.accumulation_steps} "
        f"| does not fit: {' '.join(str(error).split())[:200]} | | | | {config.attention_implementation} | "
        f"| {time.perf_counter() - start:.1f} |",
        flush=True,
      )
      continue
    seconds = time.perf_counter() - start
    m = deviceless.tpu_memory(compiled, kind)
    print(
      f"| {name} | {length} | {batch_size} | {config.remat_policy} | {args.accumulation_steps} "
      f"| {m['argument_gib']:.2f} | {m['temp_gib']:.2f} | {m['peak_gib']:.2f} | {m['peak_gib'] / m['hbm_gib']:.0%} "
      f"| {config.attention_implementation} | {m['mosaic_calls']} | {seconds:.1f} |",
      flush=True,
    )


def main(args: argparse.Namespace) -> None:
  if args.tpu:
    deviceless.reexec_in_environment()
    tpu_mode(args)
  elif args.gpu:
    gpu_mode(args)
  else:
    cpu_mode(args)


if __name__ == "__main__":
  main(ARGS)
