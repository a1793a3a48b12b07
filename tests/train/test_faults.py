"""Faults: preemption (SIGTERM), torn checkpoints, non-finite losses and an unwritable model_dir.

In-process runs of loop.train on a tiny GLM with a checkpointable tf.data stream of synthetic rows; the
subprocess versions (a real seqio Task, SIGKILL and SIGTERM sent from outside) are in test_resume.py.
"""

import gc
import logging
import os
import re
import shutil
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from glm_jax.data import synthetic
from glm_jax.model import GLMConfig
from glm_jax.train import checkpoints, experiment, faults, inputs, loop, optimizer, partitioning, step as step_lib

VOCAB, LENGTH, BATCH = 40, 32, 8
CONFIG = GLMConfig(vocab_size=VOCAB, num_layers=2, hidden_size=32, num_heads=4, max_length=LENGTH)


def _tfdata_batches(seed: int = 0) -> inputs.TFDataBatches:
  """A checkpointable stream: 64 synthetic rows, reshuffled every epoch (so the position matters)."""
  rows = next(synthetic.synthetic_batches(64, LENGTH, VOCAB, seed=seed))
  ds = tf.data.Dataset.from_tensor_slices(rows).repeat().shuffle(16, seed=seed).batch(BATCH, drop_remainder=True)
  return inputs.TFDataBatches(ds)


def _train(model_dir, batches, num_steps, *, checkpoint_every=2, log_every=1):
  tc = loop.TrainConfig(
    num_steps=num_steps,
    batch_size=BATCH,
    length=LENGTH,
    log_every=log_every,
    checkpoint_every=checkpoint_every,
    max_to_keep=10,
  )
  oc = optimizer.OptimizerConfig(learning_rate=3e-3, warmup_steps=1)
  return loop.train(CONFIG, tc, oc, partitioning.MeshConfig(data=-1), batches, str(model_dir), progress=False)


def _losses(model_dir) -> dict[int, float]:
  """step -> loss of every train record."""
  records = [
    r for r in loop.metrics_lib.read_jsonl(os.path.join(model_dir, loop.METRICS_FILE)) if r["split"] == "train"
  ]
  return {r["step"]: r["loss"] for r in records}


class _SigtermAt:
  """A checkpointable stream that sends this process SIGTERM while batch `n` (1-based) is drawn."""

  def __init__(self, batches: inputs.TFDataBatches, n: int):
    self._batches, self._n, self._drawn = batches, n, 0

  def __iter__(self):
    return self

  def __next__(self):
    self._drawn += 1
    if self._drawn == self._n:
      os.kill(os.getpid(), signal.SIGTERM)
    return next(self._batches)

  def save_position(self, prefix: str) -> None:
    self._batches.save_position(prefix)

  def restore_position(self, prefix: str) -> None:
    self._batches.restore_position(prefix)


