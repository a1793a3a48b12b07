import json
import logging
import os
import shutil
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from glm_jax.data import synthetic
from glm_jax.model import GLM, GLMConfig
from glm_jax.train import checkpoints, inputs, loop, optimizer, partitioning, step
from glm_jax.train.state import TrainState

VOCAB, LENGTH = 40, 32
CONFIG = GLMConfig(vocab_size=VOCAB, num_layers=2, hidden_size=32, num_heads=4, max_length=LENGTH)


def _trained_state(mesh, steps=2):
  model = GLM(CONFIG)
  tx = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-3, warmup_steps=1), 10)
  state, shardings = partitioning.init_state(model, tx, mesh, jax.random.key(0), LENGTH)
  train_step = step.jit_train_step(step.make_train_step(model, tx), shardings, mesh)
  batches = synthetic.synthetic_batches(8, LENGTH, VOCAB)
  for _ in range(steps):
    state, _ = train_step(state, partitioning.global_batch(next(batches), mesh), jax.random.key(1))
  return state, shardings


@pytest.mark.slow
def test_save_restore_is_bit_exact_and_keeps_shardings(tmp_path):
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
  state, shardings = _trained_state(mesh)
  manager = checkpoints.make_manager(str(tmp_path), save_every=1, max_to_keep=2)
  assert checkpoints.save(manager, state, CONFIG)
  manager.wait_until_finished()
  restored = checkpoints.restore_latest(manager, checkpoints.abstract_like(state, shardings))
  assert int(restored.step) == 2
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), state, restored)
  assert all(jax.tree.leaves(same))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  emb = restored.params["word_embeddings"]["embedding"]
  assert emb.sharding == shardings.params["word_embeddings"]["embedding"]
  assert checkpoints.load_model_config(str(tmp_path)) == CONFIG
  params = checkpoints.restore_params(
    str(tmp_path), jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params)
  )
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, jax.device_get(state.params))))
  manager.close()


def test_restore_latest_of_empty_directory_is_none(tmp_path):
  manager = checkpoints.make_manager(str(tmp_path))
  assert checkpoints.restore_latest(manager, {}) is None
  with pytest.raises(FileNotFoundError, match="no checkpoint under"):
    checkpoints.load_model_config(str(tmp_path))
  manager.close()


def _run(model_dir, num_steps):
  tc = loop.TrainConfig(
    num_steps=num_steps,
    batch_size=8,
    length=LENGTH,
    log_every=2,
    eval_every=3,
    eval_steps=2,
    checkpoint_every=2,
    max_to_keep=2,
  )
  oc = optimizer.OptimizerConfig(learning_rate=3e-3, warmup_steps=1)
  return loop.train(
    CONFIG,
    tc,
    oc,
    partitioning.MeshConfig(data=-1),
    synthetic.synthetic_batches(8, LENGTH, VOCAB),
    str(model_dir),
    eval_batches=lambda: synthetic.synthetic_batches(8, LENGTH, VOCAB, seed=1),
    progress=False,
  )


@pytest.mark.slow
def test_loop_writes_artifacts_and_resumes_from_latest(tmp_path):
  first = _run(tmp_path, 4)
  assert checkpoints.latest_step(str(tmp_path)) == 4
  for name in (loop.LOSS_CURVE_FILE, loop.METRICS_FILE, loop.MODEL_CONFIG_FILE):
    assert os.path.getsize(tmp_path / name) > 0
  with open(tmp_path / loop.MODEL_CONFIG_FILE) as f:
    assert GLMConfig(**json.load(f)) == CONFIG
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
  # Checkpoints every 2 steps keeping 2, the final step forced.
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 4]

  resumed = _run(tmp_path, 6)  # starts at the saved step 4, not 0
  assert int(resumed["state"].step) == 6
  assert checkpoints.latest_step(str(tmp_path)) == 6
  records = [json.loads(line) for line in open(tmp_path / loop.METRICS_FILE)]
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  assert train_steps == [1, 2, 4, 5, 6]  # the resumed run logs from step 5 on
  assert [r["step"] for r in records if r["split"] == "eval"] == [3, 4, 6]
  assert first["final_loss"] is not None and resumed["first_loss"] is not None


