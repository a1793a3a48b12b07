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
  length_penalty: float = 0.0,
  examples_per_call: int = 16,
) -> dict[str, float]:
  """Accuracy of predicting each example's label as the verbalizer that fills the template's blank most likely.

  `examples`: dicts with the template's fields (str) and its label_key (int). Part A is tokenized and truncated
  as glm_jax.data.cloze's training pipeline does. Each call of glm_jax.infer.scoring.score_spans encodes the Part A
  of `examples_per_call` examples once and scores all their verbalizers over that cache (scores divided by the
  scored tokens ** length_penalty). Returns {"accuracy", "num_examples"}."""
  ids = SpecialIds.from_vocabulary(vocabulary)
  labels = template.labels()
  candidates = scoring.candidate_tokens(vocabulary, [template.verbalizers[label] for label in labels])
  length = model.config.max_length
  correct = total = 0

  def flush(prompts: list[list[int]], blanks: list[int], gold: list[int]) -> int:
    scores = scoring.score_spans(
      model, params, prompts, blanks, [candidates] * len(prompts), ids=ids, eop=eop, length_penalty=length_penalty
    )
    predicted = [labels[int(np.argmax(s))] for s in scores]
    return sum(int(p == g) for p, g in zip(predicted, gold))

  prompts, blanks, gold = [], [], []
  for example in examples:
    part_a, mask_position = cloze.part_a(template, example, vocabulary, ids, length, max(map(len, candidates)))
    prompts.append(part_a)
    blanks.append(mask_position)
    gold.append(int(example[template.label_key]))
    if len(prompts) == examples_per_call:
      correct, total = correct + flush(prompts, blanks, gold), total + len(prompts)
      prompts, blanks, gold = [], [], []
  if prompts:
    correct, total = correct + flush(prompts, blanks, gold), total + len(prompts)
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
