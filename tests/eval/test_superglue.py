"""SuperGLUE evaluation: candidates scored in batches as alone, predictions turned into SuperGLUE's metrics."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np
import pytest

from glm_jax.data import superglue, superglue_sources
from glm_jax.data.example import SpecialIds
from glm_jax.eval import superglue as superglue_eval
from glm_jax.infer import scoring

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "superglue"
TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "sst2")


def _examples(task):
  task_dir = superglue_sources.WSC_NEGATIVE_DIR if task == "wsc" else None
  return [
    ex
    for split in ("train", "validation")
    for ex in superglue_sources.read_examples(task, str(FIXTURES), split, task_dir=task_dir)
  ]


def _long_copa(max_length):
  """A COPA example whose premise does not fit the row, with candidates of different lengths."""
  ex = _examples("copa")[0]
  premise = " ".join([ex.text_a.rstrip(".")] * max_length) + "."
  return dataclasses.replace(ex, text_a=premise, meta={**ex.meta, "choice1": "It rained.", "choice2": "The old "
                             "man had walked for many hours across the cold, wet fields of the valley."})  # fmt: skip


@pytest.fixture
def tiny(default_vocabulary_glm):
  vocabulary, model, params = default_vocabulary_glm(0, 256)
  return vocabulary, model, jax.tree.map(lambda x: 20.0 * x, params)  # large weights: scores that differ


def test_batched_scores_equal_each_candidate_scored_alone(tiny):
  vocabulary, model, params = tiny
  ids = SpecialIds.from_vocabulary(vocabulary)
  clozes = [
    *superglue_eval.questions("copa", _examples("copa"), 0),
    *superglue_eval.questions("rte", _examples("rte"), 0, multi_token=True),
    *superglue_eval.questions("boolq", _examples("boolq"), 4, multi_token=True),
  ]
  # A text too long for the row: each candidate's Part A is cut to leave room for its own span.
  long = superglue_eval.questions("copa", [_long_copa(model.config.max_length)], 0)[0]
  renders = superglue.render(long, vocabulary, ids, model.config.max_length)
  assert len({tuple(part_a) for part_a, _, _ in renders}) == 2, "the candidates' Part A should differ"
  clozes.append(long)
  batched = superglue_eval.candidate_scores(model, params, vocabulary, clozes, examples_per_call=16)
  one_by_one = superglue_eval.candidate_scores(model, params, vocabulary, clozes, examples_per_call=1)
  score = scoring.make_score_fn(model, params)
  for question, b, o in zip(clozes, batched, one_by_one):
    np.testing.assert_allclose(b, o, rtol=1e-4, atol=1e-4)
    # The slow oracle: one full forward pass per candidate row, its own Part A, [eop] scored (multi-token).
    alone = [
      score(scoring.candidate_rows(part_a, blank, [fill], ids, model.config.max_length, eop=True))[0]
      for part_a, blank, fill in superglue.render(question, vocabulary, ids, model.config.max_length)
    ]
    np.testing.assert_allclose(b, alone, rtol=1e-4, atol=1e-4)
  assert len({int(np.argmax(s)) for s in batched}) > 1, "a test of batching needs different predictions"


@pytest.mark.parametrize("task", TASKS)
def test_every_task_evaluates_to_its_superglue_metrics(task, tiny):
  vocabulary, model, params = tiny
  examples = _examples(task)
  result = superglue_eval.evaluate(model, params, vocabulary, task, examples, multi_token=True, examples_per_call=4)
  expected = {"cb": {"accuracy", "f1_macro"}, "multirc": {"f1a", "em"}, "record": {"em", "f1"}}.get(task, {"accuracy"})
  assert set(result) == expected | {"num_examples"} and result["num_examples"] == len(examples)
  assert all(0.0 <= result[k] <= 1.0 for k in expected)


@pytest.mark.parametrize("task", TASKS)
def test_predicting_the_gold_candidate_scores_every_metric_at_one(task):
  examples = _examples(task)
  clozes = superglue_eval.questions(task, examples, superglue.DEFAULT_PATTERNS[task], multi_token=True)
  if task == "record":
    gold = [list(ex.meta["candidates"]).index(ex.meta["answers"][0]) for ex in examples]
  elif task == "wsc":
    gold = [0 if ex.label == "True" else 1 for ex in examples]
  else:
    gold = [q.label for q in clozes]
  result = superglue_eval.metrics(task, examples, clozes, gold)
  assert all(v == 1.0 for v in result.values()), result
  if task in ("boolq", "rte", "wic", "sst2", "multirc"):
    wrong = superglue_eval.metrics(task, examples, clozes, [1 - g for g in gold])
    assert all(v < 1.0 for v in wrong.values()), wrong


def test_unlabelled_examples_are_refused():
  unlabelled = superglue_sources.read_examples("boolq", str(FIXTURES), "test")
  clozes = superglue_eval.questions("boolq", unlabelled, 0)
  with pytest.raises(ValueError, match="have no label; evaluate a labelled split"):
    superglue_eval.metrics("boolq", unlabelled, clozes, [0] * len(clozes))


def test_wsc_without_wrong_candidates_predicts_the_referent_where_greedy_decoding_writes_it(tiny):
  # The reference's generative WSC (config_tasks/task_wsc_generative.sh: the plain WSC files): span1 is predicted to
  # be the referent when the model's greedy fill is span1 and [eop] (tasks/language_model/finetune.py's classify).
  vocabulary, model, params = tiny
  ids = SpecialIds.from_vocabulary(vocabulary)
  read = superglue_sources.read_examples
  plain = [ex for split in ("train", "validation") for ex in read("wsc", str(FIXTURES), split)]
  clozes = superglue_eval.questions("wsc", plain, 2)
  assert all(len(q.candidates) == 1 for q in clozes) and {ex.label for ex in plain} == {"True", "False"}
  predicted = []
  for question in clozes:  # the oracle: one full forward pass, every target its argmax
    ((part_a, blank, fill),) = superglue.render(question, vocabulary, ids, model.config.max_length)
    rows = scoring.candidate_rows(part_a, blank, [fill], ids, model.config.max_length, eop=True)
    logits = model.apply({"params": params}, rows["input_ids"], rows["position_ids"], rows["block_position_ids"],
                         sep=rows["sep"][:, 0])  # fmt: skip
    best = np.argmax(np.asarray(logits[0, :, : model.config.vocab_size]), axis=-1)
    predicted.append(bool(np.all((best == rows["target_ids"][0]) | (rows["loss_mask"][0] == 0))))
  result = superglue_eval.evaluate(model, params, vocabulary, "wsc", plain, pattern_id=2)
  want = np.mean([p == (ex.label == "True") for p, ex in zip(predicted, plain)])
  assert result == {"accuracy": pytest.approx(want), "num_examples": len(plain)}
  always_referent = superglue_eval.metrics("wsc", plain, clozes, [0] * len(plain))["accuracy"]
  assert (result["accuracy"] != always_referent) or all(predicted), "one candidate is not always the prediction"
