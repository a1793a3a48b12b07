"""Compiling for accelerators this machine does not have: TPU topologies, and the GPU backend's Triton kernels.

TPU. libtpu compiles for a TPU topology without TPU hardware (`jax.experimental.topologies`, as MaxText's
train_compile does): `tpu_devices("v5e:2x4")` gives compile-only devices, and a program jitted with shardings on
a mesh of them lowers and compiles with the real TPU compiler, Mosaic kernels included: a program whose VMEM or
HBM needs exceed the chip's fails to compile, and `compiled.memory_analysis()` gives its HBM use. It cannot run.

GPU. XLA compiles a Pallas-Triton custom call (`__gpu$xla.gpu.triton`) only on a GPU client, which needs a GPU.
`triton_kernels` takes the Triton IR that the Pallas lowering stored in each such call of a program lowered with
`lowering_platforms=("cuda",)`, and `compile_triton` runs it through the Triton pipeline built into XLA's CUDA
plugin (the PJRT Triton extension, which the plugin registers as jax's Triton compilation handler; jax compiles
Pallas kernels through it itself after jaxlib 0.10.2) to PTX, then `ptxas` to machine code for the chosen compute
capability, reporting shared memory, registers and spills. What stays unchecked is the launch and the speed.

Neither compiler is a dependency of glm-jax: installed in the environment, libtpu and the CUDA plugin make every
jax start look for (and warn about) a TPU or a CUDA device. They go to a side folder instead,

    python -m pip install -q --no-deps --upgrade --target .deviceless -r benchmarks/deviceless_compilers.txt

and a program that uses them runs with that folder first on PYTHONPATH and JAX_PLATFORMS=cpu (`environment()`);
`.ci/run` does this for the tests (tests/ops/test_attention_compile.py).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import jax

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / ".deviceless"
ENV_VAR = "GLM_JAX_DEVICELESS"  # overrides DEFAULT_DIR
TRITON_CALL = "__gpu$xla.gpu.triton"

# Opt-in dynamic shared memory per thread block (the CUDA programming guide's table of compute capabilities).
SHARED_MEMORY_LIMIT = {"8.0": 163 * 1024, "8.6": 99 * 1024, "8.9": 99 * 1024, "9.0": 227 * 1024}
GPU_NAMES = {"8.0": "A100", "8.6": "RTX 30xx / A40", "8.9": "L4 / L40 / RTX 40xx", "9.0": "H100 / H200"}


def compilers_dir() -> pathlib.Path:
  """The side folder holding libtpu, the CUDA plugin and ptxas ($GLM_JAX_DEVICELESS, else <repo>/.deviceless)."""
  return pathlib.Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def install_command() -> str:
  return (
    f"python -m pip install -q --no-deps --upgrade --target {compilers_dir()} "
    f"-r {REPO / 'benchmarks' / 'deviceless_compilers.txt'}"
  )


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
  """Environment for a subprocess that compiles deviceless: the compilers' folder and the repo on PYTHONPATH, CPU
  as jax's only runtime platform. Raises if the compilers are not installed, saying how to install them."""
  folder = compilers_dir()
  if not (folder / "libtpu").is_dir() or not (folder / "jax_cuda12_plugin").is_dir():
    raise FileNotFoundError(f"no deviceless compilers in {folder}; install them with: {install_command()}")
  env = dict(os.environ if base is None else base)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), str(REPO), env.get("PYTHONPATH")]))
  env["JAX_PLATFORMS"] = "cpu"
  # libtpu reads these to find its own chips; compiling for a named topology needs neither.
  env.setdefault("TPU_ACCELERATOR_TYPE", "none")
  env.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # libtpu takes /tmp/libtpu_lockfile so that one process owns the chips; compile-only processes own none, and
  # several may compile at once (the tests' xdist workers do).
  env.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


def in_environment() -> bool:
  """Whether this process runs in `environment()` (the compilers importable, CPU the only runtime platform)."""
  return os.environ.get("JAX_PLATFORMS") == "cpu" and str(compilers_dir()) in os.environ.get("PYTHONPATH", "").split(
    os.pathsep
  )


def reexec_in_environment(args: list[str] | None = None) -> None:
  """Replaces this process by `python ARGS` (default: this script's argv) in `environment()`, unless it already
  runs there."""
  if not in_environment():
    os.execve(sys.executable, [sys.executable, *(sys.argv if args is None else args)], environment())


# TPU --------------------------------------------------------------------------------------------------------------

# HBM per chip (Cloud TPU system architecture pages), by jax's device_kind.
TPU_HBM_BYTES = {
  kind: gib * 2**30 for kind, gib in (("TPU v4", 32), ("TPU v5 lite", 16), ("TPU v5", 95), ("TPU v6 lite", 32))
}


def tpu_memory(compiled: jax.stages.Compiled, device_kind: str) -> dict:
  """HBM per chip of a program compiled for a TPU (GiB): arguments, temporaries and the peak (arguments + outputs -
  donated + temporaries, XLA's own accounting), the chip's HBM, and the program's Mosaic kernel calls."""
  memory = compiled.memory_analysis()
  peak = (
    memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes + memory.temp_size_in_bytes
  )
  return {
    "argument_gib": memory.argument_size_in_bytes / 2**30,
    "temp_gib": memory.temp_size_in_bytes / 2**30,
    "peak_gib": peak / 2**30,
    "hbm_gib": TPU_HBM_BYTES[device_kind] / 2**30,
    "mosaic_calls": compiled.as_text().count('custom_call_target="tpu_custom_call"'),
  }


