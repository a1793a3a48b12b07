"""SuperGLUE (and SST-2) evaluation as the THUDM reference's cloze evaluation, with SuperGLUE's metrics.

Each example becomes a cloze question (glm_jax.data.superglue: the reference's pattern `pattern_id`), every candidate
is scored as the blank's fill by glm_jax.infer.scoring.score_spans (Part A encoded once per example into the key/value
cache, all candidates of `examples_per_call` examples in one batched pass), and the best-scoring candidate is the
prediction:
  - single-token questions (the verbalizers of BoolQ, CB, MultiRC, RTE, WiC, SST-2 by default): the candidate's
    log-probability at the blank's [sop], as the reference's GLMForSingleTokenCloze reads it;
  - multi-token questions (COPA, ReCoRD, WSC, or `multi_token=True`): the summed log-probability of the candidate's
    tokens and the closing [eop], as GLMForMultiTokenClozeFast does (no length penalty, the reference's default).
A text too long for the row is truncated per candidate, as the reference does (superglue.render): a multi-token
candidate's Part A leaves room for its own span, so a shorter candidate may see a few more tokens; candidates whose
Part A is the same share one prompt.

Metrics (glm_jax.eval.superglue_metrics): accuracy; CB accuracy and macro-F1; MultiRC F1a and exact match grouped by
question; ReCoRD F1 and exact match against every gold answer; WSC: accuracy of "span1 is the referent" against the
True/False label, predicted with the candidates of the WSC-negative files as "span1 scores best", and without them
(the reference's generative WSC, config_tasks/task_wsc_generative.sh) as "greedy decoding writes span1 and [eop]"
(scoring.score_spans' `greedy`, the reference's classify_evaluate).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glm_jax.data import superglue
from glm_jax.data.example import SpecialIds
from glm_jax.eval import superglue_metrics
from glm_jax.infer import scoring
from glm_jax.model import GLM


def questions(task: str, examples: Sequence, pattern_id: int, multi_token: bool = False) -> list[superglue.Cloze]:
  """The cloze question of every example."""
  return [superglue.cloze(task, ex, pattern_id, multi_token) for ex in examples]


def candidate_scores(
  model: GLM,
  params,
  vocabulary,
  clozes: Sequence[superglue.Cloze],
  *,
  examples_per_call: int = 16,
  greedy: bool = False,
) -> list[np.ndarray]:
  """Each question's candidate scores, float [candidates] (see the module docstring); with `greedy` 1.0 where greedy
  decoding writes the candidate (and its [eop] for a multi-token question), else 0.0."""
  ids = SpecialIds.from_vocabulary(vocabulary)
  length = model.config.max_length
  out = [np.zeros(len(q.candidates), np.float64) for q in clozes]
  for start in range(0, len(clozes), examples_per_call):
    group = range(start, min(start + examples_per_call, len(clozes)))
    for multi in (False, True):  # single-token questions are scored without [eop], multi-token ones with it
      # One prompt per distinct Part A: all of a question's candidates share it unless its text had to be cut
      # (superglue.render fits Part A to each candidate's span, as the reference does).
      prompts, blanks, fills, where = [], [], [], []
      for i in group:
        if clozes[i].multi_token != multi:
          continue
        by_part_a: dict[tuple[int, ...], tuple[int, list, list]] = {}
        for c, (part_a, blank, fill) in enumerate(superglue.render(clozes[i], vocabulary, ids, length)):
          entry = by_part_a.setdefault(tuple(part_a), (blank, [], []))
          entry[1].append(fill)
          entry[2].append(c)
        for part_a, (blank, candidate_fills, indices) in by_part_a.items():
          prompts.append(list(part_a))
          blanks.append(blank)
          fills.append(candidate_fills)
          where.append((i, indices))
      for (i, indices), s in zip(where, scoring.score_spans(model, params, prompts, blanks, fills, ids=ids, eop=multi,
                                                                       greedy=greedy)):  # fmt: skip
        out[i][indices] = np.asarray(s)
  return out


def _labelled(task: str, clozes: Sequence[superglue.Cloze]) -> None:
  missing = sum(q.label is None for q in clozes)
  if missing:
    raise ValueError(f"{task}: {missing} of {len(clozes)} examples have no label; evaluate a labelled split")


def metrics(task: str, examples: Sequence, clozes: Sequence[superglue.Cloze], predicted: Sequence[int]) -> dict:
  """SuperGLUE's metrics of the predicted candidate indices (glm_jax.eval.superglue_metrics); for WSC, 0 is "span1
  is the referent", anything else (e.g. -1: greedy decoding does not write it) is not."""
  if task == "record":
    golds = [list(ex.meta["answers"]) for ex in examples]
    answers = [ex.meta["candidates"][p] for ex, p in zip(examples, predicted)]
    return superglue_metrics.record_metrics(golds, answers)
  if task == "wsc":
    gold = [ex.label == "True" for ex in examples]
    return superglue_metrics.accuracy(gold, [p == 0 for p in predicted])
  _labelled(task, clozes)
  gold = [q.label for q in clozes]
  if task == "multirc":
    groups = [(ex.meta["passage_idx"], ex.meta["question_idx"]) for ex in examples]
    return superglue_metrics.multirc_metrics(
      [{"group": g, "value": v} for g, v in zip(groups, gold)],
      [{"group": g, "value": int(p)} for g, p in zip(groups, predicted)],
    )
  if task == "cb":
    return superglue_metrics.cb_metrics(gold, list(predicted), labels=(0, 1, 2))
  return superglue_metrics.accuracy(gold, list(predicted))


def evaluate(
  model: GLM,
  params,
  vocabulary,
  task: str,
  examples: Sequence,
  *,
  pattern_id: int | None = None,
  multi_token: bool = False,
  examples_per_call: int = 16,
) -> dict[str, float]:
  """The SuperGLUE metrics of `params` on `examples` (glm_jax.data.superglue_sources examples of `task`) under the
  reference's pattern `pattern_id` (default: the one its fine-tuning script uses), plus num_examples."""
  if not examples:
    raise ValueError(f"{task}: no examples to evaluate")
  pattern = superglue.DEFAULT_PATTERNS[task] if pattern_id is None else pattern_id
  clozes = questions(task, examples, pattern, multi_token)
  # A WSC question without wrong candidates (the plain WSC files): is span1 what greedy decoding writes?
  alone = [i for i, q in enumerate(clozes) if task == "wsc" and len(q.candidates) == 1]
  ranked = sorted(set(range(len(clozes))) - set(alone))
  predicted = [0] * len(clozes)
  for indices, greedy in ((ranked, False), (alone, True)):
    chosen = [clozes[i] for i in indices]
    scores = candidate_scores(model, params, vocabulary, chosen, examples_per_call=examples_per_call, greedy=greedy)
    for i, s in zip(indices, scores):
      predicted[i] = (0 if s[0] else -1) if greedy else int(np.argmax(s))
  return {**metrics(task, examples, clozes, predicted), "num_examples": float(len(examples))}
