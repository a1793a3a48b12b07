"""The benchmarks still run: each one's smallest run, as a subprocess from the repository root.

What they measure is not checked here (benchmarks are not timed tests); that they run is, so the GPU ones, which
only a lent device runs for real, do not rot: their --dry_run paths run the same code on CPU with tiny shapes.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from glm_jax import deviceless

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str] | None = None) -> str:
  env = env or dict(
    os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), JAX_PLATFORMS="cpu"
  )
  done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return done.stdout


@pytest.mark.slow
def test_attention_cpu_prints_ratios_against_the_reference():
  out = _run("benchmarks/attention.py", "--platform", "cpu", "--lengths", "128", "--repeats", "1")
  assert "| 128 | reference | fwd+bwd |" in out and "| 128 | xla       | fwd+bwd |" in out


@pytest.mark.slow
def test_attention_gpu_dry_run_checks_its_flop_accounting():
  out = _run("benchmarks/attention.py", "--platform", "gpu", "--dry_run", "--lengths", "")
  assert "dry run ok" in out and "GLM-Large" in out and "GLM-2B" in out


@pytest.mark.slow
def test_scaling_gpu_dry_run_runs_both_models():
  out = _run("benchmarks/scaling.py", "--gpu", "--dry_run")
  assert "GLM-Large (dry run: tiny)" in out and "GLM-2B (dry run: tiny)" in out


@pytest.mark.slow
def test_scaling_tpu_dry_run_compiles_the_sharded_train_step_with_the_mosaic_kernels():
  try:
    env = deviceless.environment()
  except FileNotFoundError as error:
    pytest.skip(str(error))
  out = _run("benchmarks/scaling.py", "--tpu", "v5e:2x2", "--dry_run", env=env)
  rows = [line.split("|") for line in out.splitlines() if line.startswith("| GLM-")]
  assert [row[1].strip() for row in rows] == ["GLM-Large (dry run: tiny)", "GLM-2B (dry run: tiny)"], out
  for row in rows:  # the attention kernel, forward and backward, inside the compiled step
    assert row[10].strip() == "pallas_tpu" and int(row[11]) >= 3, out


@pytest.mark.slow
def test_data_throughput_runs_every_part_on_a_small_corpus():
  out = _run("benchmarks/data_throughput.py", "--corpus_mb", "0.05", "--objectives", "tokens", "--end_to_end")
  for part in (
    "baseline: PyTorch-GLM-style corruption",
    "(a) tokenization",
    "(b) corruption + conversion",
    "(c) seqio Task end to end",
  ):
    assert f"| {part}" in out, part


@pytest.mark.slow
def test_decode_prints_each_batch_against_both_bounds():
  out = _run(
    "benchmarks/decode.py", "--preset", "tiny", "--prompt_length", "16", "--new_tokens", "4", "--batch_sizes", "1,2",
    "--repeats", "1", "--skip_baseline",
  )  # fmt: skip
  rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
  assert len(rows) == 2 and all(len(row) == 11 for row in rows), out
  assert all(float(row[7]) > 0 and row[8].strip().endswith("%") for row in rows), out  # the matmul ceiling, its share


@pytest.mark.slow
def test_matmul_rows_prints_each_row_count_against_one_row():
  args = ("--k", "64", "--n", "128", "--rows", "1,8", "--matrices", "2", "--square", "64")
  out = _run("benchmarks/matmul_rows.py", *args)
  assert "| 1 |" in out and "| 1.00x |" in out and "| 8 |" in out and "64^3 product" in out, out