def _small_state(step: int) -> TrainState:
  return TrainState(step=jnp.int32(step), params={"w": jnp.arange(8.0) * step}, opt_state={"m": jnp.ones(3)})


def _target(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _tfdata_batches(seed: int = 0) -> inputs.TFDataBatches:
  """A checkpointable stream of synthetic batches, reshuffled every epoch (so the position matters)."""
  rows = next(synthetic.synthetic_batches(64, LENGTH, VOCAB, seed=seed))
  ds = tf.data.Dataset.from_tensor_slices(rows).repeat().shuffle(16, seed=seed).batch(8, drop_remainder=True)
  return inputs.TFDataBatches(ds)


def _same_batches(a: list[dict], b: list[dict]) -> bool:
  return len(a) == len(b) and all(
    x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
  )


def test_input_position_is_saved_with_the_state_and_restored_exactly(tmp_path):
  batches = _tfdata_batches()
  drawn = [next(batches) for _ in range(11)]  # past the first epoch of 8 batches: the reshuffle matters
  manager = checkpoints.make_manager(str(tmp_path), save_every=1)
  assert checkpoints.save(manager, _small_state(11), CONFIG, data_iterator=batches)
  expected = [next(batches) for _ in range(6)]
  manager.close()
  assert sorted(os.listdir(tmp_path / "11" / checkpoints.DATA_ITEM)) == [
    "commit_success.txt",
    "iterator-00000-of-00001.data-00000-of-00001",
    "iterator-00000-of-00001.index",
  ]

  fresh = _tfdata_batches()
  manager = checkpoints.make_manager(str(tmp_path), save_every=1)
  restored = checkpoints.restore_latest(manager, _target(_small_state(0)), fresh)
  assert int(restored.step) == 11
  assert _same_batches([next(fresh) for _ in range(6)], expected)
  assert not _same_batches(expected, drawn[:6])  # the oracle: the stream does not simply restart
  manager.close()


def test_input_position_saved_by_another_process_count_restarts_the_stream_with_a_warning(tmp_path, caplog):
  batches = _tfdata_batches()
  for _ in range(3):
    next(batches)
  manager = checkpoints.make_manager(str(tmp_path), save_every=1)
  checkpoints.save(manager, _small_state(3), CONFIG, data_iterator=batches)
  manager.close()
  data_dir = tmp_path / "3" / checkpoints.DATA_ITEM
  for name in os.listdir(data_dir):  # as if 2 processes had saved it
    if name.startswith("iterator-"):
      os.rename(data_dir / name, data_dir / name.replace("-of-00001", "-of-00002"))
      shutil.copy(
        data_dir / name.replace("-of-00001", "-of-00002"), data_dir / name.replace("00000-of-00001", "00001-of-00002")
      )

  fresh = _tfdata_batches()
  manager = checkpoints.make_manager(str(tmp_path), save_every=1)
  with caplog.at_level(logging.WARNING):
    restored = checkpoints.restore_latest(manager, _target(_small_state(0)), fresh)
  assert int(restored.step) == 3  # the state restores; only the input stream restarts
  assert "saved by 2 processes and this run has 1" in caplog.text and "restarts from its beginning" in caplog.text
  start = _tfdata_batches()
  assert _same_batches([next(fresh) for _ in range(2)], [next(start) for _ in range(2)])
  manager.close()


def test_a_pipeline_that_cannot_be_checkpointed_fails_at_construction_naming_the_switch():
  ds = tf.data.Dataset.from_generator(lambda: iter(range(10)), output_signature=tf.TensorSpec([], tf.int64))
  with pytest.raises(ValueError, match=r"cannot be checkpointed .*DataConfig.checkpoint_input=False"):
    inputs.TFDataBatches(ds.map(lambda x: {"input_ids": x}))


def test_saves_are_asynchronous_invisible_until_committed_and_restore_waits_for_them(tmp_path, monkeypatch):
  manager = checkpoints.make_manager(str(tmp_path), save_every=1)
  release = threading.Event()
  commit = manager._finalize  # orbax's background step that renames the finished tmp dir to DIR/<step>

  def held_commit(*args, **kwargs):
    release.wait(timeout=60)
    return commit(*args, **kwargs)

  monkeypatch.setattr(manager, "_finalize", held_commit)
  state, batches = _small_state(2), _tfdata_batches()
  assert checkpoints.save(manager, state, CONFIG, data_iterator=batches)  # returns with the commit held back
  assert manager.is_saving_in_progress()
  assert not (tmp_path / "2").exists()  # a save in flight is never visible as a step
  expected = [next(batches) for _ in range(3)]  # training goes on meanwhile
  assert float(jax.jit(jnp.sum)(state.params["w"])) == 56.0

  threading.Timer(0.5, release.set).start()
  fresh = _tfdata_batches()
  restored = checkpoints.restore_latest(manager, _target(_small_state(0)), fresh)  # waits for the commit
  assert int(restored.step) == 2 and not manager.is_saving_in_progress()
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, jax.device_get(restored), jax.device_get(state))))
  assert _same_batches([next(fresh) for _ in range(3)], expected)
  manager.close()


