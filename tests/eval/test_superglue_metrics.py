"""SuperGLUE metrics: hand-computed values on small tables, the reference's grouping and normalization, errors."""

import pytest
import seqio

from glm_jax.eval import superglue_metrics as m

E, C, N = m.CB_LABELS  # entailment, contradiction, neutral


def test_accuracy_is_the_fraction_of_predictions_equal_to_their_target():
  assert m.accuracy([0, 1, 1, 0, 1], [0, 1, 0, 0, 0]) == {"accuracy": pytest.approx(3 / 5)}
  assert m.accuracy(["true", "false"], ["true", "false"]) == {"accuracy": 1.0}
  assert m.accuracy(["true"], ["false"]) == {"accuracy": 0.0}


def test_cb_metrics_average_the_f1_of_each_class():
  targets = [E, E, E, E, C, C, N]
  predictions = [E, E, E, C, C, N, C]
  # entailment:    TP 3 (0, 1, 2), FP 0, FN 1 (3): precision 1, recall 3/4, F1 2 * 3/4 / (7/4) = 6/7
  # contradiction: TP 1 (4), FP 2 (3, 6), FN 1 (5): precision 1/3, recall 1/2, F1 2 * 1/6 / (5/6) = 2/5
  # neutral:       TP 0, FP 1 (5), FN 1 (6): F1 0
  # macro-F1 (6/7 + 2/5 + 0) / 3 = 44/105; accuracy 4/7 (0, 1, 2, 4)
  assert m.cb_metrics(targets, predictions) == {"accuracy": pytest.approx(4 / 7), "f1_macro": pytest.approx(44 / 105)}
  assert m.cb_metrics(targets, targets) == {"accuracy": 1.0, "f1_macro": 1.0}


def test_cb_metrics_average_every_listed_class_one_never_seen_counting_0():
  # class 0: TP 1, FP 0, FN 1: F1 2/3; class 1: TP 2, FP 1, FN 0: F1 4/5; class 2 in neither list: F1 0/0 := 0
  got = m.cb_metrics([0, 0, 1, 1], [0, 1, 1, 1], labels=(0, 1, 2))
  assert got == {"accuracy": pytest.approx(3 / 4), "f1_macro": pytest.approx((2 / 3 + 4 / 5) / 3)}


def test_cb_metrics_count_a_prediction_outside_the_labels_as_a_miss():
  # entailment: TP 1, FN 1 (the prediction "maybe"): F1 2/3; contradiction: TP 1: F1 1; neutral: F1 0
  got = m.cb_metrics([E, E, C], [E, "maybe", C])
  assert got == {"accuracy": pytest.approx(2 / 3), "f1_macro": pytest.approx((2 / 3 + 1) / 3)}


def test_cb_metrics_reject_targets_outside_the_labels():
  with pytest.raises(ValueError, match="not one of the labels"):
    m.cb_metrics([0, 1, 2], [0, 1, 2])  # label indices against the default label names


def _options(groups, values):
  return [{"group": g, "value": v} for g, v in zip(groups, values)]


def test_multirc_metrics_f1_over_all_options_and_exact_match_per_question():
  # Two questions, their options interleaved: "q1" has gold 1 0 1, all predicted right; ("p", 2) has gold 1 0 0,
  # predicted 0 1 1.
  groups = ["q1", ("p", 2), "q1", ("p", 2), "q1", ("p", 2)]
  gold = [1, 1, 0, 0, 1, 0]
  predicted = [1, 0, 0, 1, 1, 1]
  # TP 2 (both 1s of q1), FP 2 (the 2nd and 3rd options of ("p", 2)), FN 1 (its 1st): precision 1/2, recall 2/3,
  # F1a 2 * 1/3 / (7/6) = 4/7; EM: q1 right, ("p", 2) not: 1/2
  got = m.multirc_metrics(_options(groups, gold), _options(groups, predicted))
  assert got == {"f1a": pytest.approx(4 / 7), "em": pytest.approx(1 / 2)}


def test_multirc_exact_match_needs_every_option_of_a_question_right():
  groups = ["a", "a", "a", "b", "b"]
  gold = [0, 0, 1, 0, 0]
  predicted = [0, 0, 0, 0, 0]  # "a" misses one option; "b" all right with no positives
  # TP 0, FP 0, FN 1: F1a 0
  got = m.multirc_metrics(_options(groups, gold), _options(groups, predicted))
  assert got == {"f1a": 0.0, "em": pytest.approx(1 / 2)}


