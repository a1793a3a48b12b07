"""SuperGLUE examples as the THUDM GLM reference reads them (tasks/superglue/dataset.py, its `*Processor`s).

What is read: the official SuperGLUE distribution (https://super.gluebenchmark.com/tasks), unzipped under one
root folder so that `<root>/<TaskDir>/{train,val,test}.jsonl` exist (TaskDir in `TASK_DIRS`: BoolQ, CB, ...);
`read_examples(task, root, split)` takes that root. Splits: "train" reads train.jsonl, "validation" val.jsonl,
"test" test.jsonl. SST-2 (the reference's GLUE `Sst2Processor`) reads `<root>/SST-2/{train,dev,test}.tsv`.
`from_tfds(task, features, split=split)` builds the same examples from one TFDS `super_glue/<task>` (or
`glue/sst2`) example as `tfds.as_numpy` yields it.

Each example holds what the reference's InputExample holds (`idx`, `logits` and `num_choices` are not kept; the
guid carries the idx). "std(x)" below is the reference's punctuation_standardization: curly quotes to straight
ones, the en dash to "-". The guid's set type is the reference's: "train", "dev" (for validation), "test".

  boolq    a line -> 1: text_a std(passage), text_b std(question), label "true"/"false", meta {}.
  cb, rte  a line -> 1: text_a std(premise), text_b std(hypothesis), label the jsonl string, meta {}; an idx that
           is a string is made an int, or the line's number (0-based) if it is not one.
  copa     a line -> 1: text_a premise (not standardized: the reference does it when encoding), text_b None,
           label 0/1 (int), meta {choice1, choice2, question}; train only: after all the lines, one mirror of
           each example (guid + "m", choices swapped, label flipped).
  multirc  a line -> one example per (question, answer): text_a std(passage text), text_b std(question), label
           0/1 (int), meta {passage_idx, question_idx, answer_idx, answer: std(answer text)}.
  record   a line -> per query: train: one example per distinct gold answer, candidates [answer] + up to 9 other
           entities (those not among the answers), label "0"; validation/test: one example, candidates all
           entities, answers all gold answers, label "1" (None for test). text_a std(passage) with
           "@highlight\\n" replaced by "- ", text_b std(query), meta {passage_idx, question_idx, candidates,
           answers}. Entities: the distinct std(passage[start:end + 1]) of the entity spans, sorted. A train query
           whose answer is not an entity is kept (the answer is candidate 0 all the same).
  wic      a line -> 1: text_a std(sentence1), text_b std(sentence2), label "true"/"false", meta {word}.
  wsc      a line -> 1 (train: only label "True" lines, as the reference does under --cloze-eval, which all its
           SuperGLUE scripts pass): text_a std(text) split on whitespace and joined by single spaces, with the
           span indices fixed as the reference fixes them (a span one word off is moved onto its words; a
           pronoun glued to what follows it, e.g. "it.", is split off: "it ."), text_b None, label
           "True"/"False", meta {span1_text, span2_text (both as in the file, not standardized), span1_index,
           span2_index (fixed)} and, where the line has "candidates", meta candidates: their texts, duplicates
           dropped, in order. Train lines with more than 9 candidates give one example per 9 of them (the last
           group filled up from the first candidates), all with the same guid.
  sst2     a row -> 1: text_a std(sentence), text_b None, label "0"/"1" (string), meta {}; guid "<set>-<row>".

WSC negatives: GLM's cross-entropy ("mix" loss, --wsc-negative) recipe (config_tasks/task_wsc.sh) reads the
whole task from another folder, `<root>/WSC-negative/{train,val,test}.jsonl` (same file names; the lines also
carry "candidates": [{"text": ...}, ...], wrong referents); the GLM repository neither ships nor describes these
files, and they are not part of SuperGLUE. Read them with `read_examples("wsc", root, split,
task_dir=WSC_NEGATIVE_DIR)`. TFDS has no candidates, so `from_tfds("wsc", ...)` never has meta candidates.

Reference behaviours deliberately not copied:
  * ReCoRD train candidates: with more than 9 non-answer entities the reference shuffles them with one
    random.Random(42) shared by the whole file, so which 9 an example gets depends on every earlier line; here a
    fresh random.Random(guid) per example picks them, so a line gives the same example from the file, from TFDS
    (whose order differs) or alone.
  * ReCoRD answers: the reference orders the distinct gold answers as a Python set does, which changes with the
    string hash seed from run to run (and with it the train guids' answer number); here they are sorted (TFDS
    sorts them too).
  * Labels on lines without one: the reference makes WiC "false" and ReCoRD evaluation "1" on test lines; here
    a test example without a gold label has label None. A train or validation line without its label, or with
    a ReCoRD query without answers, is malformed here; the reference would keep it with a made-up label (a
    ReCoRD query: no train example, an evaluation one nobody can get right).
  * A malformed line (invalid UTF-8 or JSON, a missing field, a label not in `LABELS`, a WSC pronoun not found
    at its index) crashes the reference, when read or when encoded; here it is skipped, logged and counted as
    `superglue/<task>/malformed` (glm_jax.data.counters), and the rest of the file is read. A MultiRC or ReCoRD
    line is skipped whole (all its questions) if any part is malformed. Blank lines are skipped without a count
    (they hold no example).
  * Not read: few-shot `dev32.jsonl` (--few-superglue), `unlabeled.jsonl`, ReCoRD's train-style expansion of the
    dev set (`for_train`), the "wsc1" task variant, and WSC train without --cloze-eval (which keeps "False" lines).
  * from_tfds of COPA train gives each example followed by its mirror (one TFDS example at a time), not all
    mirrors after all examples. Use super_glue/wsc, not wsc.fixed (which rewrites span texts the reference reads
    as they are).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from glm_jax.data import counters

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SuperGlueExample:
  """One reference InputExample: guid, text_a, text_b, label and meta as the reference stores them for the task."""

  guid: str
  text_a: str
  text_b: str | None
  label: str | int | None
  meta: Mapping[str, object]


# Each task's `get_labels()` in the reference (COPA and MultiRC: ints; the others: strings).
LABELS: dict[str, list] = {
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
# The task folders of the SuperGLUE distribution (SST-2: of the GLUE one).
TASK_DIRS: dict[str, str] = {
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
WSC_NEGATIVE_DIR = "WSC-negative"  # GLM's WSC with negative candidates (see the module docstring)
SPLITS = ("train", "validation", "test")
SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
SST2_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
SET_TYPES = {"train": "train", "validation": "dev", "test": "test"}  # the reference's set types, in guids
RECORD_TRAIN_CANDIDATES = 10  # the answer and at most 9 other entities (max_train_candidates_per_question)
WSC_CANDIDATES_PER_EXAMPLE = 9

_STANDARD_PUNCTUATION = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2019": "'", "\u2018": "'", "\u2013": "-"})


class _Malformed(ValueError):
  """A line the reader skips and counts."""


def standardize(text: str) -> str:
  """The reference's punctuation_standardization: curly double and single quotes to straight ones, "\u2013" to "-"."""
  return text.translate(_STANDARD_PUNCTUATION)


