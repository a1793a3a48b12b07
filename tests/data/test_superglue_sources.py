"""Tests for glm_jax.data.superglue_sources: the THUDM GLM reference's SuperGLUE examples, from jsonl and from TFDS.

The expected examples are written out by hand from the fixture lines (tests/fixtures/superglue/<TaskDir>/) and
the reference's processors (tasks/superglue/dataset.py).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from glm_jax.data import counters, superglue_sources as sg
from glm_jax.data.superglue_sources import SuperGlueExample as Ex

ROOT = str(pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "superglue")


@pytest.fixture(autouse=True)
def _fresh_counters():
  counters.reset()
  yield
  counters.reset()


def _read(task, split, **kwargs):
  return sg.read_examples(task, ROOT, split, **kwargs)


def test_labels_and_task_dirs_are_the_references():
  assert sg.LABELS == {
    "boolq": ["false", "true"],
    "cb": ["entailment", "contradiction", "neutral"],
    "copa": [0, 1],
    "multirc": [0, 1],
    "record": ["0", "1"],
    "rte": ["entailment", "not_entailment"],
    "wic": ["false", "true"],
    "wsc": ["False", "True"],
    "sst2": ["0", "1"],
  }
  assert sg.TASK_DIRS == {
    "boolq": "BoolQ",
    "cb": "CB",
    "copa": "COPA",
    "multirc": "MultiRC",
    "record": "ReCoRD",
    "rte": "RTE",
    "wic": "WiC",
    "wsc": "WSC",
    "sst2": "SST-2",
  }


def test_standardize_is_the_references_punctuation_standardization():
  assert sg.standardize("\u201cit\u2019s\u201d \u2018a\u2019 1\u20132 \u2014") == "\"it's\" 'a' 1-2 \u2014"


# Per task: the fixture files read as the reference reads them.


def test_boolq():
  assert _read("boolq", "train") == [
    Ex(
      "train-0",
      "On a clear day the sky appears blue because of Rayleigh scattering.",
      "is the sky blue on a clear day",
      "true",
      {},
    ),
    Ex("train-1", "A hot dog isn't a sandwich - it's a taco, some say.", 'is a "hot dog" a sandwich', "false", {}),
  ]
  assert _read("boolq", "validation") == [
    Ex("dev-0", "Paris is the capital and most populous city of France.", "is paris the capital of france", "true", {})
  ]
  assert _read("boolq", "test") == [Ex("test-0", "Penguins are flightless birds.", "can a penguin fly", None, {})]


def test_cb_string_idx_becomes_an_int_or_the_line_number():
  premise = "It was a complex language. Not written down but handed down. One might say it was peeled down."
  assert _read("cb", "train") == [
    Ex("train-0", premise, "the language was peeled down", "entailment", {}),
    Ex(
      "train-7",
      '"Do you mind if I use your phone?" Ronni asked. Sam didn\'t think she would.',
      "Sam would mind",
      "contradiction",
      {},
    ),
    Ex("train-2", "I don't know if Jenny was at the party.", "Jenny was at the party", "neutral", {}),
  ]
  assert _read("cb", "validation") == [
    Ex(
      "dev-0",
      "Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own portion of "
      "titanic anatomy to shaft?",
      "the figger chose his own portion of titanic anatomy to shaft",
      "contradiction",
      {},
    )
  ]


def test_rte():
  assert _read("rte", "train") == [
    Ex(
      "train-0",
      "No Weapons of Mass Destruction Found in Iraq Yet.",
      "Weapons of Mass Destruction Found in Iraq.",
      "not_entailment",
      {},
    ),
    Ex(
      "train-1",
      "A place of sorrow, after Pope John Paul II died, became a place of celebration.",
      "Pope John Paul II died.",
      "entailment",
      {},
    ),
  ]
  assert _read("rte", "validation") == [
    Ex(
      "dev-0",
      "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according "
      'to the "Christopher Reeve Foundation".',
      "Christopher Reeve had an accident.",
      "not_entailment",
      {},
    )
  ]


def test_copa_train_is_mirrored_after_all_examples_and_validation_is_not():
  shadow = {"choice1": "The sun was rising.", "choice2": "The grass was cut.", "question": "cause"}
  party = {"choice1": "She was bored.", "choice2": "She felt lonely.", "question": "effect"}
  premise = "The woman\u2019s \u201cfriend\u201d left the party early."  # not standardized, as in the reference
  assert _read("copa", "train") == [
    Ex("train-0", "My body cast a shadow over the grass.", None, 0, shadow),
    Ex("train-1", premise, None, 1, party),
    Ex(
      "train-0m",
      "My body cast a shadow over the grass.",
      None,
      1,
      {"choice1": "The grass was cut.", "choice2": "The sun was rising.", "question": "cause"},
    ),
    Ex(
      "train-1m", premise, None, 0, {"choice1": "She felt lonely.", "choice2": "She was bored.", "question": "effect"}
    ),
  ]
  assert _read("copa", "validation") == [
    Ex(
      "dev-100",
      "The man turned on the faucet.",
      None,
      1,
      {"choice1": "The toilet filled with water.", "choice2": "Water flowed from the spout.", "question": "effect"},
    )
  ]
  assert all(type(ex.label) is int for ex in _read("copa", "train"))


def test_multirc_is_one_example_per_question_and_answer():
  text = "<b>Sent 1: </b>Tom's dog ran to the park.<br><b>Sent 2: </b>It chased a red ball and a blue kite.<br>"

  def meta(p, q, a, answer):
    return {"passage_idx": p, "question_idx": q, "answer_idx": a, "answer": answer}

  examples = _read("multirc", "train")
  assert len(examples) == 6  # passage 0: 3 + 2 answers of two questions; passage 1: 1
  assert examples == [
    Ex("train-p0-q0-a0", text, "Where did Tom's dog run?", 1, meta(0, 0, 0, "To the park")),
    Ex("train-p0-q0-a1", text, "Where did Tom's dog run?", 0, meta(0, 0, 1, 'To the "beach"')),
    Ex("train-p0-q0-a2", text, "Where did Tom's dog run?", 1, meta(0, 0, 2, "The park")),
    Ex("train-p0-q1-a3", text, "What did the dog chase?", 1, meta(0, 1, 3, "A red ball")),
    Ex("train-p0-q1-a4", text, "What did the dog chase?", 0, meta(0, 1, 4, "A cat")),
    Ex("train-p1-q2-a5", "<b>Sent 1: </b>Ann sings.<br>", "Who sings?", 1, meta(1, 2, 5, "Ann")),
  ]
  sun = "<b>Sent 1: </b>The sun rises in the east.<br>"
  assert _read("multirc", "validation") == [
    Ex("dev-p0-q0-a0", sun, "Where does the sun rise?", 1, meta(0, 0, 0, "In the east")),
    Ex("dev-p0-q0-a1", sun, "Where does the sun rise?", 0, meta(0, 0, 1, "In the west")),
  ]


RECORD_TEXT = (
  "The Eiffel Tower in Paris was visited by Barack Obama. Obama praised France's food.\n"
  "- Obama visits Paris\n- The Eiffel Tower lit up"
)
RECORD_ENTITIES = ["Barack Obama", "Eiffel Tower", "France", "Obama", "Paris"]
RECORD_QUERY = '@placeholder said the tower was "beautiful".'
ALPHABET = [
  "Alpha",
  "Bravo",
  "Charlie",
  "Delta",
  "Echo",
  "Foxtrot",
  "Golf",
  "Hotel",
  "India",
  "Juliett",
  "Kilo",
  "Lima",
]


def _record_meta(passage, question, candidates, answers):
  return {"passage_idx": passage, "question_idx": question, "candidates": candidates, "answers": answers}


def test_record_train_is_one_example_per_distinct_answer_with_it_first():
  examples = _read("record", "train")
  assert len(examples) == 5  # query 0: two distinct answers ("Obama" twice); queries 1, 2 and 3: one each
  text = RECORD_TEXT
  assert examples[:4] == [
    Ex(
      "train-p0-q0-a0",
      text,
      RECORD_QUERY,
      "0",
      _record_meta(0, 0, ["Barack Obama", "Eiffel Tower", "France", "Paris"], ["Barack Obama"]),
    ),
    Ex(
      "train-p0-q0-a1",
      text,
      RECORD_QUERY,
      "0",
      _record_meta(0, 0, ["Obama", "Eiffel Tower", "France", "Paris"], ["Obama"]),
    ),
    Ex(
      "train-p0-q1-a0",
      text,
      "Obama toured the @placeholder at night.",
      "0",
      _record_meta(0, 1, ["Eiffel Tower", "Barack Obama", "France", "Obama", "Paris"], ["Eiffel Tower"]),
    ),
    # An answer that is no entity is kept, as candidate 0.
    Ex(
      "train-p0-q2-a0",
      text,
      "Later Obama went to the @placeholder museum.",
      "0",
      _record_meta(0, 2, ["Louvre", "Barack Obama", "Eiffel Tower", "France", "Obama", "Paris"], ["Louvre"]),
    ),
  ]
  # 11 other entities: the answer and 9 of them, chosen by a seeded shuffle.
  kilo = examples[4]
  assert (kilo.guid, kilo.text_a, kilo.text_b, kilo.label) == (
    "train-p1-q3-a0",
    "Alpha, Bravo, Charlie, Delta, Echo, Foxtrot, Golf, Hotel, India, Juliett, Kilo and Lima met.",
    "@placeholder arrived last.",
    "0",
  )
  assert set(kilo.meta) == {"passage_idx", "question_idx", "candidates", "answers"}
  assert (kilo.meta["passage_idx"], kilo.meta["question_idx"], kilo.meta["answers"]) == (1, 3, ["Kilo"])
  candidates = kilo.meta["candidates"]
  assert len(candidates) == 10 and candidates[0] == "Kilo" and len(set(candidates)) == 10
  assert set(candidates[1:]) < set(ALPHABET) - {"Kilo"}
  assert candidates[1:] != sorted(candidates[1:])  # shuffled, not the first 9 in order


def test_record_train_candidates_do_not_depend_on_the_hash_seed():
  code = (
    "import json, sys; from glm_jax.data import superglue_sources as sg; "
    "print(json.dumps([e.meta for e in sg.read_examples('record', sys.argv[1], 'train')]))"
  )
  outputs = set()
  for seed in ("1", "2", "3"):
    env = dict(os.environ, PYTHONHASHSEED=seed)
    result = subprocess.run([sys.executable, "-c", code, ROOT], env=env, capture_output=True, text=True, check=True)
    outputs.add(result.stdout)
  assert len(outputs) == 1
  assert json.loads(outputs.pop()) == [ex.meta for ex in _read("record", "train")]


def test_record_validation_and_test_are_one_example_per_query():
  assert _read("record", "validation") == [
    Ex("dev-p5-q0", RECORD_TEXT, RECORD_QUERY, "1", _record_meta(5, 0, RECORD_ENTITIES, ["Barack Obama", "Obama"]))
  ]
  assert _read("record", "test") == [
    Ex("test-p7-q9", RECORD_TEXT, "@placeholder smiled.", None, _record_meta(7, 9, RECORD_ENTITIES, []))
  ]


def test_wic():
  assert _read("wic", "train") == [
    Ex(
      "train-0",
      "Do you want to come over to my place later?",
      "A political system with no place for the less prominent groups.",
      "false",
      {"word": "place"},
    ),
    Ex(
      "train-1",
      "We beat the competition.",
      "Agassi beat Becker in the tennis championship's final.",
      "true",
      {"word": "beat"},
    ),
  ]
  assert _read("wic", "validation") == [
    Ex("dev-0", "Room and board.", "He nailed boards across the windows.", "false", {"word": "board"})
  ]
  assert _read("wic", "test") == [
    Ex("test-0", "It was a narrow defeat.", "The army's only defeat.", None, {"word": "defeat"})
  ]


MARK = "Mark told Pete many lies about himself, which Pete included in his book. He should have been more truthful."


def _spans(span1_text, span1_index, span2_text, span2_index, **more):
  return {
    "span1_text": span1_text,
    "span2_text": span2_text,
    "span1_index": span1_index,
    "span2_index": span2_index,
    **more,
  }


def test_wsc_train_keeps_true_examples_and_fixes_the_spans():
  assert _read("wsc", "train") == [
    # idx 0 is "False": dropped from train. Double spaces collapse.
    Ex("train-1", MARK, None, "True", _spans("Mark", 0, "He", 13)),
    # span1 one word late (matched without case) moves back; "it," is split into "it ,".
    Ex("train-2", "The cat outran the dog, but it , tired, stopped.", None, "True", _spans("the cat", 0, "it", 6)),
    # span2 one word late moves back; the span texts stay as in the file (not standardized).
    Ex(
      "train-3",
      "Sam's drawing was hung just above Tina's and it did look much better with another one below it.",
      None,
      "True",
      _spans("Sam\u2019s drawing", 0, "it", 8),
    ),
  ]


def test_wsc_validation_keeps_both_labels():
  text = "The trophy doesn't fit into the brown suitcase because it is too "
  assert _read("wsc", "validation") == [
    Ex("dev-10", text + "large.", None, "True", _spans("The trophy", 0, "it", 9)),
    Ex("dev-11", text + "small.", None, "False", _spans("The trophy", 0, "it", 9)),
  ]


def test_wsc_negative_candidates_are_deduplicated_and_grouped_by_nine_in_train():
  unique = ["Pete", "his book", "lies", "himself", "the lies", "book", "many lies", "his", "the book", "skeptical"]
  train = _read("wsc", "train", task_dir=sg.WSC_NEGATIVE_DIR)
  assert train == [
    Ex("train-1", MARK, None, "True", _spans("Mark", 0, "He", 13, candidates=unique[:9])),
    Ex("train-1", MARK, None, "True", _spans("Mark", 0, "He", 13, candidates=unique[9:] + unique[:8])),
    Ex(
      "train-2",
      "The cat outran the dog, but it , tired, stopped.",
      None,
      "True",
      _spans("the cat", 0, "it", 6, candidates=["the dog", "dog"]),
    ),
  ]
  assert _read("wsc", "validation", task_dir=sg.WSC_NEGATIVE_DIR) == [
    Ex("dev-20", MARK, None, "True", _spans("Mark", 0, "He", 13, candidates=unique))
  ]


def test_sst2():
  assert _read("sst2", "train") == [
    Ex("train-0", "hide new secretions from the parental units ", None, "0", {}),
    Ex("train-1", "contains no wit , only labored gags ", None, "0", {}),
    Ex(
      "train-2",
      "that loves its characters and communicates something rather beautiful about human nature ",
      None,
      "1",
      {},
    ),
  ]
  assert _read("sst2", "validation") == [Ex("dev-0", "it 's a charming and often affecting journey . ", None, "1", {})]
  assert _read("sst2", "test") == [Ex("test-0", "uneasy mishmash of styles and genres .", None, None, {})]


# Malformed input and missing files.


def _read_at(root, task, split, **kwargs):
  return sg.read_examples(task, str(root), split, **kwargs)


def _write(root, folder, name, lines):
  path = root / folder / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
  return path


def test_malformed_lines_are_skipped_counted_and_the_rest_is_read(tmp_path):
  good = {"question": "q", "passage": "p", "idx": 0, "label": True}
  _write(
    tmp_path,
    "BoolQ",
    "train.jsonl",
    [
      json.dumps(good),
      '{"question": "q", "passage": ',  # bad JSON
      json.dumps({"question": "q", "idx": 2, "label": True}),  # no passage
      json.dumps({"question": "q", "passage": "p", "idx": 3}),  # no label on a train line
      json.dumps({"question": "q", "passage": "p", "idx": 4, "label": "maybe"}),  # not a BoolQ label
      b'{"question": "\xff", "passage": "p", "idx": 5, "label": true}',  # invalid UTF-8
      json.dumps([1, 2]),  # not an object
      "",  # blank: no example, no count
      json.dumps(dict(good, idx=9, label=False)),
    ],
  )
  assert _read_at(tmp_path, "boolq", "train") == [
    Ex("train-0", "p", "q", "true", {}),
    Ex("train-9", "p", "q", "false", {}),
  ]
  assert counters.snapshot("superglue/") == {"superglue/boolq/malformed": 6}


def test_malformed_nested_records_skip_their_whole_line(tmp_path):
  answer = {"text": "a", "idx": 0, "label": 1}
  passage = {"text": "t", "questions": [{"question": "q", "idx": 0, "answers": [answer, {"text": "b", "idx": 1}]}]}
  _write(tmp_path, "MultiRC", "train.jsonl", [json.dumps({"idx": 0, "passage": passage})])
  wsc = {"text": "He left.", "target": {"span1_text": "x", "span1_index": 0, "span2_text": "she", "span2_index": 0}}
  _write(tmp_path, "WSC", "val.jsonl", [json.dumps(dict(wsc, idx=0, label=True))])  # the pronoun is not in the text
  _write(tmp_path, "SST-2", "train.tsv", [b"sentence\tlabel", b"good\t1", b"a\ttab\t0", b"bad\t2", b"fine\t0"])
  assert _read_at(tmp_path, "multirc", "train") == []
  assert _read_at(tmp_path, "wsc", "validation") == []
  assert _read_at(tmp_path, "sst2", "train") == [
    Ex("train-0", "good", None, "1", {}),
    Ex("train-3", "fine", None, "0", {}),
  ]
  assert counters.snapshot("superglue/") == {
    "superglue/multirc/malformed": 1,
    "superglue/sst2/malformed": 2,
    "superglue/wsc/malformed": 1,
  }


def test_a_missing_file_names_the_path_and_where_to_get_the_data(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    _read_at(tmp_path, "boolq", "validation")
  message = str(error.value)
  assert str(tmp_path / "BoolQ" / "val.jsonl") in message
  assert "https://super.gluebenchmark.com/tasks" in message and "\n" not in message
  # The task folder itself passed as the root: the message says to pass its parent.
  with pytest.raises(FileNotFoundError, match="pass its parent"):
    sg.read_examples("boolq", os.path.join(ROOT, "BoolQ"), "validation")
  with pytest.raises(FileNotFoundError, match="gluebenchmark.com/tasks"):
    _read_at(tmp_path, "sst2", "train")


def test_unknown_task_or_split_raises():
  with pytest.raises(ValueError, match="unknown SuperGLUE task"):
    sg.read_examples("axb", ROOT, "train")
  with pytest.raises(ValueError, match="unknown split"):
    sg.read_examples("boolq", ROOT, "dev")
  with pytest.raises(ValueError, match="unknown split"):
    sg.from_tfds("boolq", {}, split="dev")


# TFDS examples (as tfds.as_numpy yields them) give the examples of the jsonl line they mirror.


def _i(value):
  return np.int32(value)


def test_from_tfds_boolq_cb_rte_wic():
  boolq = {
    "question": "is a \u201chot dog\u201d a sandwich".encode(),
    "passage": "A hot dog isn\u2019t a sandwich \u2013 it\u2019s a taco, some say.".encode(),
    "idx": _i(1),
    "label": _i(0),
  }
  assert sg.from_tfds("boolq", boolq, split="train") == [_read("boolq", "train")[1]]
  test = {"question": b"can a penguin fly", "passage": b"Penguins are flightless birds.", "idx": _i(0), "label": _i(-1)}
  assert sg.from_tfds("boolq", test, split="test") == _read("boolq", "test")
  cb = {
    "premise": "\u201cDo you mind if I use your phone?\u201d Ronni asked. Sam didn\u2019t think she would.".encode(),
    "hypothesis": b"Sam would mind",
    "idx": _i(7),
    "label": _i(1),
  }
  assert sg.from_tfds("cb", cb, split="train") == [_read("cb", "train")[1]]
  rte = {
    "premise": b"No Weapons of Mass Destruction Found in Iraq Yet.",
    "idx": _i(0),
    "label": _i(1),
    "hypothesis": b"Weapons of Mass Destruction Found in Iraq.",
  }
  assert sg.from_tfds("rte", rte, split="train") == [_read("rte", "train")[0]]
  wic = {
    "word": b"beat",
    "sentence1": b"We beat the competition.",
    "idx": _i(1),
    "label": _i(1),
    "sentence2": "Agassi beat Becker in the tennis championship\u2019s final.".encode(),
    "start1": _i(3),
    "start2": _i(7),
    "end1": _i(7),
    "end2": _i(11),
  }
  assert sg.from_tfds("wic", wic, split="train") == [_read("wic", "train")[1]]


def test_from_tfds_copa_train_gives_the_example_and_its_mirror():
  copa = {
    "premise": "The woman\u2019s \u201cfriend\u201d left the party early.".encode(),
    "choice1": b"She was bored.",
    "choice2": b"She felt lonely.",
    "question": b"effect",
    "idx": _i(1),
    "label": _i(1),
  }
  train = _read("copa", "train")
  assert sg.from_tfds("copa", copa, split="train") == [train[1], train[3]]
  assert sg.from_tfds("copa", copa, split="validation") == [Ex("dev-1", train[1].text_a, None, 1, train[1].meta)]


def test_from_tfds_multirc_row_is_one_example():
  row = {
    "paragraph": "<b>Sent 1: </b>Tom\u2019s dog ran to the park.<br><b>Sent 2: </b>It chased a red ball and a "
    "blue kite.<br>".encode(),
    "question": "Where did Tom\u2019s dog run?".encode(),
    "answer": "To the \u201cbeach\u201d".encode(),
    "label": _i(0),
    "idx": {"paragraph": _i(0), "question": _i(0), "answer": _i(1)},
  }
  assert sg.from_tfds("multirc", row, split="train") == [_read("multirc", "train")[1]]
  row = dict(row, label=_i(-1))
  (example,) = sg.from_tfds("multirc", row, split="test")
  assert (example.guid, example.label) == ("test-p0-q0-a1", None)


def _record_features(passage_idx, query_idx, query, answers, passage=None, entities=None):
  passage = passage or (
    "The Eiffel Tower in Paris was visited by Barack Obama. Obama praised France\u2019s food.\n"
    "@highlight\nObama visits Paris\n@highlight\nThe Eiffel Tower lit up"
  )
  entities = entities or RECORD_ENTITIES
  return {
    "passage": passage.encode(),
    "query": query.encode(),
    "entities": np.array([e.encode() for e in entities], dtype=object),
    "answers": np.array([a.encode() for a in answers], dtype=object),
    "idx": {"passage": _i(passage_idx), "query": _i(query_idx)},
  }


def test_from_tfds_record_matches_every_split():
  query = "@placeholder said the tower was \u201cbeautiful\u201d."
  train = _read("record", "train")
  assert sg.from_tfds("record", _record_features(0, 0, query, ["Barack Obama", "Obama"]), split="train") == train[:2]
  kilo = _record_features(1, 3, "@placeholder arrived last.", ["Kilo"], passage=train[4].text_a, entities=ALPHABET)
  assert sg.from_tfds("record", kilo, split="train") == [train[4]]  # the same 9 shuffled candidates
  features = _record_features(5, 0, query, ["Barack Obama", "Obama"])
  assert sg.from_tfds("record", features, split="validation") == _read("record", "validation")
  features = _record_features(7, 9, "@placeholder smiled.", [])
  assert sg.from_tfds("record", features, split="test") == _read("record", "test")


def test_from_tfds_wsc():
  wsc = {
    "text": b"The cat outran the dog, but it, tired, stopped.",
    "span1_index": _i(1),
    "span2_index": _i(6),
    "span1_text": b"the cat",
    "span2_text": b"it",
    "idx": _i(2),
    "label": _i(1),
  }
  assert sg.from_tfds("wsc", wsc, split="train") == [_read("wsc", "train")[1]]
  assert sg.from_tfds("wsc", dict(wsc, label=_i(0)), split="train") == []  # "False" in train: dropped, as from the file
  (example,) = sg.from_tfds("wsc", dict(wsc, label=_i(-1)), split="test")
  assert (example.guid, example.label, "candidates" in example.meta) == ("test-2", None, False)


def test_from_tfds_sst2():
  row = {"sentence": b"contains no wit , only labored gags ", "label": _i(0), "idx": _i(1)}
  assert sg.from_tfds("sst2", row, split="train") == [_read("sst2", "train")[1]]


def test_from_tfds_malformed_example_is_counted():
  assert sg.from_tfds("boolq", {"question": b"q", "idx": _i(0), "label": _i(1)}, split="train") == []  # no passage
  assert sg.from_tfds("wsc", {"text": b"x", "idx": _i(0), "label": _i(1)}, split="train") == []
  assert counters.snapshot("superglue/") == {"superglue/boolq/malformed": 1, "superglue/wsc/malformed": 1}
