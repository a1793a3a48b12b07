"""SuperGLUE (and SST-2) metrics as seqio metric functions, with the semantics of the THUDM GLM reference.

Every function is called as seqio calls a Task's metric_fns, `fn(targets, predictions) -> dict[str, float]`, with
two lists of equal length (one entry per example), and returns fractions in [0, 1] (the reference reports
percentages: 100 times these). Empty or unequal-length inputs raise ValueError. `METRICS` names the functions of each
task, as the reference's `DEFAULT_METRICS` (tasks/superglue/finetune.py) does:

  accuracy         BoolQ, COPA, RTE, WiC, WSC, SST-2; CB with f1_macro. The fraction of predictions equal to their
                   target (tasks/eval_utils.py, `accuracy_metric`).
  cb_metrics       accuracy and macro-F1: the F1 of each of the three CB classes (each class in turn the positive
                   one), averaged (`f1_macro_metric`, sklearn's `f1_score(average="macro")`). A class with no true
                   positives, false positives or false negatives has F1 0 (sklearn's zero_division=0). The classes
                   are the `labels` argument, all of them averaged: sklearn without `labels`, as the reference calls
                   it, averages only the classes that occur in targets or predictions (the same for any evaluation
                   set that holds all three).
  multirc_metrics  F1a: the binary F1 over all answer options, label 1 the positive class (`f1_metric`); EM: the
                   fraction of questions whose answer options are all predicted right (tasks/superglue/evaluate.py,
                   `multirc_em`, which groups options by the question index that tasks/superglue/dataset.py's
                   MultiRC processor stores in each option's meta). The reference's "acc" over answer options is
                   `accuracy` of the values, not returned here.
  record_metrics   EM and F1: for each question the best exact match and the best token F1 of the predicted answer
                   over its gold answers, averaged over questions (evaluate.py, `qa_exact_match` and `qa_f1`, the
                   SQuAD script's `metric_max_over_ground_truths`). A question without gold answers scores 0 and
                   counts (the ReCoRD processor stores each question's answers in `meta["answers"]`).

ReCoRD answers are compared after evaluate.py's `normalize_answer`: lowercase, non-ASCII letters folded to ASCII,
punctuation removed, the articles a/an/the removed, whitespace collapsed. Two differences, on purpose: the reference
folds with the `unidecode` package, here NFKD decomposition drops accents ("é" to "e") and Unicode punctuation is
removed with ASCII punctuation (so curly quotes and dashes go as unidecode's ASCII forms would); other scripts are
kept as they are. And two answers that both normalize to no tokens (" The ." and "a") have token F1 1, as their exact
match is 1 (SQuAD 2.0's script); the reference's F1 gives them 0.
"""

from __future__ import annotations

import collections
import re
import string
import unicodedata
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

CB_LABELS = ("entailment", "contradiction", "neutral")  # the reference's CbProcessor.get_labels()

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


def _check(targets: Sequence, predictions: Sequence, name: str) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{name}: {len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    raise ValueError(f"{name}: no targets and predictions to score")


def _f1(true_positives: int, false_positives: int, false_negatives: int) -> float:
  """F1 = 2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall; 0 when there is nothing to count."""
  denominator = 2 * true_positives + false_positives + false_negatives
  return 2 * true_positives / denominator if denominator else 0.0


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """{"accuracy": the fraction of predictions equal (==) to their target}."""
  _check(targets, predictions, "accuracy")
  return {"accuracy": sum(bool(t == p) for t, p in zip(targets, predictions)) / len(targets)}


def cb_metrics(targets: Sequence, predictions: Sequence, *, labels: Sequence = CB_LABELS) -> dict[str, float]:
  """{"accuracy", "f1_macro": the mean over `labels` of each class's F1, that class the positive one}.

  Targets must be among `labels` (pass labels=(0, 1, 2) for label indices); a prediction outside them counts as a
  miss of its target's class."""
  _check(targets, predictions, "cb_metrics")
  unknown = [t for t in targets if t not in labels]
  if unknown:
    raise ValueError(f"cb_metrics: target {unknown[0]!r} is not one of the labels {list(labels)}")
  f1s = []
  for label in labels:
    tp = sum(t == label and p == label for t, p in zip(targets, predictions))
    fp = sum(t != label and p == label for t, p in zip(targets, predictions))
    fn = sum(t == label and p != label for t, p in zip(targets, predictions))
    f1s.append(_f1(tp, fp, fn))
  return {**accuracy(targets, predictions), "f1_macro": sum(f1s) / len(f1s)}


def multirc_metrics(targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """{"f1a": F1 over all answer options, label 1 positive; "em": the fraction of questions with every option right}.

  Targets and predictions are one dict per answer option, {"group": the question's id (hashable), "value": 0 or 1};
  options are grouped by the target's "group", and a prediction whose "group" differs from its target's raises
  ValueError."""
  _check(targets, predictions, "multirc_metrics")
  tp = fp = fn = 0
  question_right: dict[Hashable, bool] = {}
  for i, (target, prediction) in enumerate(zip(targets, predictions)):
    group, gold, predicted = target["group"], target["value"], prediction["value"]
    if prediction["group"] != group:
      raise ValueError(f"multirc_metrics: prediction {i} is of group {prediction['group']!r}, its target of {group!r}")
    if gold not in (0, 1):
      raise ValueError(f"multirc_metrics: target {i} has value {gold!r}, not 0 or 1")
    tp += gold == 1 and predicted == 1
    fp += gold != 1 and predicted == 1
    fn += gold == 1 and predicted != 1
    question_right[group] = question_right.get(group, True) and bool(gold == predicted)
  return {"f1a": _f1(tp, fp, fn), "em": sum(question_right.values()) / len(question_right)}


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
  """Lowercase, fold accents to ASCII, remove punctuation, then the articles a/an/the, and collapse whitespace."""
  text = unicodedata.normalize("NFKD", text.lower())
  text = "".join(
    ch
    for ch in text
    if not unicodedata.combining(ch) and ch not in string.punctuation and not unicodedata.category(ch).startswith("P")
  )
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
  """1.0 when the two answers are equal after normalize_answer, else 0.0."""
  return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
  """The F1 of the normalized answers' tokens (the multiset overlap); 1.0 when both have no tokens."""
  predicted_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
  if not predicted_tokens or not gold_tokens:
    return float(predicted_tokens == gold_tokens)
  same = sum((collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)).values())
  return _f1(same, len(predicted_tokens) - same, len(gold_tokens) - same)


def record_metrics(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """{"em", "f1"}: the mean over questions of the best exact_match and the best token_f1 over the gold answers.

  Each target is the list of one question's gold answers (a question without any scores 0); each prediction is the
  predicted answer string."""
  _check(targets, predictions, "record_metrics")
  em = f1 = 0.0
  for i, (golds, prediction) in enumerate(zip(targets, predictions)):
    if isinstance(golds, str):
      raise ValueError(f"record_metrics: target {i} is the string {golds!r}, not a list of gold answers")
    em += max((exact_match(prediction, gold) for gold in golds), default=0.0)
    f1 += max((token_f1(prediction, gold) for gold in golds), default=0.0)
  return {"em": em / len(targets), "f1": f1 / len(targets)}


METRICS: dict[str, list[MetricFn]] = {
  "boolq": [accuracy],
  "cb": [cb_metrics],
  "copa": [accuracy],
  "multirc": [multirc_metrics],
  "record": [record_metrics],
  "rte": [accuracy],
  "wic": [accuracy],
  "wsc": [accuracy],
  "sst2": [accuracy],
}