def _check_task(task: str) -> None:
  if task not in TASK_DIRS:
    raise ValueError(f"unknown SuperGLUE task {task!r}; expected one of {sorted(TASK_DIRS)}")


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _label(task: str, record: Mapping, set_type: str, convert: Callable = lambda x: x):
  """The record's label made the reference's value; None on a test line without one; malformed otherwise."""
  if "label" not in record:
    if set_type == "test":
      return None
    raise _Malformed("no label")
  label = convert(record["label"])
  allowed = LABELS[task]
  if not any(label == value and type(label) is type(value) for value in allowed):
    raise _Malformed(f"label {record['label']!r} is not one of {allowed}")
  return label


def _text(value) -> str:
  if not isinstance(value, str):
    raise _Malformed(f"expected a string, got {type(value).__name__}")
  return value


# One builder per task: a jsonl record (a dict) -> the examples of that line, in the reference's order.


def _boolq(record: Mapping, set_type: str, line: int | None) -> list[SuperGlueExample]:
  label = _label("boolq", record, set_type, lambda x: str(x).lower())
  passage, question = standardize(_text(record["passage"])), standardize(_text(record["question"]))
  return [SuperGlueExample(f"{set_type}-{record['idx']}", passage, question, label, {})]


def _premise_hypothesis(task: str) -> Callable:
  def build(record: Mapping, set_type: str, line: int | None) -> list[SuperGlueExample]:
    idx = record["idx"]
    if isinstance(idx, str):
      try:
        idx = int(idx)
      except ValueError:
        idx = line
    label = _label(task, record, set_type)
    premise, hypothesis = standardize(_text(record["premise"])), standardize(_text(record["hypothesis"]))
    return [SuperGlueExample(f"{set_type}-{idx}", premise, hypothesis, label, {})]

  return build


