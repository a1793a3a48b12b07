"""Multi-host training with real processes on localhost (CPU devices, gloo collectives, jax.distributed).

Three runs of `glm_jax.main.main` in child processes, 4 devices in every run:
  one:      1 process x 4 devices, steps 1-6
  two:      2 processes x 2 devices (--coordinator_address/--num_processes/--process_id), steps 1-6
  two->one: 1 process resuming a copy of two's checkpoint, steps 7-8
`one` and `two` run at the same time, then the resume. A second test preempts a 2-process run by sending
SIGTERM to one of its processes, and resumes it with the same 2 processes.

What holds: the per-step losses of `two` (metrics.jsonl, written by process 0) match `one`'s within LOSS_RTOL and
their Part-B token counts are equal, so process-local shards assemble the same global batches; the step-6 params
that 2 processes saved, read back here in 1 process, match those 1 process saved; and the 2-process checkpoint
resumes in 1 process: the run goes on at step 7 (not 1) with trained params (its first loss below 0.8x the
untrained one). Its losses are not compared with an uninterrupted run's: input positions belong to a process count,
so across the change the input stream restarts (glm_jax/train/checkpoints.py). Not run: the 1 -> 2 direction (it
restores the same orbax arrays with more processes; another 2-process run, about 40 s of CPU).

The data makes a 2-process global batch hold exactly the rows of the 1-process one (glm_jax/train/inputs.py):
a Task over a seqio.FunctionDataSource of NUM_DOCUMENTS short documents (seqio shards such a source by example
index, process p reading documents p, p + 2, ...), the GLM document-level blank-infilling preprocessor with a
fixed span (min_ratio = max_ratio, suffix_prob = 1, so seqio's per-document seeds cannot change an example),
unpacked, unshuffled, dropout 0.

Run as a script, this file is the training command of those processes: it registers that Task and hands its
command line to glm_jax.main.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TASK = "glm_multihost_test"
NUM_DOCUMENTS = 64  # even: both shards hold the same number of documents
STEPS = 6
RESUMED_STEPS = 8
DEVICES = 4
LOSS_RTOL = 1e-4  # the same float32 sums in another order: measured relative differences ~1e-7
PARAM_ATOL = 1e-4  # measured ~1e-6 after 6 Adam steps (params of size ~1)
PHASE_TIMEOUT_S = 400
WORDS = (
  "the module provides functions for working with paths files and directories a list of values is returned "
  "when the object is called with an argument each class defines methods that read write or close the "
  "stream"
).split()

GIN = f"""
include 'gin/models/tiny.gin'
model_preset.overrides = {{'max_length': 64, 'num_layers': 1, 'embedding_dropout': 0.0, 'attention_dropout': 0.0,
                          'hidden_dropout': 0.0}}
experiment.data = @DataConfig()
DataConfig.mixture_or_task_name = '{TASK}'
DataConfig.eval_split = None
DataConfig.pack = False
DataConfig.shuffle = False
experiment.train_config = @TrainConfig()
TrainConfig.batch_size = 8
TrainConfig.length = 64
TrainConfig.log_every = 1
TrainConfig.checkpoint_every = 1000
experiment.optimizer_config = @OptimizerConfig()
OptimizerConfig.learning_rate = 1e-2
OptimizerConfig.warmup_steps = 0
OptimizerConfig.decay_style = 'constant'
"""


def _xla_flags(device_count: int) -> str:
  """This session's XLA flags (tests/conftest.py) with another host device count."""
  kept = [
    f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")
  ]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={device_count}"])


def documents() -> list[str]:
  """NUM_DOCUMENTS sentences of 4-12 words: each far shorter than a row, so one document is one example."""
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(WORDS, int(rng.integers(4, 13)))) + "." for _ in range(NUM_DOCUMENTS)]


