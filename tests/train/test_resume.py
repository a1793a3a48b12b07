"""Exact resume through the real entry point: `python -m glm_jax.main train` killed with SIGKILL at a random
step, restarted, preempted with SIGTERM at a later random step, restarted again, logs the same per-step losses
(bit for bit) as an uninterrupted run.

A tiny GLM with dropout on, trained on the real seqio Task glm_token_embedded (the embedded corpus, shuffled,
random span corruption), checkpoints every 2 steps. The runs share a persistent JAX compilation cache, so the
restarts do not compile again (the executables are the same ones either way).
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_STEPS = 20
SEED = 20240612  # the kill and preemption steps come from random.Random(SEED)
TIMEOUT_S = 300


def _xla_flags(device_count: int) -> str:
  """This session's XLA flags (tests/conftest.py) with another host device count."""
  kept = [
    f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")
  ]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={device_count}"])


def _command(model_dir) -> list[str]:
  return [
    sys.executable,
    "-m",
    "glm_jax.main",
    "train",
    "--gin_file=gin/pretrain/quickstart.gin",
    f"--model_dir={model_dir}",
    f"--gin.TrainConfig.num_steps={NUM_STEPS}",
    "--gin.TrainConfig.batch_size=4",
    "--gin.TrainConfig.length=32",
    "--gin.TrainConfig.log_every=1",
    "--gin.TrainConfig.checkpoint_every=2",
    "--gin.TrainConfig.max_to_keep=3",
    "--gin.OptimizerConfig.warmup_steps=2",
    "--gin.DataConfig.mixture_or_task_name='glm_token_embedded'",
    "--gin.DataConfig.eval_split=None",
    "--gin.model_preset.overrides={'max_length': 32, 'num_layers': 1, 'hidden_size': 64, 'num_heads': 2, "
    "'hidden_dropout': 0.1, 'attention_dropout': 0.1}",
  ]


def _env(tmp_path) -> dict[str, str]:
  env = dict(os.environ)
  env.update(
    XLA_FLAGS=_xla_flags(2),
    JAX_PLATFORMS="cpu",
    CUDA_VISIBLE_DEVICES="",
    TF_CPP_MIN_LOG_LEVEL="2",
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  return env


class _Run:
  """One training process; its stdout and stderr go to files (a pipe nobody reads could block it)."""

  def __init__(self, tmp_path, model_dir, name: str):
    self.log_path = tmp_path / f"{name}.log"
    self._log = open(self.log_path, "w")
    self.proc = subprocess.Popen(
      _command(model_dir), cwd=REPO_ROOT, env=_env(tmp_path), stdout=self._log, stderr=subprocess.STDOUT
    )

  def log(self) -> str:
    if not self._log.closed:
      self._log.flush()
    return self.log_path.read_text()

  def wait(self) -> int:
    try:
      return self.proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      pytest.fail(f"training did not finish in {TIMEOUT_S} s:\n{self.log()[-5000:]}")
    finally:
      self._log.close()

  def kill(self, sig: int) -> None:
    if self.proc.poll() is None:
      self.proc.send_signal(sig)


def _train_records(model_dir) -> list[dict]:
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [r for r in map(json.loads, filter(str.strip, f)) if r["split"] == "train"]


def _wait_for_step(run: _Run, model_dir, skip: int, step: int) -> None:
  """Polls metrics.jsonl until a record after the first `skip` ones has reached `step` and a checkpoint is
  committed."""
  deadline = time.monotonic() + TIMEOUT_S
  while time.monotonic() < deadline:
    if any(r["step"] >= step for r in _train_records(model_dir)[skip:]) and _checkpoint_steps(model_dir):
      return
    if run.proc.poll() is not None:
      pytest.fail(f"training exited ({run.proc.returncode}) before step {step}:\n{run.log()[-5000:]}")
    time.sleep(0.01)
  run.kill(signal.SIGKILL)
  pytest.fail(f"training did not reach step {step} in {TIMEOUT_S} s:\n{run.log()[-5000:]}")


def _checkpoint_steps(model_dir) -> list[int]:
  """The committed checkpoint steps (orbax writes DIR/<step>.orbax-checkpoint-tmp-* first, then renames it)."""
  if not os.path.isdir(model_dir):
    return []
  return sorted(int(d) for d in os.listdir(model_dir) if d.isdigit())


@pytest.mark.slow
def test_sigkill_and_sigterm_then_restart_give_the_uninterrupted_losses_bit_for_bit(tmp_path):
  rng, start = random.Random(SEED), time.monotonic()
  reference_dir, run_dir = tmp_path / "reference", tmp_path / "interrupted"
  reference = _Run(tmp_path, reference_dir, "reference")
  assert reference.wait() == 0, reference.log()[-5000:]
  expected = {r["step"]: (r["loss"], r["grad_norm"]) for r in _train_records(reference_dir)}
  assert sorted(expected) == list(range(1, NUM_STEPS + 1))

  # SIGKILL at a random step once a checkpoint is committed (orbax saves step 1, then every 2 steps); the
  # process may get a step further before the signal lands, and the newest save may still be in flight.
  kill_step = rng.randint(2, 8)
  print(f"uninterrupted run: {time.monotonic() - start:.0f} s; SIGKILL at step {kill_step} (random.Random({SEED}))")
  run = _Run(tmp_path, run_dir, "killed")
  try:
    _wait_for_step(run, run_dir, 0, kill_step)
  finally:
    run.kill(signal.SIGKILL)
  assert run.wait() == -signal.SIGKILL
  killed_at = max(r["step"] for r in _train_records(run_dir))
  resume_from = max(_checkpoint_steps(run_dir))
  assert 1 <= resume_from <= killed_at < NUM_STEPS, (resume_from, killed_at)

  # Restart; SIGTERM (a preemption notice) at a later random step: it saves there and exits cleanly.
  skip = len(_train_records(run_dir))
  term_step = rng.randint(killed_at + 2, NUM_STEPS - 8)  # leaves the process steps to spare
  print(
    f"{time.monotonic() - start:.0f} s: killed at step {killed_at}; resuming from {resume_from}, SIGTERM at "
    f"step {term_step}"
  )
  run = _Run(tmp_path, run_dir, "preempted")
  _wait_for_step(run, run_dir, skip, term_step)
  run.kill(signal.SIGTERM)
  assert run.wait() == 0, run.log()[-5000:]
  records = _train_records(run_dir)[skip:]
  assert records[0]["step"] == resume_from + 1 and f"restored step {resume_from}" in run.log()  # not restarted
  preempted_at = records[-1]["step"]
  assert f"preempted at step {preempted_at}: checkpoint saved" in run.log()
  assert max(_checkpoint_steps(run_dir)) == preempted_at < NUM_STEPS

  # Restart to the end.
  print(f"{time.monotonic() - start:.0f} s: preempted at step {preempted_at}; resuming to the end")
  skip = len(_train_records(run_dir))
  run = _Run(tmp_path, run_dir, "finished")
  assert run.wait() == 0, run.log()[-5000:]
  assert _train_records(run_dir)[skip]["step"] == preempted_at + 1
  assert "restored step" in run.log() and not re.search(r"skipping it|restarts from its beginning", run.log())

  print(f"{time.monotonic() - start:.0f} s: finished")
  records = _train_records(run_dir)
  assert {r["step"] for r in records} == set(expected)
  mismatches = [
    (r["step"], (r["loss"], r["grad_norm"]), expected[r["step"]])
    for r in records
    if (r["loss"], r["grad_norm"]) != expected[r["step"]]
  ]
  assert not mismatches, f"(step, interrupted run, uninterrupted run): {mismatches}"
