"""The `train` command's checks before anything is compiled: the data's vocabulary is the checkpoint's own."""

import numpy as np
import pytest

import tasks  # noqa: F401  (the glm_* Tasks)
from glm_jax.data import vocab
from glm_jax.model import preset
from glm_jax.train import checkpoints, experiment, inputs, loop, optimizer, partitioning

TINY = preset("tiny")


def _experiment(init_checkpoint=None):
  return experiment.Experiment(
    TINY,
    loop.TrainConfig(num_steps=1, batch_size=8, length=32, init_checkpoint=init_checkpoint),
    optimizer.OptimizerConfig(),
    partitioning.MeshConfig(),
    inputs.DataConfig(mixture_or_task_name="glm_token_embedded"),
  )


def _checkpoint(directory, vocabulary=None):
  checkpoints.save_params(str(directory), TINY, {"unused": np.zeros(1, np.float32)})
  if vocabulary is not None:
    checkpoints.attach_vocabulary(str(directory), vocabulary)
  return str(directory)


def _other_vocabulary():
  settings = vocab.TrainSettings(vocab_size=400)
  return vocab.GLMSentencePieceVocabulary(vocab.cached_model_file(vocab.embedded_corpus_texts()[:12], settings))


def test_a_new_run_takes_the_data_vocabulary(tmp_path):
  got = experiment.check_data_vocabulary(str(tmp_path / "run"), _experiment())
  assert vocab.fingerprint(got) == vocab.fingerprint(vocab.default_vocabulary())


def test_init_checkpoint_must_have_the_data_vocabulary(tmp_path):
  run = str(tmp_path / "run")
  with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
    experiment.check_data_vocabulary(run, _experiment(_checkpoint(tmp_path / "bare")))
  with pytest.raises(ValueError, match="task_vocabulary.checkpoint"):
    experiment.check_data_vocabulary(run, _experiment(_checkpoint(tmp_path / "other", _other_vocabulary())))
  same = _checkpoint(tmp_path / "same", vocab.default_vocabulary())
  experiment.check_data_vocabulary(run, _experiment(same))


def test_a_resumed_run_must_have_its_own_vocabulary_and_then_ignores_init_checkpoint(tmp_path):
  run = _checkpoint(tmp_path / "run", _other_vocabulary())
  with pytest.raises(ValueError, match="another vocabulary"):
    experiment.check_data_vocabulary(run, _experiment())
  resumable = _checkpoint(tmp_path / "resumable", vocab.default_vocabulary())
  experiment.check_data_vocabulary(resumable, _experiment(init_checkpoint=str(tmp_path / "no_such_dir")))


def _resumable(tmp_path, exp):
  """A model_dir holding a checkpoint of `exp` and its run record, as a first start leaves it."""
  import json

  run = _checkpoint(tmp_path / "run", vocab.default_vocabulary())
  (tmp_path / "run" / experiment.RUN_CONFIG_FILE).write_text(json.dumps(experiment._run_record(exp)))
  return run


def test_a_resume_with_another_model_or_data_is_refused_naming_each_change(tmp_path):
  import dataclasses

  exp = _experiment()
  run = _resumable(tmp_path, exp)
  assert experiment.check_resume(run, exp) == exp
  wider = dataclasses.replace(exp, model=dataclasses.replace(TINY, hidden_size=2 * TINY.hidden_size))
  other_data = dataclasses.replace(wider, data=dataclasses.replace(exp.data, mixture_or_task_name="glm_embedded"))
  with pytest.raises(ValueError, match=r"GLMConfig.hidden_size: 128 -> 256; DataConfig.mixture_or_task_name: "
                     r"'glm_token_embedded' -> 'glm_embedded'\. Resume it .* --allow_config_change"):  # fmt: skip
    experiment.check_resume(run, other_data)
  assert experiment.check_resume(run, other_data, allow_config_change=True).model == wider.model
  # How the model computes, where evaluation goes, and the device count are free to change.
  free = dataclasses.replace(
    exp,
    model=dataclasses.replace(TINY, remat_policy="full", dtype="bfloat16"),
    data=dataclasses.replace(exp.data, eval_split=None),
    mesh=partitioning.MeshConfig(data=2),
  )
  assert experiment.check_resume(run, free) == free


def test_a_resume_keeps_the_schedule_it_started_with_unless_asked(tmp_path):
  import dataclasses

  exp = _experiment()  # num_steps=1
  run = _resumable(tmp_path, exp)
  longer = dataclasses.replace(exp, train=dataclasses.replace(exp.train, num_steps=5))
  kept = experiment.check_resume(run, longer)
  assert kept.train.num_steps == 5 and kept.train.total_schedule_steps == 1
  asked = dataclasses.replace(longer, train=dataclasses.replace(longer.train, schedule_steps=5))
  assert experiment.check_resume(run, asked).train.total_schedule_steps == 5
  assert experiment.check_resume(str(tmp_path / "new"), longer) == longer  # no checkpoint: a new run


def test_an_earlier_operative_config_is_kept_not_overwritten(tmp_path):
  run = _resumable(tmp_path, _experiment())
  step = checkpoints.latest_step(run)
  experiment._keep_operative_config(run, "first\n", step)
  experiment._keep_operative_config(run, "first\n", step)  # the same bindings: nothing to keep
  experiment._keep_operative_config(run, "second\n", step)
  experiment._keep_operative_config(run, "third\n", step)
  assert (tmp_path / "run" / experiment.OPERATIVE_CONFIG_FILE).read_text() == "third\n"
  kept = sorted(p.name for p in (tmp_path / "run").glob("operative_config.until_step_*"))
  assert kept == ["operative_config.until_step_0.1.gin", "operative_config.until_step_0.gin"]
  assert (tmp_path / "run" / "operative_config.until_step_0.gin").read_text() == "first\n"


def test_train_refuses_a_model_dir_another_run_holds(tmp_path):
  import json
  import time

  from glm_jax.train import lease

  run = tmp_path / "run"
  run.mkdir()
  (run / lease.LEASE_FILE).write_text(json.dumps({"owner": "x", "host": "other", "pid": 7, "time": time.time()}))
  with pytest.raises(RuntimeError, match="in use by another run: pid 7 on other"):
    experiment.train(str(run), _experiment(), progress=False)
  assert sorted(p.name for p in run.iterdir()) == [lease.LEASE_FILE]  # nothing written, nothing read