def test_multirc_metrics_reject_a_prediction_of_another_group():
  with pytest.raises(ValueError, match="group"):
    m.multirc_metrics(_options(["a", "b"], [1, 0]), _options(["a", "c"], [1, 0]))


def test_multirc_metrics_reject_target_values_other_than_0_and_1():
  with pytest.raises(ValueError, match="not 0 or 1"):
    m.multirc_metrics(_options(["a"], ["1"]), _options(["a"], [1]))


@pytest.mark.parametrize(
  "text, normalized",
  [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an apple\ta  day ", "apple day"),
    ("Theatre, Anna", "theatre anna"),  # articles only as whole words
    ("Café Crème", "cafe creme"),  # accents folded to ASCII
    ("\u201cHello\u201d \u2013 world's", "hello worlds"),  # curly quotes and dashes are punctuation
  ],
)
def test_normalize_answer(text, normalized):
  assert m.normalize_answer(text) == normalized


def test_token_f1_counts_repeated_tokens_once_per_match():
  # "new new york" against "new new": "new" twice in common, precision 2/3, recall 1, F1 4/5
  assert m.token_f1("New new York", "new new") == pytest.approx(4 / 5)
  # "new york new york" against "new york": each once in common, precision 2/4, recall 1, F1 2/3
  assert m.token_f1("New York, New York", "new york") == pytest.approx(2 / 3)
  assert m.token_f1("Paris", "London") == 0.0
  assert m.token_f1("The .", "a") == m.exact_match("The .", "a") == 1.0  # both empty once normalized


def test_record_metrics_take_the_best_gold_answer_of_each_question():
  targets = [
    ["Eiffel Tower", "the Eiffel Tower"],
    ["Paris", "Paris, France"],
    ["Barack Obama"],
    [],
    ["London", "the City of London"],
  ]
  predictions = ["The Eiffel Tower!", "France", "Obama Barack Hussein", "anything", "City of London."]
  # 1: "eiffel tower" against both golds: EM 1, F1 1
  # 2: "france" against "paris": 0; against "paris france": 1 common token, precision 1, recall 1/2, F1 2/3: EM 0
  # 3: 2 common tokens, precision 2/3, recall 1: F1 4/5, EM 0
  # 4: no gold answers: 0 and 0, counted
  # 5: "city of london" against "london": precision 1/3, recall 1, F1 1/2; against "city of london": EM 1, F1 1
  got = m.record_metrics(targets, predictions)
  assert got == {"em": pytest.approx(2 / 5), "f1": pytest.approx((1 + 2 / 3 + 4 / 5 + 0 + 1) / 5)}
  reordered = m.record_metrics([list(reversed(golds)) for golds in targets], predictions)
  assert reordered == pytest.approx(got)


def test_record_metrics_reject_a_string_target():
  with pytest.raises(ValueError, match="not a list of gold answers"):
    m.record_metrics(["Paris"], ["Paris"])


@pytest.mark.parametrize("fn", [m.accuracy, m.cb_metrics, m.multirc_metrics, m.record_metrics])
def test_empty_and_unequal_inputs_raise(fn):
  with pytest.raises(ValueError, match="no targets and predictions"):
    fn([], [])
  with pytest.raises(ValueError, match="1 targets but 0 predictions"):
    fn([{"group": 0, "value": 0}], [])


def test_metrics_name_seqio_predict_metric_fns_for_every_task():
  tasks = {"boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "sst2"}
  assert set(m.METRICS) == tasks
  assert m.METRICS["cb"] == [m.cb_metrics]
  assert m.METRICS["multirc"] == [m.multirc_metrics]
  assert m.METRICS["record"] == [m.record_metrics]
  for name in tasks - {"cb", "multirc", "record"}:
    assert m.METRICS[name] == [m.accuracy]
  # seqio sorts metric fns by their positional arguments: every one must be a (targets, predictions) function.
  source = seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["validation"])
  for name, fns in m.METRICS.items():
    task = seqio.Task(f"superglue_metrics_{name}", source, output_features={}, metric_fns=fns)
    assert list(task.predict_metric_fns) == fns