@pytest.fixture
def sigterm_catcher():
  """A SIGTERM handler for the test itself, so a loop that failed to install its own cannot kill pytest."""
  caught = []
  previous = signal.signal(signal.SIGTERM, lambda *_: caught.append(True))
  yield caught
  signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_boundary_and_returns_preempted(tmp_path, sigterm_catcher, caplog):
  """Resuming after it, bit for bit equal to an uninterrupted run, is tested through the entry point in
  test_resume.py."""
  handler_before = signal.getsignal(signal.SIGTERM)
  with caplog.at_level(logging.WARNING):
    summary = _train(tmp_path, _SigtermAt(_tfdata_batches(), 3), 6)  # signalled as step 3 draws its batch
  assert summary["preempted"] and summary["steps"] == 3
  assert "preempted at step 3: checkpoint saved" in caplog.text
  assert checkpoints.latest_step(str(tmp_path)) == 3  # off the every-2 interval: saved for the preemption
  assert not sigterm_catcher  # the loop's handler took the signal...
  assert signal.getsignal(signal.SIGTERM) is handler_before  # ...and is removed afterwards
  assert sorted(_losses(tmp_path)) == [1, 2, 3]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A directory with checkpoints at steps 2 and 4 (one and two batches drawn); the state and its target."""
  directory = tmp_path_factory.mktemp("saved_run")
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1))
  tx = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-3, warmup_steps=1), 10)
  state, shardings = partitioning.init_state(loop.GLM(CONFIG), tx, mesh, jax.random.key(0), LENGTH)
  manager = checkpoints.make_manager(str(directory), save_every=1)
  batches = _tfdata_batches()
  for s in (2, 4):
    next(batches)
    checkpoints.save(manager, state.replace(step=jnp.int32(s)), CONFIG, data_iterator=batches)
  manager.close()
  return directory, state, checkpoints.abstract_like(state, shardings)


def _copy_of(saved_run, tmp_path):
  directory = tmp_path / "run"
  shutil.copytree(saved_run[0], directory)
  return directory


def _largest_file(directory) -> str:
  files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
  return max(files, key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize(
  "damage",
  [
    "truncate the largest array file",
    "delete the largest array file",
    "delete the state metadata",
    "truncate the input position",
  ],
)
def test_torn_newest_checkpoint_is_skipped_with_a_message_and_the_previous_one_restored(
  saved_run, tmp_path, caplog, damage
):
  _, state, abstract = saved_run
  tmp_path = _copy_of(saved_run, tmp_path)
  if damage == "truncate the largest array file":
    _truncate(_largest_file(tmp_path / "4" / "state"))
  elif damage == "delete the largest array file":
    os.remove(_largest_file(tmp_path / "4" / "state"))
  elif damage == "delete the state metadata":
    os.remove(tmp_path / "4" / "state" / "_METADATA")
  else:
    _truncate(_largest_file(tmp_path / "4" / checkpoints.DATA_ITEM))

  manager = checkpoints.make_manager(str(tmp_path), save_every=1)
  batches = _tfdata_batches()
  unraisable = []  # what would print "Exception ignored in ..." tracebacks to stderr
  hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
  try:
    with caplog.at_level(logging.WARNING):
      restored = checkpoints.restore_latest(manager, abstract, batches)
    gc.collect()  # the failed read's unfinished coroutines
  finally:
    sys.unraisablehook = hook
  assert not unraisable, [(u.exc_value, u.object) for u in unraisable[:3]]  # the warning line alone
  assert int(restored.step) == 2
  assert "checkpoint step 4 under" in caplog.text and "skipping it" in caplog.text
  assert "restored step 2, the newest complete checkpoint" in caplog.text
  # The torn step is kept for inspection but no longer listed, so the run can save step 4 again.
  assert (tmp_path / f"4{checkpoints.UNRESTORABLE_SUFFIX}").is_dir() and not (tmp_path / "4").exists()
  assert manager.latest_step() == 2
  # The input position is step 2's (one batch drawn), not step 4's (two drawn).
  expected = _tfdata_batches()
  next(expected)
  assert all(np.array_equal(a, b) for a, b in zip(next(batches).values(), next(expected).values()))
  assert all(
    jax.tree.leaves(jax.tree.map(np.array_equal, jax.device_get(restored.params), jax.device_get(state.params)))
  )
  manager.close()


def test_when_no_checkpoint_restores_it_raises_and_moves_nothing(saved_run, tmp_path):
  abstract = saved_run[2]
  tmp_path = _copy_of(saved_run, tmp_path)
  for step in ("2", "4"):
    os.remove(tmp_path / step / "state" / "_METADATA")
  manager = checkpoints.make_manager(str(tmp_path), save_every=1)
  with pytest.raises(RuntimeError, match=r"no checkpoint under .* restores \(step 4: .*; step 2: "):
    checkpoints.restore_latest(manager, abstract)
  assert (tmp_path / "2").is_dir() and (tmp_path / "4").is_dir()
  manager.close()


def test_finite_guard_reports_the_first_non_finite_step_and_non_finite_params(tmp_path):
  guard, manager = faults.FiniteGuard(), checkpoints.make_manager(str(tmp_path))
  for step, loss, grad_norm in [(1, 2.0, 1.0), (2, 1.5, 0.5)]:
    guard.update(step, {"loss": jnp.float32(loss), "grad_norm": jnp.float32(grad_norm)})
  guard.check(manager, 2, params={"w": jnp.ones(3)})
  with pytest.raises(
    FloatingPointError,
    match=r"the parameters after step 2 are not finite; last good "
    r"checkpoint: none",
  ):
    guard.check(manager, 2, params={"w": jnp.array([1.0, np.inf])})
  for step, loss, grad_norm in [(3, 1.0, np.inf), (4, np.nan, np.nan), (5, 1.0, 1.0)]:
    guard.update(step, {"loss": jnp.float32(loss), "grad_norm": jnp.float32(grad_norm)})
  with pytest.raises(FloatingPointError, match=r"loss is 1.0 \(grad_norm inf\) at step 3; last good"):
    guard.check(manager, 5)
  manager.close()


def _batches_with_inf_at(n: int):
  """Synthetic batches whose n-th (1-based) has an infinite loss_mask, so that step's loss is NaN."""
  for i, batch in enumerate(synthetic.synthetic_batches(BATCH, LENGTH, VOCAB), start=1):
    if i == n:
      batch = dict(batch, loss_mask=np.where(batch["loss_mask"] > 0, np.inf, 0.0).astype(np.float32))
    yield batch


@pytest.mark.slow
def test_an_injected_nan_loss_stops_the_run_and_is_never_checkpointed(tmp_path):
  # log_every=100: the NaN of step 5 is caught by the check before the save of step 6, not by logging.
  with pytest.raises(FloatingPointError, match=r"loss is nan .* at step 5; last good checkpoint: step 4 in "):
    _train(tmp_path, _batches_with_inf_at(5), 10, checkpoint_every=2, log_every=100)
  assert checkpoints.latest_step(str(tmp_path)) == 4
  assert max(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == 4


def test_unwritable_model_dir_fails_before_data_is_read_or_anything_compiled(tmp_path, monkeypatch):
  def untouchable():
    raise AssertionError("the data was read")
    yield

  def no_compile(*args, **kwargs):
    raise AssertionError("the train step was compiled")

  monkeypatch.setattr(step_lib, "jit_train_step", no_compile)
  # A path through a regular file: no process can create it, root included (root ignores permission bits).
  (tmp_path / "a_file").write_text("not a directory")
  model_dir = tmp_path / "a_file" / "run"
  with pytest.raises(PermissionError, match=re.escape(f"model_dir '{model_dir}' is not writable")):
    _train(model_dir, untouchable(), 4)
  # The entry point checks before it builds the input pipeline (an unknown Task would fail there).
  exp = experiment.Experiment(
    CONFIG,
    loop.TrainConfig(num_steps=4, batch_size=BATCH, length=LENGTH),
    optimizer.OptimizerConfig(warmup_steps=1),
    partitioning.MeshConfig(),
    inputs.DataConfig(mixture_or_task_name="no_such_task"),
  )
  with pytest.raises(PermissionError, match=re.escape(f"model_dir '{model_dir}' is not writable")):
    experiment.train(str(model_dir), exp)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_model_dir_fails_for_a_regular_user(tmp_path):
  read_only = tmp_path / "read_only"
  read_only.mkdir(mode=0o500)
  with pytest.raises(PermissionError, match="is not writable"):
    checkpoints.ensure_writable(str(read_only / "run"))