def register_task() -> None:
  """The test Task (in the child processes): documents() through the GLM document-level preprocessor."""
  import functools

  import seqio
  import tensorflow as tf

  from glm_jax.data import preprocessors
  from tasks import pretrain

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"text": documents()})

  objective = preprocessors.DocumentObjective(min_ratio=0.5, max_ratio=0.5, suffix_prob=1.0)
  seqio.TaskRegistry.add(
    TASK,
    source=seqio.FunctionDataSource(dataset_fn, splits=("train",)),
    output_features=pretrain.output_features(),
    preprocessors=[functools.partial(preprocessors.blank_infilling_preprocessor, objective=objective)],
  )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(name: str, model_dir: pathlib.Path, num_processes: int, num_steps: int, tmp_path: pathlib.Path):
  """Starts one run: `num_processes` children with DEVICES / num_processes CPU devices each."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("GLM_JAX_") or k == "GLM_JAX_CACHE"}
  env.update(
    XLA_FLAGS=_xla_flags(DEVICES // num_processes),
    JAX_PLATFORMS="cpu",
    CUDA_VISIBLE_DEVICES="",
    TF_CPP_MIN_LOG_LEVEL="2",
    PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    # the resumed runs compile the programs of the first two again: let them hit a cache
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  command = [
    sys.executable,
    __file__,
    "train",
    f"--gin_file={tmp_path / 'multihost.gin'}",
    f"--model_dir={model_dir}",
    f"--gin.TrainConfig.num_steps={num_steps}",
  ]
  if num_processes > 1:
    command += [f"--coordinator_address=127.0.0.1:{_free_port()}", f"--num_processes={num_processes}"]
  children = []
  for process_id in range(num_processes):
    log = tmp_path / f"{name}.{process_id}.log"
    extra = [f"--process_id={process_id}"] if num_processes > 1 else []
    with open(log, "w") as out:
      children.append((log, subprocess.Popen(command + extra, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)))
  return children


def _wait(children, timeout_s: float = PHASE_TIMEOUT_S) -> None:
  """Waits for every child; on a failure or the timeout kills them all and fails with the tails of their logs."""
  deadline = time.monotonic() + timeout_s
  failed = None
  try:
    while failed is None and any(p.poll() is None for _, p in children):
      failed = next((log for log, p in children if p.poll() not in (None, 0)), None)
      if time.monotonic() > deadline:
        failed = "timeout"
      time.sleep(0.2)
  finally:  # also on an interrupt: no child outlives the test
    failed = failed or next((log for log, p in children if p.poll() != 0), None)
    if failed is not None:
      for _, p in children:
        if p.poll() is None:
          p.kill()
          p.wait()
  if failed is None:
    return
  tails = "\n".join(f"--- {log.name} (exit {p.returncode}) ---\n{log.read_text()[-4000:]}" for log, p in children)
  pytest.fail(f"multi-host run failed ({failed if failed == 'timeout' else failed.name}):\n{tails}")


def _train_records(model_dir: pathlib.Path) -> list[dict]:
  with open(model_dir / "metrics.jsonl") as f:
    return [r for r in map(json.loads, f) if r["split"] == "train"]


def _restore_params(model_dir: pathlib.Path):
  import flax.linen as nn

  from glm_jax.model import GLM
  from glm_jax.train import checkpoints, partitioning

  model = GLM(checkpoints.load_model_config(str(model_dir)))
  abstract = nn.unbox(partitioning.abstract_boxed_params(model, 8))
  return jax.device_get(checkpoints.restore_params(str(model_dir), abstract, step=STEPS))


@pytest.mark.slow
def test_two_processes_match_one_and_checkpoints_cross_host_counts(tmp_path):
  (tmp_path / "multihost.gin").write_text(GIN)
  one, two = tmp_path / "one", tmp_path / "two"
  _wait(_start("one", one, 1, STEPS, tmp_path) + _start("two", two, 2, STEPS, tmp_path))

  one_records, two_records = _train_records(one), _train_records(two)
  assert [r["step"] for r in one_records] == [r["step"] for r in two_records] == list(range(1, STEPS + 1))
  assert [r["num_tokens"] for r in two_records] == [r["num_tokens"] for r in one_records]
  np.testing.assert_allclose([r["loss"] for r in two_records], [r["loss"] for r in one_records], rtol=LOSS_RTOL)
  assert one_records[-1]["loss"] < 0.8 * one_records[0]["loss"], "the runs must train for the match to mean much"

  one_params, two_params = _restore_params(one), _restore_params(two)
  assert jax.tree.structure(one_params) == jax.tree.structure(two_params)
  for a, b in zip(jax.tree.leaves(one_params), jax.tree.leaves(two_params)):
    np.testing.assert_allclose(b, a, atol=PARAM_ATOL, rtol=0)

  # Across a change of host count: the 2-process checkpoint resumes in 1 process (the other direction restores
  # the same orbax arrays with more processes; it cost this test another 2-process run, about 40 s of CPU).
  two_to_one = tmp_path / "two_to_one"
  shutil.copytree(two, two_to_one)
  _wait(_start("two_to_one", two_to_one, 1, RESUMED_STEPS, tmp_path))
  resumed = _train_records(two_to_one)[STEPS:]
  # a run that had not restored would log steps from 1 again
  assert [r["step"] for r in resumed] == list(range(STEPS + 1, RESUMED_STEPS + 1)), resumed
  assert resumed[0]["loss"] < 0.8 * one_records[0]["loss"], "the resumed params must be trained"


def _await_step(model_dir: pathlib.Path, step: int, children, timeout_s: float = PHASE_TIMEOUT_S) -> None:
  """Waits until process 0 has logged train step `step` (while every child still runs)."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline and all(p.poll() is None for _, p in children):
    if (model_dir / "metrics.jsonl").exists() and any(r["step"] >= step for r in _train_records(model_dir)):
      return
    time.sleep(0.2)
  _wait(children, timeout_s=0)  # fails with the logs
  pytest.fail(f"step {step} was not reached")


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_on_every_process_and_resumes(tmp_path):
  """A preemption notice to one host (process 1, not the coordinator) reaches the other through JAX's
  preemption sync point: both save the same step, exit with status 0, and a restart goes on after it."""
  (tmp_path / "multihost.gin").write_text(GIN)
  run = tmp_path / "preempted"
  children = _start("preempted", run, 2, 100_000, tmp_path)
  _await_step(run, 2, children)
  children[1][1].send_signal(signal.SIGTERM)
  _wait(children)

  logs = [log.read_text() for log, _ in children]
  saved = [re.findall(r"preempted at step (\d+): checkpoint saved", log) for log in logs]
  assert saved[0] and saved[0] == saved[1], saved
  step = int(saved[0][0])
  assert 2 <= step < 100_000
  from glm_jax.train import checkpoints

  assert checkpoints.latest_step(str(run)) == step

  _wait(_start("resumed", run, 2, step + 2, tmp_path))
  assert [r["step"] for r in _train_records(run)][-2:] == [step + 1, step + 2]


if __name__ == "__main__":
  register_task()
  from glm_jax import main as glm_main

  glm_main.main(sys.argv[1:])