@pytest.mark.slow
def test_seqio_stream_is_deterministic_and_a_restored_position_continues_it_exactly(tmp_path):
  import tasks  # noqa: F401  (registers the Tasks)

  def stream():
    config = inputs.DataConfig(mixture_or_task_name="glm_embedded", eval_split=None)
    return inputs.batches(config, "train", 4, LENGTH, repeat=True, shuffle=True, checkpointable=True)

  first = stream()
  drawn = [next(first) for _ in range(3)]
  first.save_position(str(tmp_path / "position"))
  expected = [next(first) for _ in range(3)]
  again = stream()
  assert _same_batches([next(again) for _ in range(6)], drawn + expected)  # same seed, same stream
  resumed = stream()
  resumed.restore_position(str(tmp_path / "position"))
  assert _same_batches([next(resumed) for _ in range(3)], expected)
  del first, again, resumed  # tf.data iterators running Python must not outlive the test (preprocessors.py)


# Two real processes (jax.distributed on localhost, one CPU device each) restoring the same directory, where
# process 1 cannot read the newest steps (a host's failed read of a torn or half-copied step) and its listing of the
# directory lacks the newest one (NFS caching, a per-host copy). Run as a script, this file is one of those processes.
FLAKY_STEP = 2  # process 1 reads no step from this one on
UNLISTED_STEP = 3  # and does not list this one


def _restore_in_process(directory: str, coordinator: str, process_id: int, out: str) -> None:
  import orbax.checkpoint as ocp

  from glm_jax.train import distributed

  distributed.initialize(coordinator, 2, process_id)
  if process_id == 1:  # orbax's read of the arrays fails here, for this step only
    original = ocp.PyTreeCheckpointHandler.restore

    def flaky_restore(self, directory, *args, **kwargs):
      if directory.parent.name.isdigit() and int(directory.parent.name) >= FLAKY_STEP:
        raise OSError(f"simulated: process 1 cannot read step {directory.parent.name}")
      return original(self, directory, *args, **kwargs)

    listed = ocp.CheckpointManager.all_steps
    ocp.PyTreeCheckpointHandler.restore = flaky_restore
    ocp.CheckpointManager.all_steps = lambda self, *a, **k: [s for s in listed(self, *a, **k) if s != UNLISTED_STEP]
  replicated = jax.sharding.NamedSharding(jax.make_mesh((2,), ("data",)), jax.sharding.PartitionSpec())
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), _small_state(0))
  params = checkpoints.restore_params(directory, target.params)
  manager = checkpoints.make_manager(directory)
  state = checkpoints.restore_latest(manager, target)
  manager.close()
  local = lambda x: np.asarray(x.addressable_data(0)).tolist()  # noqa: E731
  with open(out, "w") as f:
    json.dump(
      {"params_w": local(params["w"]), "latest_step": local(state.step), "latest_w": local(state.params["w"])}, f
    )


