"""Seq2seq (summarization) examples as the THUDM reference's tasks/seq2seq/dataset.py builds them.

One example is one GLM row with one blank:
  Part A  [CLS], the blank ([sMASK] for a model trained with the task mask, GLMConfig.task_mask: GLM-2B/10B and the
          Chinese models; [MASK] otherwise), the tokens of " Content:", then the source tokenized with a leading
          space, cut so that Part A holds at most `max_src_length` tokens. No [eos]. Part A is not padded: the
          reference pads it to `max_src_length` before it takes `sep`, so its real tokens attend to the padding (a
          bug not copied).
  Part B  [sop] + the target tokenized with a leading space, its targets the target's tokens + [eop], cut to
          `max_tgt_length` positions (a cut target loses its [eop], as the reference's does).
`part_a` alone is what evaluation decodes from (glm_jax.infer.generate fills its blank).

Sources: the reference's plain-text layout, `<dir>/{train,val,test}.source` and `.target`, one example a line
(`read_plain_text`; any user dataset in that layout), with the reference's text clean-up: punctuation
standardization for every dataset, and the detokenization of its `gigaword` task (PTB brackets, `UNK`). An example
whose source or target line is empty is skipped and counted (`seq2seq/<name>/skipped`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from glm_jax.data import counters, example as example_lib
from glm_jax.data.example import SpecialIds
from glm_jax.data.superglue_sources import standardize  # the reference's punctuation_standardization

PROMPT = " Content:"
SPLITS = ("train", "validation", "test")
SPLIT_FILES = {"train": "train", "validation": "val", "test": "test"}  # the reference's file names
MASKS = ("[MASK]", "[sMASK]")


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A summarization dataset's reference settings (config_tasks/seq_*.sh): lengths and beam search."""

  tfds_name: str
  tfds_fields: tuple[str, str]  # (source, target)
  max_src_length: int
  max_tgt_length: int
  num_beams: int
  length_penalty: float
  min_tgt_length: int
  no_repeat_ngram_size: int = 3


# config_tasks/seq_cnndm_org.sh (the cnn_dm_original task: no detokenization), seq_xsum.sh, seq_gigaword.sh.
DATASETS = {
  "cnn_dailymail": Dataset("cnn_dailymail", ("article", "highlights"), 608, 160, 5, 0.7, 55),
  "xsum": Dataset("xsum", ("document", "summary"), 608, 60, 6, 1.0, 10),
  "gigaword": Dataset("gigaword", ("document", "summary"), 192, 32, 5, 0.6, 0),
}


@dataclasses.dataclass(frozen=True)
class RegisteredTask:
  """A seqio Task of seq2seq rows (tasks/seq2seq.py registers them): its dataset name, its (source, target) pairs
  per split, and its current (mask, max_src_length, max_tgt_length), so evaluation decodes the Part A training
  saw."""

  dataset: str
  pairs: Callable[[str], list[tuple[str, str]]]
  settings: Callable[[], tuple[str, int, int]]
  decode: Callable[[], dict]  # DecodeOptions fields that override the dataset's reference beam search


REGISTERED: dict[str, RegisteredTask] = {}  # seqio Task name -> what it reads

_GIGAWORD_BRACKETS = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}"}
_GIGAWORD_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">"}


def gigaword_detokenize(text: str) -> str:
  """The reference's gigaword_detokenize: `UNK` and `<unk>` to `[UNK]`, PTB brackets and HTML entities back."""
  text = text.replace("UNK", "[UNK]").replace("<unk>", "[UNK]")
  for token, character in {**_GIGAWORD_BRACKETS, **_GIGAWORD_ENTITIES}.items():
    text = text.replace(token, character)
  return text


DETOKENIZERS = {"gigaword": gigaword_detokenize}


def clean(text: str, dataset: str) -> str:
  """A source or target line as the reference reads it: stripped, punctuation standardized, detokenized for
  `gigaword`."""
  text = standardize(text.strip())
  detokenize = DETOKENIZERS.get(dataset)
  return detokenize(text) if detokenize else text


def part_a(source: str, vocabulary, ids: SpecialIds, *, mask: str, max_src_length: int) -> list[int]:
  """Part A of a source text (see the module docstring): its blank is at index 1."""
  if mask not in MASKS:
    raise ValueError(f"the seq2seq blank is one of {MASKS}; got {mask!r}")
  prompt = [ids.cls, ids.mask if mask == "[MASK]" else ids.smask, *vocabulary.encode(PROMPT)]
  room = max_src_length - len(prompt)
  if room < 1:
    raise ValueError(f"max_src_length={max_src_length} leaves no room for the source after the prompt {prompt}")
  return prompt + list(vocabulary.encode(" " + source))[:room]


def example(
  source: str, target: str, vocabulary, ids: SpecialIds, *, mask: str, max_src_length: int, max_tgt_length: int
) -> tuple[dict[str, np.ndarray], bool, bool]:
  """The training row of (source, target), and whether the source and the target were cut."""
  if max_tgt_length < 2:
    raise ValueError(f"max_tgt_length={max_tgt_length}: Part B needs at least [sop] and one token")
  a = part_a(source, vocabulary, ids, mask=mask, max_src_length=max_src_length)
  source_cut = 2 + len(vocabulary.encode(PROMPT)) + len(vocabulary.encode(" " + source)) > max_src_length
  tokens = list(vocabulary.encode(" " + target))
  row = example_lib.from_spans(a, [(1, tokens[:max_tgt_length])], ids)
  target_cut = len(tokens) + 1 > max_tgt_length  # tokens + [eop] do not fit
  if target_cut:  # the reference's (tokens + [eop])[:max_tgt_length]: no [eop]
    row = {name: values[: len(a) + max_tgt_length] for name, values in row.items()}
  return row, source_cut, target_cut


def read_plain_text(directory: str, split: str, dataset: str) -> list[tuple[str, str]]:
  """(source, target) pairs of `<directory>/<split file>.source` / `.target` (split: train, validation -> val,
  test), cleaned as the reference cleans `dataset`'s lines. Raises FileNotFoundError naming a missing file and
  ValueError when the two files' line counts differ."""
  if split not in SPLIT_FILES:
    raise ValueError(f"split {split!r}: expected one of {SPLITS}")
  paths = [os.path.join(directory, f"{SPLIT_FILES[split]}.{side}") for side in ("source", "target")]
  for path in paths:
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"{path} does not exist: the seq2seq data directory holds {{train,val,test}}.source and .target, one "
        f"example a line"
      )
  sides = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      sides.append(f.read().splitlines())
  if len(sides[0]) != len(sides[1]):
    raise ValueError(f"{paths[0]} has {len(sides[0])} lines but {paths[1]} has {len(sides[1])}: one example a line")
  pairs = []
  for source, target in zip(*sides):
    source, target = clean(source, dataset), clean(target, dataset)
    if not source or not target:
      counters.increment(f"seq2seq/{dataset}/skipped")
      continue
    pairs.append((source, target))
  return pairs