def _copa(record: Mapping, set_type: str, line: int | None) -> list[SuperGlueExample]:
  label = _label("copa", record, set_type)
  meta = {key: _text(record[key]) for key in ("choice1", "choice2", "question")}
  return [SuperGlueExample(f"{set_type}-{record['idx']}", _text(record["premise"]), None, label, meta)]


def _copa_mirror(example: SuperGlueExample) -> SuperGlueExample:
  """The reference's train augmentation: the choices swapped, the label flipped (anything but 0 becomes 0)."""
  meta = {"choice1": example.meta["choice2"], "choice2": example.meta["choice1"], "question": example.meta["question"]}
  return SuperGlueExample(example.guid + "m", example.text_a, None, 1 if example.label == 0 else 0, meta)


def _multirc(record: Mapping, set_type: str, line: int | None) -> list[SuperGlueExample]:
  passage_idx = record["idx"]
  text = standardize(_text(record["passage"]["text"]))
  examples = []
  for question_json in record["passage"]["questions"]:
    question = standardize(_text(question_json["question"]))
    question_idx = question_json["idx"]
    for answer_json in question_json["answers"]:
      answer_idx = answer_json["idx"]
      meta = {
        "passage_idx": passage_idx,
        "question_idx": question_idx,
        "answer_idx": answer_idx,
        "answer": standardize(_text(answer_json["text"])),
      }
      label = _label("multirc", answer_json, set_type)
      guid = f"{set_type}-p{passage_idx}-q{question_idx}-a{answer_idx}"
      examples.append(SuperGlueExample(guid, text, question, label, meta))
  return examples


def _record_examples(
  set_type: str, passage_idx, text: str, entities: Iterable[str], queries: Iterable[tuple[object, str, object]]
) -> list[SuperGlueExample]:
  """ReCoRD examples of one passage; `queries`: (query idx, query, gold answer texts or None if absent)."""
  entities = sorted({standardize(_text(entity)) for entity in entities})
  text = standardize(text).replace("@highlight\n", "- ")
  examples = []
  for question_idx, query, answer_texts in queries:
    question = standardize(_text(query))
    if not answer_texts and set_type != "test":
      raise _Malformed(f"query {question_idx} has no answers")
    answers = sorted({standardize(_text(answer)) for answer in answer_texts or ()})
    meta = {"passage_idx": passage_idx, "question_idx": question_idx}
    if set_type != "train":
      label = None if set_type == "test" else "1"
      meta |= {"candidates": entities, "answers": answers}
      examples.append(SuperGlueExample(f"{set_type}-p{passage_idx}-q{question_idx}", text, question, label, meta))
      continue
    for answer_idx, answer in enumerate(answers):
      guid = f"{set_type}-p{passage_idx}-q{question_idx}-a{answer_idx}"
      others = [entity for entity in entities if entity not in answers]
      if len(others) > RECORD_TRAIN_CANDIDATES - 1:
        random.Random(guid).shuffle(others)
        others = others[: RECORD_TRAIN_CANDIDATES - 1]
      example_meta = meta | {"candidates": [answer, *others], "answers": [answer]}
      examples.append(SuperGlueExample(guid, text, question, "0", example_meta))
  return examples


