"""Cloze classification accuracy: every verbalizer scored as the blank's fill, the most likely one predicted."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import seqio

from glm_jax.data import cloze
from glm_jax.data.example import SpecialIds
from glm_jax.infer import scoring
from glm_jax.model import GLM


def cloze_accuracy(
  model: GLM,
  params,
  vocabulary,
  template: cloze.ClozeTemplate,
  examples: Iterable[Mapping[str, Any]],
  eop: bool = False,
  length_normalized: bool = False,
  examples_per_call: int = 16,
) -> dict[str, float]:
  """Accuracy of predicting each example's label as the verbalizer that fills the template's blank most likely.

  `examples`: dicts with the template's fields (str) and its label_key (int). Part A is tokenized and truncated
  as glm_jax.data.cloze's training pipeline does. The candidate rows of `examples_per_call` examples run as one
  batch at the model's max_length (one compilation; the last batch is padded with copies of its last example).
  Returns {"accuracy", "num_examples"}."""
  ids = SpecialIds.from_vocabulary(vocabulary)
  labels = template.labels()
  candidates = scoring.candidate_tokens(vocabulary, [template.verbalizers[label] for label in labels])
  score = scoring.make_score_fn(model, params)
  length = model.config.max_length
  correct = total = 0

  def flush(batch: list[dict[str, np.ndarray]], gold: list[int]) -> int:
    padded = batch + [batch[-1]] * (examples_per_call - len(batch))
    rows = {name: np.concatenate([r[name] for r in padded]) for name in padded[0]}
    scores = scoring.normalized(score(rows), rows, length_normalized).reshape(examples_per_call, len(labels))
    predicted = [labels[i] for i in np.argmax(scores[: len(batch)], axis=-1)]
    return sum(int(p == g) for p, g in zip(predicted, gold))

  batch, gold = [], []
  for example in examples:
    part_a, mask_position = cloze.part_a(template, example, vocabulary, ids, length, max(map(len, candidates)))
    batch.append(scoring.candidate_rows(part_a, mask_position, candidates, ids, length, eop=eop))
    gold.append(int(example[template.label_key]))
    if len(batch) == examples_per_call:
      correct, total, batch, gold = correct + flush(batch, gold), total + len(batch), [], []
  if batch:
    correct, total = correct + flush(batch, gold), total + len(batch)
  if not total:
    raise ValueError("cloze_accuracy got no examples")
  return {"accuracy": correct / total, "num_examples": float(total)}


def task_examples(task_name: str, split: str, num_examples: int | None = None) -> Iterator[dict[str, Any]]:
  """The labelled source examples of a cloze Task's split (the first `num_examples`, or all), strings decoded."""
  task = seqio.get_mixture_or_task(task_name)
  raw = task.source.get_dataset(split=split, shuffle=False)
  if num_examples:
    raw = raw.take(num_examples)
  for ex in raw.as_numpy_iterator():
    yield {k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()}


def task_template(task_name: str) -> cloze.ClozeTemplate:
  """The template a cloze Task was registered with (tasks/finetune.py); ValueError for any other Task."""
  template = cloze.TEMPLATES.get(task_name)
  if template is None:
    raise ValueError(f"{task_name!r} is not a cloze Task (registered: {sorted(cloze.TEMPLATES)})")
  return template