def tpu_devices(topology: str) -> list:
  """The compile-only devices of a TPU topology such as "v5e:2x4" or "v4:2x2x1" (generation:chips), one per chip
  (v4 and v5p as megacore, their default)."""
  from jax.experimental import topologies  # noqa: PLC0415 (loads libtpu only when asked)

  options = dict(chip_config_name="megacore") if topology.startswith(("v4:", "v5p:")) else {}
  try:
    return topologies.get_topology_desc(topology_name=topology, platform="tpu", **options).devices
  except RuntimeError as error:
    if "not installed" in str(error):
      raise RuntimeError(
        f"libtpu is not importable; install the deviceless compilers with: {install_command()} "
        "and run with that folder on PYTHONPATH"
      ) from error
    raise


# GPU (Triton) -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TritonKernel:
  """One Pallas-Triton custom call of a lowered program: its name, Triton IR (MLIR bytecode) and launch config."""

  name: str
  module: bytes
  num_warps: int
  num_stages: int
  grid: tuple[int, int, int]  # program instances along x, y, z


@dataclasses.dataclass(frozen=True)
class TritonReport:
  """A Triton kernel compiled for one compute capability."""

  name: str
  compute_capability: str
  target: str  # the PTX target, e.g. sm_90a
  num_warps: int
  num_stages: int
  shared_memory_bytes: int
  registers: int
  spill_bytes: int  # spill stores, bytes per thread
  ptxas_log: str

  @property
  def shared_memory_limit(self) -> int:
    return SHARED_MEMORY_LIMIT[self.compute_capability]

  @property
  def fits(self) -> bool:
    """Whether a thread block's shared memory fits the device (a kernel over it fails to launch)."""
    return self.shared_memory_bytes <= self.shared_memory_limit


def triton_kernels(lowered: jax.stages.Lowered) -> list[TritonKernel]:
  """The Triton kernels of a program lowered with `lowering_platforms=("cuda",)`, in program order."""
  from jax._src.lib.mlir import ir  # noqa: PLC0415

  kernels = []

  def walk(operation):
    for region in operation.regions:
      for block in region.blocks:
        for op in block.operations:
          if (
            op.operation.name == "stablehlo.custom_call"
            and ir.StringAttr(op.attributes["call_target_name"]).value == TRITON_CALL
          ):
            config = ir.DictAttr(op.attributes["mhlo.backend_config"])
            kernels.append(
              TritonKernel(
                name=ir.StringAttr(config["name"]).value,
                module=ir.StringAttr(config["ir"]).value_bytes,
                num_warps=ir.IntegerAttr(config["num_warps"]).value,
                num_stages=ir.IntegerAttr(config["num_stages"]).value,
                grid=tuple(ir.IntegerAttr(config[f"grid_{axis}"]).value for axis in "xyz"),
              )
            )
          walk(op.operation)

  walk(lowered.compiler_ir("stablehlo").operation)
  return kernels


def _triton_compile():
  """jax's Triton compilation handler for CUDA, which the CUDA plugin registers when jax discovers it."""
  from jax._src.lib import triton  # noqa: PLC0415 (the handler registry; no public API exists)

  jax.devices()  # plugin discovery happens at the first backend initialization
  if not triton.has_compilation_handler("cuda"):
    raise RuntimeError(
      "no Triton compiler: the CUDA plugin was not found; install the deviceless compilers with: "
      f"{install_command()} and run with that folder on PYTHONPATH"
    )
  return triton.compile


def ptxas_path() -> str:
  """ptxas from the nvidia-cuda-nvcc wheel on sys.path, else from PATH."""
  for entry in sys.path:
    candidate = pathlib.Path(entry or ".") / "nvidia" / "cuda_nvcc" / "bin" / "ptxas"
    if candidate.is_file():
      return str(candidate)
  found = shutil.which("ptxas")
  if found is None:
    raise FileNotFoundError(f"no ptxas on sys.path or PATH; install the deviceless compilers with: {install_command()}")
  return found


def compile_triton(kernel: TritonKernel, compute_capability: str = "9.0") -> TritonReport:
  """Compiles one kernel with XLA's Triton pipeline to PTX, then with ptxas for `compute_capability` ("8.0")."""
  if compute_capability not in SHARED_MEMORY_LIMIT:
    raise ValueError(f"compute capability {compute_capability!r} not in {sorted(SHARED_MEMORY_LIMIT)}")
  result = _triton_compile()(
    "cuda", kernel.module, compute_capability, num_warps=kernel.num_warps, num_ctas=1, num_stages=kernel.num_stages
  )
  target = re.search(r"^\.target (\S+)", result.asm, re.MULTILINE).group(1)
  with tempfile.TemporaryDirectory() as folder:
    ptx = pathlib.Path(folder, f"{kernel.name}.ptx")
    ptx.write_text(result.asm)
    done = subprocess.run(
      [ptxas_path(), f"-arch={target}", "-v", str(ptx), "-o", str(ptx.with_suffix(".cubin"))],
      capture_output=True,
      text=True,
      check=False,
    )
  if done.returncode != 0:
    raise RuntimeError(f"ptxas failed on {kernel.name} for {target}:\n{done.stderr[-3000:]}")
  log = done.stderr
  return TritonReport(
    name=kernel.name,
    compute_capability=compute_capability,
    target=target,
    num_warps=kernel.num_warps,
    num_stages=kernel.num_stages,
    shared_memory_bytes=int(result.smem_bytes),
    registers=int(re.search(r"Used (\d+) registers", log).group(1)),
    spill_bytes=int(re.search(r"(\d+) bytes spill stores", log).group(1)),
    ptxas_log=log,
  )