@pytest.mark.slow
def test_processes_agree_on_an_older_step_when_one_cannot_read_the_newest(tmp_path):
  import socket
  import subprocess
  import time

  directory = tmp_path / "ckpt"
  manager = checkpoints.make_manager(str(directory), save_every=1)
  for s in (1, FLAKY_STEP, UNLISTED_STEP):
    checkpoints.save(manager, _small_state(s), CONFIG, step=s, force=True)
  manager.wait_until_finished()
  manager.close()

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    coordinator = f"127.0.0.1:{s.getsockname()[1]}"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags + ["--xla_force_host_platform_device_count=1"]))
  children = []
  for i in range(2):
    with open(tmp_path / f"{i}.log", "w") as log:
      children.append(
        subprocess.Popen(
          [sys.executable, __file__, str(directory), coordinator, str(i), str(tmp_path / f"{i}.json")],
          env=env,
          stdout=log,
          stderr=subprocess.STDOUT,
        )
      )
  deadline = time.monotonic() + 120  # each process takes ~15 s; a desync hangs
  while any(p.poll() is None for p in children) and time.monotonic() < deadline:
    time.sleep(0.2)
  for p in children:
    if p.poll() is None:
      p.kill()
      p.wait()
  logs = [(tmp_path / f"{i}.log").read_text() for i in range(2)]
  assert [p.returncode for p in children] == [0, 0], "\n\n".join(log[-3000:] for log in logs)

  want = (np.arange(8.0) * 1).tolist()  # step 1's params
  for i in range(2):
    result = json.loads((tmp_path / f"{i}.json").read_text())
    assert result == {"params_w": want, "latest_step": 1, "latest_w": want}, (i, result)
  # Both walked the union of their listings, 3, 2, 1 (each walking its own would pair process 0's step 3 with
  # process 1's step 2 and end on different steps).
  assert "skipping newer unreadable steps: step 3: it failed on another process; step 2: it failed" in logs[0]
  assert "simulated: process 1 cannot read step 2" in logs[1]
  for s in (FLAKY_STEP, UNLISTED_STEP):
    assert not (directory / str(s)).exists() and (directory / f"{s}{checkpoints.UNRESTORABLE_SUFFIX}").exists()


if __name__ == "__main__":
  _restore_in_process(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])


def _small_vocabulary():
  """A second GLM SentencePiece vocabulary (400 pieces), other than the default one."""
  from glm_jax.data import vocab

  settings = vocab.TrainSettings(vocab_size=400)
  return vocab.GLMSentencePieceVocabulary(vocab.cached_model_file(vocab.embedded_corpus_texts()[:12], settings))


def test_the_tokenizer_is_kept_with_the_checkpoint_and_another_one_is_refused(tmp_path):
  from glm_jax.data import vocab

  directory = str(tmp_path / "ckpt")
  checkpoints.save_params(directory, CONFIG.replace(vocab_size=4096), {"unused": np.zeros(1, np.float32)})
  with pytest.raises(FileNotFoundError, match="holds no tokenizer .*main vocab --checkpoint"):
    checkpoints.load_vocabulary(directory)
  with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
    checkpoints.check_vocabulary(directory, vocab.default_vocabulary())
  checkpoints.attach_vocabulary(directory, vocab.default_vocabulary())
  assert vocab.fingerprint(checkpoints.load_vocabulary(directory)) == vocab.fingerprint(vocab.default_vocabulary())
  checkpoints.check_vocabulary(directory, vocab.default_vocabulary())
  checkpoints.save_vocabulary(directory, vocab.default_vocabulary())  # the same one again: kept as it is
  other = _small_vocabulary()
  with pytest.raises(ValueError, match=r"another vocabulary \(sentencepiece, 400 ids\) than .* \(sentencepiece, 4096"):
    checkpoints.check_vocabulary(directory, other)
  with pytest.raises(ValueError, match="another vocabulary"):
    checkpoints.save_vocabulary(directory, other)
  with pytest.raises(FileExistsError, match="already has a tokenizer"):
    checkpoints.attach_vocabulary(directory, other)
  small = str(tmp_path / "small")
  checkpoints.save_params(small, CONFIG, {"unused": np.zeros(1, np.float32)})  # 40 vocabulary rows
  with pytest.raises(ValueError, match="has 4096 ids but the model of .* has 40"):
    checkpoints.attach_vocabulary(small, vocab.default_vocabulary())
  with pytest.raises(FileNotFoundError, match="no checkpoint under"):
    checkpoints.attach_vocabulary(str(tmp_path / "none"), other)