def _record(record: Mapping, set_type: str, line: int | None) -> list[SuperGlueExample]:
  passage = record["passage"]
  text = _text(passage["text"])
  entities = [text[span["start"] : span["end"] + 1] for span in passage["entities"]]
  queries = [
    (qa["idx"], qa["query"], [answer["text"] for answer in qa["answers"]] if "answers" in qa else None)
    for qa in record["qas"]
  ]
  return _record_examples(set_type, record["idx"], text, entities, queries)


def _wic(record: Mapping, set_type: str, line: int | None) -> list[SuperGlueExample]:
  idx = record["idx"]
  if isinstance(idx, str):
    idx = int(idx)
  label = _label("wic", record, set_type, lambda x: "true" if x else "false")
  meta = {"word": _text(record["word"])}
  sentence1, sentence2 = standardize(_text(record["sentence1"])), standardize(_text(record["sentence2"]))
  return [SuperGlueExample(f"{set_type}-{idx}", sentence1, sentence2, label, meta)]


def _unique(values: Iterable[str]) -> list[str]:
  """The values without repeats, in first-seen order."""
  return list(dict.fromkeys(values))


def _wsc(record: Mapping, set_type: str, line: int | None) -> list[SuperGlueExample]:
  idx = record["idx"]
  label = _label("wsc", record, set_type, str)
  target = record["target"]
  span1_text, span2_text = _text(target["span1_text"]), _text(target["span2_text"])
  span1_index, span2_index = int(target["span1_index"]), int(target["span2_index"])
  candidates = _unique(_text(c["text"]) for c in record["candidates"]) if "candidates" in record else None

  # The reference's index fixes, with Python's indexing as it has it (a -1 offset at index 0 wraps around).
  words = standardize(_text(record["text"])).split()
  lower = [word.lower() for word in words]
  span1_words = span1_text.lower().split()
  width = len(span1_words)
  if lower[span1_index : span1_index + width] != span1_words:
    for offset in (-1, 1):
      if lower[span1_index + offset : span1_index + width + offset] == span1_words:
        span1_index += offset
  try:
    if words[span2_index] != span2_text:
      for offset in (-1, 1):
        if words[span2_index + offset] == span2_text:
          span2_index += offset
      word = words[span2_index]
      if word != span2_text and word.startswith(span2_text):
        words[span2_index : span2_index + 1] = [span2_text, word[len(span2_text) :]]
    found = words[span2_index]
  except IndexError:
    found = None
  if found != span2_text:
    raise _Malformed(f"pronoun {span2_text!r} not at word {span2_index} (found {found!r})")

  if set_type == "train" and label != "True":
    return []
  guid, text = f"{set_type}-{idx}", " ".join(words)
  meta = {"span1_text": span1_text, "span2_text": span2_text, "span1_index": span1_index, "span2_index": span2_index}
  size = WSC_CANDIDATES_PER_EXAMPLE
  if candidates is not None and set_type == "train" and len(candidates) > size:
    groups = [candidates[i : i + size] for i in range(0, len(candidates), size)]
    groups = [group + candidates[: size - len(group)] for group in groups]
    return [SuperGlueExample(guid, text, None, label, meta | {"candidates": group}) for group in groups]
  if candidates is not None:
    meta["candidates"] = candidates
  return [SuperGlueExample(guid, text, None, label, meta)]


def _sst2(record: Mapping, set_type: str, line: int | None) -> list[SuperGlueExample]:
  """`record`: one tsv row as {column: value} plus "idx", its data row number (0-based, blank lines not counted)."""
  label = _label("sst2", record, set_type, str)
  return [SuperGlueExample(f"{set_type}-{record['idx']}", standardize(_text(record["sentence"])), None, label, {})]


