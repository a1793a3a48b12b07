"""The `eval` command's work: a checkpoint's loss and accuracy on an experiment's eval split, and cloze accuracy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from glm_jax.data import superglue
from glm_jax.eval import cloze as cloze_eval, superglue as superglue_eval
from glm_jax.model import GLM
from glm_jax.train import checkpoints, inputs, loop, partitioning
from glm_jax.train.experiment import Experiment

log = logging.getLogger(__name__)


def cloze_metrics(exp: Experiment, split: str, cloze_examples: int) -> Callable[[Any], dict[str, float]]:
  """params -> the `cloze_*` metrics of the experiment's cloze Task on the first `cloze_examples` examples of `split`
  (0: all): for a SuperGLUE Task (tasks/superglue.py) SuperGLUE's metrics of its candidates
  (glm_jax.eval.superglue), for another cloze Task (glm_jax.data.cloze) the accuracy of its verbalizers. The
  examples are read once. The params are scored where they lie (on their mesh, split over its data x fsdp devices,
  on one process or many: glm_jax.infer.scoring), every process scoring all the examples together. Raises ValueError
  for a Task that is not a cloze Task."""
  name = exp.data.mixture_or_task_name
  model, vocabulary = GLM(exp.model), inputs.vocabulary(exp.data)
  registered = superglue.REGISTERED.get(name)
  if registered is not None:
    examples = registered.examples(split)
    examples = examples[:cloze_examples] if cloze_examples else examples
    pattern, multi_token = registered.settings()

    def superglue_metrics(params) -> dict[str, float]:
      scored = superglue_eval.evaluate(
        model, params, vocabulary, registered.task, examples, pattern_id=pattern,
        multi_token=multi_token,
      )  # fmt: skip
      return {f"cloze_{k}": v for k, v in scored.items()}

    return superglue_metrics
  template = cloze_eval.task_template(name)
  examples = list(cloze_eval.task_examples(name, split, cloze_examples))

  def template_metrics(params) -> dict[str, float]:
    scored = cloze_eval.cloze_accuracy(model, params, vocabulary, template, examples)
    return {"cloze_accuracy": scored["accuracy"], "cloze_examples": scored["num_examples"]}

  return template_metrics


def training_hook(exp: Experiment, cloze_examples: int | None) -> Callable[[Any], dict[str, float]] | None:
  """The evaluation `train` runs at every `eval_every` besides the loss (loop.train's eval_hook): the cloze metrics
  of the eval split (`cloze_metrics`) for a SuperGLUE Task always (all its examples unless `cloze_examples`), for
  another cloze Task with `cloze_examples`; None without an eval split or for other Tasks."""
  name = exp.data.mixture_or_task_name
  if name not in superglue.REGISTERED and cloze_examples is None:
    return None
  if not exp.data.eval_split:
    if cloze_examples is not None:
      raise ValueError("train --cloze evaluates the eval split: bind DataConfig.eval_split (e.g. 'validation')")
    return None
  return cloze_metrics(exp, exp.data.eval_split, cloze_examples or 0)


def evaluate(checkpoint: str, exp: Experiment, cloze_examples: int | None = None) -> dict[str, float]:
  """Loss and accuracy of `checkpoint`'s params on `exp.train.eval_steps` batches of the experiment's eval split
  (its data, batch size and length; the model is `exp.model`, which must fit the checkpoint, and the data's
  vocabulary must be the checkpoint's own): the batches the training loop evaluates on, so a run's final checkpoint
  gives its final eval loss again.

  With `cloze_examples` (a cloze Task), also the cloze metrics of the first `cloze_examples` examples of the split
  (0: all; `cloze_metrics`), as `cloze_<metric>`; a split with no loss rows (ReCoRD's validation examples have no
  one right candidate; test splits) then gives those alone, as does `TrainConfig.eval_steps=0` (the training
  recipes' setting for a split whose rows do not fit the training layout, e.g. WSC's)."""
  tc, data = exp.train, exp.data
  if not data.eval_split:
    raise ValueError("the experiment has no eval split: bind DataConfig.eval_split (e.g. 'validation')")
  if not tc.eval_steps and cloze_examples is None:
    raise ValueError("TrainConfig.eval_steps=0 evaluates no loss: pass --cloze=N, or bind eval_steps to at least 1")
  metrics = None if cloze_examples is None else cloze_metrics(exp, data.eval_split, cloze_examples)
  vocabulary = inputs.vocabulary(data)
  inputs.check_fits_model(data, exp.model.vocab_size)
  checkpoints.check_vocabulary(checkpoint, vocabulary)
  model, mesh = GLM(exp.model), partitioning.make_mesh(exp.mesh)
  params, shardings = loop.restore_sharded_params(model, checkpoint, mesh, tc.length)
  result = {}
  if tc.eval_steps:
    batches = inputs.eval_batches(data, data.eval_split, tc.batch_size, tc.length)
    result = loop.evaluate(model, params, shardings, mesh, batches, tc.eval_steps, tc.loss, required=metrics is None)
    if not result:
      log.info("no loss on %s's %s split: it gives no loss rows", data.mixture_or_task_name, data.eval_split)
  if metrics is not None:
    result.update(metrics(params))
  return result
