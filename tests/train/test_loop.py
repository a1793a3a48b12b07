"""Starting a run from another checkpoint's params (TrainConfig.init_checkpoint) and reading params back."""

import functools
import logging
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from glm_jax.model import GLM, GLMConfig
from glm_jax.train import checkpoints, loop, optimizer, partitioning, step as step_lib

LENGTH = 16
CONFIG = GLMConfig(vocab_size=40, num_layers=2, hidden_size=32, num_heads=4, max_length=LENGTH)


@functools.cache
def _init_fn(config):
  model, ids = GLM(config), np.zeros((1, LENGTH), np.int32)
  return jax.jit(lambda rng: nn.unbox(model.init(rng, ids, ids, ids, sep=np.zeros((1,), np.int32))["params"]))


def _params(config, seed):
  return jax.device_get(_init_fn(config)(jax.random.key(seed)))


MESH = partitioning.MeshConfig(data=2, fsdp=2, tensor=2)


def _tx():
  return optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-3, warmup_steps=1), 10)


def _fresh_state(config, mesh):
  tx = _tx()
  state, shardings = partitioning.init_state(GLM(config), tx, mesh, jax.random.key(0), LENGTH)
  return state, shardings, tx


def _abstract_state(config, mesh):
  """The state's shapes and shardings, nothing computed (for the tests that fail before any array is read)."""
  tx, boxed = _tx(), partitioning.abstract_boxed_params(GLM(config), LENGTH)
  shardings = partitioning.state_shardings(boxed, tx, mesh)
  state = jax.eval_shape(lambda p: loop.TrainState.create(p, tx), nn.unbox(boxed))
  return state, shardings, tx


def test_init_checkpoint_params_take_the_runs_shardings_with_a_fresh_optimizer(tmp_path):
  saved = _params(CONFIG, seed=7)
  checkpoints.save_params(str(tmp_path / "init"), CONFIG, saved)
  mesh = partitioning.make_mesh(MESH)
  state, shardings, tx = _fresh_state(CONFIG, mesh)
  started = loop.init_from_checkpoint(str(tmp_path / "init"), state, shardings, tx)

  assert int(started.step) == 0
  for got, want in zip(jax.tree.leaves(started.params), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert not np.array_equal(
    np.asarray(started.params["word_embeddings"]["embedding"]),  # not the run's own init
    np.asarray(state.params["word_embeddings"]["embedding"]),
  )
  for got, want in zip(jax.tree.leaves(started.params), jax.tree.leaves(shardings.params)):
    assert got.sharding == want
  fresh_opt = tx.init(saved)
  for got, want in zip(jax.tree.leaves(started.opt_state), jax.tree.leaves(fresh_opt)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  emb = started.params["word_embeddings"]["embedding"]
  assert emb.sharding.spec == shardings.params["word_embeddings"]["embedding"].spec
  assert len(emb.addressable_shards) == 8


def test_init_checkpoint_of_another_shape_names_the_params_and_shapes(tmp_path):
  checkpoints.save_params(str(tmp_path / "init"), CONFIG, _params(CONFIG, seed=1))
  mesh = partitioning.make_mesh(MESH)
  state, shardings, tx = _abstract_state(CONFIG.replace(vocab_size=300), mesh)
  with pytest.raises(
    ValueError,
    match=r"do not fit this model: word_embeddings/embedding: the checkpoint has "
    r"\(\d+, 32\), the model \(3\d\d, 32\)\. .*model_from_checkpoint",
  ):
    loop.init_from_checkpoint(str(tmp_path / "init"), state, shardings, tx)
  state, shardings, tx = _abstract_state(CONFIG.replace(hidden_size=64), mesh)
  with pytest.raises(
    ValueError,
    match=r"layers/attention/dense/kernel: the checkpoint has \(2, 4, 8, 32\), the "
    r"model \(2, 4, 16, 64\);.* and \d+ more",
  ):
    loop.init_from_checkpoint(str(tmp_path / "init"), state, shardings, tx)


def test_init_checkpoint_of_an_empty_directory_fails_naming_it(tmp_path):
  state, shardings, tx = _abstract_state(CONFIG, partitioning.make_mesh(MESH))
  with pytest.raises(FileNotFoundError, match="no checkpoint under"):
    loop.init_from_checkpoint(str(tmp_path), state, shardings, tx)


def test_restore_params_skips_a_torn_newest_step(tmp_path, caplog):
  old, new = _params(CONFIG, seed=1), _params(CONFIG, seed=2)
  manager = checkpoints.make_manager(str(tmp_path), save_every=1, max_to_keep=3)
  for step, params in ((1, old), (2, new)):
    state = loop.TrainState(step=jax.numpy.int32(step), params=params, opt_state={})
    checkpoints.save(manager, state, CONFIG, step=step, force=True)
  manager.wait_until_finished()
  manager.close()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), old)
  newest = checkpoints.restore_params(str(tmp_path), abstract)
  np.testing.assert_array_equal(newest["word_embeddings"]["embedding"], new["word_embeddings"]["embedding"])

  # Tear step 2: its array files are gone (a crash of a copy, a partial rsync).
  for path in (tmp_path / "2" / "state").iterdir():
    if path.is_dir():
      shutil.rmtree(path)
  with caplog.at_level(logging.WARNING):
    restored = checkpoints.restore_params(str(tmp_path), abstract)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(old)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert "skipping newer unreadable steps: step 2" in caplog.text
  assert (tmp_path / "2").exists()  # a reader never moves checkpoints
  with pytest.raises(RuntimeError, match="no checkpoint under .* restores"):
    checkpoints.restore_params(str(tmp_path), abstract, step=2)