_BUILDERS: dict[str, Callable[[Mapping, str, int | None], list[SuperGlueExample]]] = {
  "boolq": _boolq,
  "cb": _premise_hypothesis("cb"),
  "copa": _copa,
  "multirc": _multirc,
  "record": _record,
  "rte": _premise_hypothesis("rte"),
  "wic": _wic,
  "wsc": _wsc,
  "sst2": _sst2,
}
_ERRORS = (ValueError, KeyError, TypeError, IndexError, AttributeError)  # ValueError covers JSON and UTF-8 errors


def _malformed(task: str, where: str, error: Exception) -> None:
  counters.increment(f"superglue/{task}/malformed")
  log.warning("skipping malformed %s example at %s: %s: %s", task, where, type(error).__name__, error)


def read_examples(task: str, directory: str, split: str, *, task_dir: str | None = None) -> list[SuperGlueExample]:
  """The reference's examples of `task` ("boolq", ..., "wsc", "sst2") for `split` ("train", "validation", "test").

  `directory` is the root holding the task folders (`<directory>/BoolQ/val.jsonl`, ...), not a task folder;
  `task_dir` replaces the task's folder name (e.g. WSC_NEGATIVE_DIR). Raises FileNotFoundError if the file is
  missing; malformed lines are skipped and counted (`superglue/<task>/malformed`), the rest is read.
  """
  _check_task(task)
  _check_split(split)
  folder = task_dir or TASK_DIRS[task]
  filename = (SST2_FILES if task == "sst2" else SPLIT_FILES)[split]
  path = os.path.join(directory, folder, filename)
  if not os.path.isfile(path):
    raise FileNotFoundError(_missing_file_message(task, directory, folder, filename, path))
  set_type = SET_TYPES[split]
  with open(path, "rb") as f:
    lines = f.read().splitlines()
  examples = _read_tsv(lines, set_type, path) if task == "sst2" else _read_jsonl(task, lines, set_type, path)
  if task == "copa" and split == "train":
    examples += [_copa_mirror(example) for example in examples]
  return examples


def _missing_file_message(task: str, directory: str, folder: str, filename: str, path: str) -> str:
  if task == "sst2":
    data, example = "the GLUE data (https://gluebenchmark.com/tasks)", "dev.tsv"
  else:
    data, example = "the SuperGLUE data (https://super.gluebenchmark.com/tasks)", "val.jsonl"
  message = f"{path} does not exist: download {data} and unzip it so that {os.path.join(directory, folder, example)}"
  message += " exists"
  message += f"; `directory` is the folder that holds the task folders ({folder}, ...), not a task folder"
  if os.path.isfile(os.path.join(directory, filename)):
    message += f" (found {filename} in {directory} itself: pass its parent)"
  return message


def _read_jsonl(task: str, lines: Sequence[bytes], set_type: str, path: str) -> list[SuperGlueExample]:
  examples = []
  for number, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line.decode("utf-8"))
      if not isinstance(record, dict):
        raise _Malformed("not a JSON object")
      examples += _BUILDERS[task](record, set_type, number)
    except _ERRORS as error:
      _malformed(task, f"{path}:{number + 1}", error)
  return examples


def _read_tsv(lines: Sequence[bytes], set_type: str, path: str) -> list[SuperGlueExample]:
  """A GLUE tsv file: a header row, then tab-separated rows (no quoting, as the reference reads it)."""
  examples, header, row_number = [], None, 0
  for number, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      fields = line.decode("utf-8").split("\t")
    except UnicodeDecodeError as error:
      _malformed("sst2", f"{path}:{number + 1}", error)
      if header is not None:
        row_number += 1
      continue
    if header is None:
      header = fields
      continue
    try:
      if len(fields) != len(header):
        raise _Malformed(f"{len(fields)} fields, the header has {len(header)}")
      examples += _sst2(dict(zip(header, fields)) | {"idx": row_number}, set_type, number)
    except _ERRORS as error:
      _malformed("sst2", f"{path}:{number + 1}", error)
    row_number += 1
  return examples


