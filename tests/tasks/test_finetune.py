"""tasks/finetune.py: cloze Tasks train with `train` and are scored with `eval --cloze`."""

from __future__ import annotations

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from glm_jax import main
from glm_jax.data import cloze
from tasks import finetune

TASK = "test_toy_sentiment_cloze"
POSITIVE = ["fast", "clear", "useful", "simple", "good"]
NEGATIVE = ["slow", "broken", "wrong", "bad", "confusing"]
SUBJECTS = ["the module", "this function", "the parser", "that class", "the manual"]

GIN = f"""
include 'gin/models/tiny.gin'
model_preset.overrides = {{'max_length': 32, 'num_layers': 2}}
experiment.data = @DataConfig()
DataConfig.mixture_or_task_name = '{TASK}'
DataConfig.eval_split = 'validation'
experiment.train_config = @TrainConfig()
TrainConfig.num_steps = 40
TrainConfig.batch_size = 16
TrainConfig.length = 32
TrainConfig.log_every = 10
TrainConfig.eval_every = 40
TrainConfig.eval_steps = 2
TrainConfig.checkpoint_every = 40
experiment.optimizer_config = @OptimizerConfig()
OptimizerConfig.learning_rate = 3e-3
OptimizerConfig.warmup_steps = 0
OptimizerConfig.decay_style = 'constant'
"""


def _sentiment(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
  """'<subject> is <adjective>.' labelled 1 for a positive adjective; train and validation draw differently."""
  del shuffle_files, seed
  rng = np.random.default_rng(0 if split == "train" else 1)
  labels = rng.integers(0, 2, 400 if split == "train" else 40)
  sentences = [f"{rng.choice(SUBJECTS)} is {rng.choice(POSITIVE if y else NEGATIVE)}." for y in labels]
  return tf.data.Dataset.from_tensor_slices({"sentence": sentences, "label": labels})


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_sst2_is_registered_with_pets_pattern():
  assert "glm_sst2_cloze" in seqio.TaskRegistry.names()
  assert cloze.TEMPLATES["glm_sst2_cloze"] == finetune.SST2
  assert finetune.SST2.verbalizers == {0: "terrible", 1: "great"} and finetune.SST2.fields == ["sentence"]


@pytest.mark.slow
def test_fine_tuning_on_a_cloze_task_learns_the_verbalizers(tmp_path, clean_gin):
  if TASK not in seqio.TaskRegistry.names():
    finetune.register_cloze_task(
      TASK,
      seqio.FunctionDataSource(_sentiment, splits=("train", "validation")),
      cloze.ClozeTemplate("{sentence} It was really [MASK].", {0: "bad", 1: "good"}),
    )
  (tmp_path / "toy.gin").write_text(GIN)
  run = str(tmp_path / "run")
  summary = main.run(["train", f"--gin_file={tmp_path / 'toy.gin'}", f"--model_dir={run}"])
  assert summary["steps"] == 40
  result = main.run(["eval", f"--gin_file={tmp_path / 'toy.gin'}", f"--checkpoint={run}", "--cloze=0"])
  assert result["cloze_examples"] == 40
  assert result["cloze_accuracy"] >= 0.9, result
  assert result["loss"] == pytest.approx(summary["final_eval_loss"], rel=1e-6)
  # The same model untrained (num_steps=0 saves it as step 0) is near chance: the accuracy above was learnt.
  untrained = str(tmp_path / "untrained")
  main.run(["train", f"--gin_file={tmp_path / 'toy.gin'}", f"--model_dir={untrained}", "--gin.TrainConfig.num_steps=0"])
  baseline = main.run(["eval", f"--gin_file={tmp_path / 'toy.gin'}", f"--checkpoint={untrained}", "--cloze=0"])
  assert baseline["cloze_accuracy"] <= 0.8, baseline