def test_a_gs_model_dir_keeps_its_tokenizer_in_the_bucket(fake_bucket):
  from glm_jax.data import vocab

  checkpoints.save_vocabulary("gs://bucket/run", vocab.default_vocabulary())
  assert (fake_bucket / "run" / "tokenizer" / vocab.MANIFEST).exists() and not os.path.exists("gs:")
  loaded = checkpoints.load_vocabulary("gs://bucket/run")
  assert vocab.fingerprint(loaded) == vocab.fingerprint(vocab.default_vocabulary())


def test_out_of_memory_at_restore_stops_and_moves_no_checkpoint_aside(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp

  manager = checkpoints.make_manager(str(tmp_path), save_every=1)
  for s in (1, 2):
    checkpoints.save(manager, _small_state(s), CONFIG, step=s, force=True)
  manager.wait_until_finished()
  original = ocp.StandardCheckpointHandler.restore

  def exhausted(self, directory, *args, **kwargs):
    if directory.parent.name == "2":
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8589934592 bytes.")
    return original(self, directory, *args, **kwargs)

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "restore", exhausted)
  with pytest.raises(MemoryError, match="ran out of memory .* the checkpoint is left as it is"):
    checkpoints.restore_latest(manager, _target(_small_state(0)))
  assert (tmp_path / "2").exists() and not list(tmp_path.glob(f"*{checkpoints.UNRESTORABLE_SUFFIX}*"))
  manager.close()


def test_a_failed_background_save_is_one_line_naming_the_newest_complete_step(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp

  manager = checkpoints.make_manager(str(tmp_path), save_every=1)
  checkpoints.save(manager, _small_state(1), CONFIG, step=1, force=True)
  checkpoints.wait_for_saves(manager)

  class NoSpace:
    def result(self, timeout=None):
      raise OSError(28, "No space left on device")

  original = ocp.StandardCheckpointHandler.async_save

  async def out_of_space(self, *args, **kwargs):  # the arrays' writes in the background fail
    return [*((await original(self, *args, **kwargs)) or []), NoSpace()]

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", out_of_space)
  checkpoints.save(manager, _small_state(2), CONFIG, step=2, force=True)
  with pytest.raises(OSError, match=r"No space left on device\); the newest complete checkpoint is step 1: free"):
    checkpoints.wait_for_saves(manager)
  assert manager.all_steps() == [1]
  manager.close()


def test_killed_saves_leave_no_temporary_directories_behind(tmp_path):
  manager = checkpoints.make_manager(str(tmp_path), save_every=1)
  checkpoints.save(manager, _small_state(1), CONFIG, step=1, force=True)
  manager.wait_until_finished()
  manager.close()
  torn = tmp_path / "2.orbax-checkpoint-tmp"  # what a save killed mid-write leaves (orbax 0.12's name)
  (torn / "state").mkdir(parents=True)
  (torn / "state" / "big").write_bytes(b"\0" * 4096)
  manager = checkpoints.make_manager(str(tmp_path), save_every=1)  # the next run's start
  checkpoints.restore_latest(manager, _target(_small_state(0)))  # waits for the manager's background work
  assert not torn.exists() and manager.all_steps() == [1]
  manager.close()
