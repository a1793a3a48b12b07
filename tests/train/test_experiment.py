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