def test_metrics_files_on_an_object_store_are_rewritten_not_appended(tmp_path, monkeypatch):
  """gs:// and other epath stores cannot append: the metrics file is rewritten with the new line."""
  from glm_jax.train import metrics

  path = str(tmp_path / "metrics.jsonl")
  metrics.append_jsonl(path, {"step": 1, "split": "train", "loss": 2.0})  # local: appended
  monkeypatch.setattr(metrics, "_is_local", lambda _: False)
  metrics.append_jsonl(path, {"step": 2, "split": "train", "loss": 1.5})
  metrics.append_jsonl(path, {"step": 2, "split": "eval", "loss": 1.7})
  assert [(r["step"], r["split"]) for r in metrics.read_jsonl(path)] == [(1, "train"), (2, "train"), (2, "eval")]
  metrics.plot_loss_curve(metrics.read_jsonl(path), str(tmp_path / "curve.png"))
  assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_url_model_dirs_are_not_made_local():
  assert checkpoints.absolute("gs://bucket/runs/glm") == "gs://bucket/runs/glm"
  assert checkpoints.absolute("runs/glm").startswith("/")


def test_a_run_with_its_own_checkpoint_resumes_it_and_never_reads_init_checkpoint(tmp_path, caplog):
  from glm_jax.data import synthetic

  state, shardings, _ = _fresh_state(CONFIG, partitioning.make_mesh(MESH))  # the compilation cache has it
  state = state.replace(step=jax.numpy.int32(1))
  manager = checkpoints.make_manager(str(tmp_path / "run"), save_every=1)
  checkpoints.save(manager, state, CONFIG, force=True)
  manager.wait_until_finished()
  manager.close()
  # An init checkpoint that would fail if it were read (another shape).
  wider = CONFIG.replace(hidden_size=64)
  checkpoints.save_params(
    str(tmp_path / "init"),
    wider,
    jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), _abstract_state(wider, partitioning.make_mesh(MESH))[0].params),
  )
  tc = loop.TrainConfig(num_steps=1, batch_size=8, length=LENGTH, init_checkpoint=str(tmp_path / "init"))
  oc = optimizer.OptimizerConfig(learning_rate=1e-3, warmup_steps=1)
  with caplog.at_level(logging.INFO):
    summary = loop.train(
      CONFIG,
      tc,
      oc,
      MESH,
      synthetic.synthetic_batches(8, LENGTH, CONFIG.vocab_size),
      str(tmp_path / "run"),
      progress=False,
    )
  assert summary["steps"] == 1
  assert "is not read: the run resumes from its own checkpoint" in caplog.text
  for got, want in zip(jax.tree.leaves(summary["state"].params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_num_steps_0_saves_the_untrained_model_as_step_0_which_a_longer_run_trains_on_from(tmp_path, caplog):
  from glm_jax.data import synthetic
  from glm_jax.train import experiment

  oc = optimizer.OptimizerConfig(learning_rate=1e-3, warmup_steps=1)

  def run(name, num_steps, batches, oc=oc):
    tc = loop.TrainConfig(num_steps=num_steps, batch_size=8, length=LENGTH, log_every=1)
    return loop.train(CONFIG, tc, oc, MESH, batches, str(tmp_path / name), progress=False)

  # No batch is read, and a warmup longer than the run does not matter: no update runs.
  untrained = run("run", 0, iter([]), optimizer.OptimizerConfig(warmup_steps=5))
  assert untrained["steps"] == 0 and untrained["first_loss"] is None
  assert checkpoints.latest_step(str(tmp_path / "run")) == 0
  line = experiment.format_summary({**untrained, "seconds": 3.0}, "runs/x")
  assert line == "trained to step 0 in 3 s: no step to train; checkpoints in runs/x"  # launch_tpu.sh's finished line
  # Checkpoint 0 is the state a fresh run starts from: trained on from it, the run logs a fresh run's losses.
  with caplog.at_level(logging.INFO):
    resumed = run("run", 2, synthetic.synthetic_batches(8, LENGTH, CONFIG.vocab_size))
  assert "restored step 0" in caplog.text
  fresh = run("fresh", 2, synthetic.synthetic_batches(8, LENGTH, CONFIG.vocab_size))
  assert (resumed["first_loss"], resumed["final_loss"]) == (fresh["first_loss"], fresh["final_loss"])
  with pytest.raises(ValueError, match="num_steps=-1 must be at least 0"):
    loop.TrainConfig(num_steps=-1)


def test_a_config_that_would_keep_no_checkpoint_is_refused():
  with pytest.raises(ValueError, match="max_to_keep=0 would delete every checkpoint .* keep at least 1, or None"):
    loop.TrainConfig(max_to_keep=0)
  with pytest.raises(ValueError, match="TrainConfig.checkpoint_every=0 must be at least 1"):
    loop.TrainConfig(checkpoint_every=0)
  assert loop.TrainConfig(max_to_keep=None).max_to_keep is None


def test_empty_train_and_eval_inputs_fail_naming_the_split(tmp_path):
  tc = loop.TrainConfig(num_steps=2, batch_size=8, length=LENGTH)
  oc = optimizer.OptimizerConfig(warmup_steps=1)
  with pytest.raises(ValueError, match="the training input ran out at step 0 .* train split"):
    loop.train(CONFIG, tc, oc, partitioning.MeshConfig(data=-1), iter([]), str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="the eval split gave no target token"):  # not a loss of 0.0
    loop._eval(None, None, iter([]), 10, None, step_lib.LossConfig())


def test_an_eval_hook_adds_its_metrics_to_each_evaluation_and_eval_steps_0_skips_the_loss(tmp_path):
  from glm_jax.data import synthetic
  from glm_jax.train import metrics as metrics_lib

  tc = loop.TrainConfig(num_steps=2, batch_size=8, length=LENGTH, eval_every=1, eval_steps=0, checkpoint_every=2)
  oc = optimizer.OptimizerConfig(learning_rate=1e-3, warmup_steps=1)
  seen = []

  def hook(params):
    seen.append(jax.tree.leaves(params)[0].shape)
    return {"cloze_accuracy": 0.5 + len(seen) / 10, "cloze_num_examples": 4}

  def no_eval_batches():
    raise AssertionError("eval_steps=0 reads no eval batch")

  def run(name, eval_hook, batches=None):
    return loop.train(CONFIG, tc, oc, MESH, batches or synthetic.synthetic_batches(8, LENGTH, CONFIG.vocab_size),
                      str(tmp_path / name), no_eval_batches, progress=False, eval_hook=eval_hook)  # fmt: skip

  summary = run("hooked", hook)
  assert len(seen) == 2 and summary["final_eval_loss"] is None
  assert summary["final_eval"] == {"cloze_accuracy": 0.7, "cloze_num_examples": 4.0}
  evals = [r for r in metrics_lib.read_jsonl(str(tmp_path / "hooked" / loop.METRICS_FILE)) if r["split"] == "eval"]
  assert [(r["step"], r["cloze_accuracy"]) for r in evals] == [(1, 0.6), (2, 0.7)] and "loss" not in evals[0]
  with pytest.raises(ValueError, match="eval_steps=0 evaluates no loss, and this Task has no cloze metrics"):
    run("unhooked", None, iter([]))  # refused before any step
  with pytest.raises(ValueError, match=r"an evaluation hook's metrics are named cloze_\*: got \['accuracy'\]"):
    run("misnamed", lambda params: {"accuracy": 1.0})
  with pytest.raises(ValueError, match="eval_steps=-1 must be at least 0"):
    loop.TrainConfig(eval_steps=-1)


def test_the_eval_line_shows_the_loss_and_the_hooks_metrics():
  assert loop.eval_line(3, {"cloze_accuracy": 0.75, "cloze_num_examples": 4.0}) == (
    "step 3: cloze_accuracy 0.7500, cloze_num_examples 4"
  )
  line = loop.eval_line(3, {"loss": 2.0, "accuracy": 0.5, "cloze_f1": 0.25})
  assert line == "step 3: eval loss 2.0000 accuracy 0.500; cloze_f1 0.2500"
