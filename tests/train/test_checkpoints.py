import json
import os

import jax
import numpy as np
import pytest

from glm_jax.model import GLM, GLMConfig
from glm_jax.train import checkpoints, loop, optimizer, partitioning, step, synthetic

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
  params = checkpoints.restore_params(str(tmp_path), jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params))
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, jax.device_get(state.params))))
  manager.close()


def test_restore_latest_of_empty_directory_is_none(tmp_path):
  manager = checkpoints.make_manager(str(tmp_path))
  assert checkpoints.restore_latest(manager, {}) is None
  with pytest.raises(FileNotFoundError, match="no checkpoint under"):
    checkpoints.load_model_config(str(tmp_path))
  manager.close()


def _run(model_dir, num_steps):
  tc = loop.TrainConfig(num_steps=num_steps, batch_size=8, length=LENGTH, log_every=2, eval_every=3,
                        eval_steps=2, checkpoint_every=2, max_to_keep=2)
  oc = optimizer.OptimizerConfig(learning_rate=3e-3, warmup_steps=1)
  return loop.train(CONFIG, tc, oc, partitioning.MeshConfig(data=-1), synthetic.synthetic_batches(8, LENGTH, VOCAB),
                    str(model_dir), eval_batches=lambda: synthetic.synthetic_batches(8, LENGTH, VOCAB, seed=1),
                    progress=False)


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