# TFDS: one example as tfds.as_numpy yields it -> the jsonl record it came from -> the same builders.


def _python(value):
  """bytes -> str, numpy scalars -> Python ones, arrays -> lists, dicts recursively."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_python(v) for v in value.tolist()] if value.ndim else _python(value.item())
  if isinstance(value, np.generic):
    return _python(value.item())
  if isinstance(value, Mapping):
    return {key: _python(v) for key, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_python(v) for v in value]
  return value


def _tfds_label(features: Mapping, names: Sequence | None) -> dict:
  """{"label": the jsonl value} for a TFDS ClassLabel int (`names`: its class names; None: keep the int); {} for -1."""
  label = features["label"]
  if label == -1:
    return {}
  return {"label": label if names is None else names[label]}


def _tfds_record(task: str, f: Mapping) -> dict:
  """The jsonl record of one TFDS example (for MultiRC: a passage with the one question and answer of the row)."""
  if task == "boolq":
    return {"idx": f["idx"], "passage": f["passage"], "question": f["question"], **_tfds_label(f, [False, True])}
  if task in ("cb", "rte"):
    return {"idx": f["idx"], "premise": f["premise"], "hypothesis": f["hypothesis"], **_tfds_label(f, LABELS[task])}
  if task == "copa":
    keys = ("idx", "premise", "choice1", "choice2", "question")
    return {key: f[key] for key in keys} | _tfds_label(f, None)  # ClassLabel choice1/choice2 = 0/1, as in jsonl
  if task == "multirc":
    answer = {"text": f["answer"], "idx": f["idx"]["answer"], **_tfds_label(f, None)}
    question = {"question": f["question"], "idx": f["idx"]["question"], "answers": [answer]}
    return {"idx": f["idx"]["paragraph"], "passage": {"text": f["paragraph"], "questions": [question]}}
  if task == "wic":
    keys = ("idx", "word", "sentence1", "sentence2")
    return {key: f[key] for key in keys} | _tfds_label(f, [False, True])
  if task == "wsc":
    target = {key: f[key] for key in ("span1_text", "span2_text", "span1_index", "span2_index")}
    return {"idx": f["idx"], "text": f["text"], "target": target, **_tfds_label(f, [False, True])}
  if task == "sst2":
    return {"idx": f["idx"], "sentence": f["sentence"], **_tfds_label(f, None)}
  raise AssertionError(task)


def from_tfds(task: str, features: Mapping[str, object], *, split: str) -> list[SuperGlueExample]:
  """The reference's examples of one TFDS `super_glue/<task>` (SST-2: `glue/sst2`) example of `split`.

  `split` is required (keyword-only): the guid and, for ReCoRD, WSC and COPA, the expansion depend on it.
  `features` as `tfds.as_numpy` yields them (bytes strings, numpy ints, ClassLabel ints with -1 on test, ReCoRD's
  `entities`/`answers` as arrays of bytes). The result equals `read_examples` of the jsonl line it came from
  (COPA train: the example and its mirror; WSC train: [] for a "False" example; MultiRC: the one example of the
  row). TFDS lacks the WSC negative candidates (meta never has "candidates"). A malformed example gives [] and
  is counted as `superglue/<task>/malformed`.
  """
  _check_task(task)
  _check_split(split)
  set_type = SET_TYPES[split]
  try:
    f = _python(features)
    if task == "record":
      queries = [(f["idx"]["query"], f["query"], f["answers"])]
      examples = _record_examples(set_type, f["idx"]["passage"], _text(f["passage"]), f["entities"], queries)
    else:
      examples = _BUILDERS[task](_tfds_record(task, f), set_type, None)
  except _ERRORS as error:
    _malformed(task, "a TFDS example", error)
    return []
  if task == "copa" and split == "train":
    examples += [_copa_mirror(example) for example in examples]
  return examples
