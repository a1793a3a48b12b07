"""An experiment (model, training, optimizer, mesh and data configs) and the `train` command's work on it.

    summary = experiment.train(model_dir, Experiment(model, train, optimizer, mesh, data))

Before anything is compiled or read: the model_dir must be writable, the data's vocabulary must fit the model and
be the checkpoint's own (the model_dir's when it resumes, `TrainConfig.init_checkpoint`'s when it starts from
one), and the data's vocabulary is kept with the model_dir (glm_jax/train/checkpoints.py). Then the seqio
pipelines of `data` feed glm_jax/train/loop.py.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import jax
from etils import epath

from glm_jax.model import GLMConfig
from glm_jax.train import checkpoints, inputs, loop, optimizer, partitioning

log = logging.getLogger(__name__)

OPERATIVE_CONFIG_FILE = "operative_config.gin"


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a training run is configured by (gin builds it: glm_jax/gin_config.py)."""

  model: GLMConfig
  train: loop.TrainConfig
  optimizer: optimizer.OptimizerConfig
  mesh: partitioning.MeshConfig
  data: inputs.DataConfig


def check_data_vocabulary(model_dir: str, exp: Experiment) -> object:
  """The data's vocabulary, once it is known to fit the model and to be the one of the checkpoint the run continues:
  the model_dir's own when it holds a checkpoint, else `init_checkpoint`'s (if set). Raises otherwise."""
  vocabulary = inputs.vocabulary(exp.data)
  inputs.check_fits_model(exp.data, exp.model.vocab_size)
  if checkpoints.latest_step(model_dir) is not None:
    checkpoints.check_vocabulary(model_dir, vocabulary)
  elif exp.train.init_checkpoint:
    checkpoints.check_vocabulary(exp.train.init_checkpoint, vocabulary)
  return vocabulary


def train(
  model_dir: str, exp: Experiment, *, operative_config: Callable[[], str] | None = None, progress: bool = True
) -> dict:
  """Trains `exp.model` on the seqio Task/Mixture of `exp.data` in `model_dir` (resuming it); see loop.train.

  `operative_config`, if given, returns the configuration text to keep as model_dir/operative_config.gin once the
  pipelines are built (gin's operative config: the bindings the run used)."""
  tc, data = exp.train, exp.data
  checkpoints.ensure_writable(model_dir)  # before any data is read or anything compiled
  vocabulary = check_data_vocabulary(model_dir, exp)
  checkpoints.save_vocabulary(model_dir, vocabulary)
  train_batches = inputs.batches(
    data,
    data.train_split,
    tc.batch_size,
    tc.length,
    repeat=True,
    shuffle=data.shuffle,
    checkpointable=data.checkpoint_input,
  )
  eval_batches = None
  if data.eval_split:

    def eval_batches():
      return inputs.batches(data, data.eval_split, tc.batch_size, tc.length, repeat=True, shuffle=False)

  if operative_config is not None and jax.process_index() == 0:
    (epath.Path(model_dir) / OPERATIVE_CONFIG_FILE).write_text(operative_config())  # local or gs://
  log.info("training %s on %s in %s", _describe(exp.model), data.mixture_or_task_name, model_dir)
  return loop.train(exp.model, tc, exp.optimizer, exp.mesh, train_batches, model_dir, eval_batches, progress=progress)


def _describe(config: GLMConfig) -> str:
  return (
    f"GLM ({config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads, "
    f"{config.vocab_size} vocabulary rows)"
  )


def format_summary(summary: dict, model_dir: str) -> str:
  """The line `train` ends with: steps, time, first and last losses, where the checkpoints are."""
  if summary["preempted"]:
    return f"preempted at step {summary['steps']}: checkpoint saved in {model_dir}; rerun the command to resume"
  losses = [f"loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}"] if summary["final_loss"] else []
  if summary["final_eval_loss"] is not None:
    losses.append(f"eval loss {summary['final_eval_loss']:.3f}")
  return (
    f"trained to step {summary['steps']} in {summary['seconds']:.0f} s: {', '.join(losses)}; checkpoints in {model_dir}"
  )
