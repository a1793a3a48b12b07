"""The Pallas kernels compile for the accelerators they are written for, from this CPU-only machine.

test_attention_lowering.py checks the Pallas -> Triton / Mosaic lowering; this checks the compilers after it
(glm_jax/deviceless.py): XLA's Triton pipeline and ptxas for A100 (sm_80) and H100/H200 (sm_90a), and libtpu for
TPU v4, v5e, v5p and v6e. It runs benchmarks/attention_compile.py in the deviceless environment (the side folder
of compilers that .ci/run installs) and checks its results; a control run shows that the checks can fail.
Skips, saying how to install them, where the compilers are absent.
"""

import json
import subprocess
import sys

import pytest

from glm_jax import deviceless

pytestmark = pytest.mark.slow
GPU_TARGETS = {"8.0": "sm_80", "9.0": "sm_90a"}


def _run_benchmark(tmp_path_factory, *args):
  try:
    env = deviceless.environment()
  except FileNotFoundError as error:
    pytest.skip(str(error))
  out = tmp_path_factory.mktemp("compile") / "results.json"
  done = subprocess.run(
    [
      sys.executable,
      str(deviceless.REPO / "benchmarks" / "attention_compile.py"),
      "--quick",
      "--json",
      str(out),
      *args,
    ],
    cwd=deviceless.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  return _run_benchmark(tmp_path_factory)


@pytest.fixture(scope="module")
def controls(tmp_path_factory):
  # Tiles too big for an A100's shared memory in float32; a VMEM limit below one tile's needs (float32 cases only).
  return _run_benchmark(
    tmp_path_factory,
    "--dtypes",
    "float32",
    "--gpu_blocks",
    "128x128",
    "--compute_capabilities",
    "8.0",
    "--tpu_topologies",
    "v5e:2x2",
    "--tpu_vmem_limit_bytes",
    str(64 * 1024),
  )


def test_every_gpu_kernel_compiles_for_a100_and_h100_within_shared_memory_and_without_spills(results):
  gpu = results["gpu"]
  compiled = {(r["dtype"], r["head_dim"], r["name"], r["compute_capability"]) for r in gpu}
  assert compiled == {
    (dtype, head_dim, name, capability)
    for dtype, head_dim in [("bfloat16", 64), ("float32", 128)]
    for name in ("glm_flash_forward", "glm_flash_dq", "glm_flash_dkv")
    for capability in GPU_TARGETS
  }
  for r in gpu:
    assert r["target"] == GPU_TARGETS[r["compute_capability"]], r
    assert r["fits"] and 0 < r["shared_memory_bytes"] <= r["shared_memory_limit"], r
    assert r["spill_bytes"] == 0, f"{r['name']} spills {r['spill_bytes']} bytes per thread: {r}"
    assert r["registers"] <= 255, r


def test_tpu_kernels_compile_for_every_generation(results):
  tpu = results["tpu"]
  assert {r["device_kind"] for r in tpu} == {"TPU v4", "TPU v5 lite", "TPU v5", "TPU v6 lite"}
  assert {(r["dtype"], r["head_dim"], r["length"], r["dropout_rate"]) for r in tpu} == {
    ("bfloat16", 128, 1000, 0.1),
    ("float32", 64, 1000, 0.0),
    ("bfloat16", 64, 8192, 0.1),
  }
  for r in tpu:
    assert r["compiled"], r


def test_controls_show_the_checks_can_fail(controls):
  over = {(r["dtype"], r["name"]) for r in controls["gpu"] if not r["fits"]}
  assert {("float32", "glm_flash_dq"), ("float32", "glm_flash_dkv")} <= over, controls["gpu"]
  assert controls["tpu"] and all(not r["compiled"] and "vmem" in r["error"].lower() for r in controls["tpu"]), controls[
    "tpu"
  ]
