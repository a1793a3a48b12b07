"""Classification as cloze filling (GLM's fine-tuning, after PET): a pattern with one blank and a verbalizer.

A `ClozeTemplate` turns a labelled example into a text with one [MASK] and the label into its verbalizer, e.g.
for SST-2: pattern "{sentence} It was really [MASK]." and verbalizers {0: "terrible", 1: "great"}.

Training: `cloze_preprocessor` makes the GLM blank-infilling example of the filled pattern whose one span is the
verbalizer (Part A: [CLS] + the pattern with [MASK]; Part B: [sop] + verbalizer, targets verbalizer + [eop]),
the same features as pretraining, so the feature converter, packing and train step are the pretraining ones.
Evaluation: glm_jax.eval.cloze scores every verbalizer as the blank's fill (glm_jax.infer.scoring) and predicts
the most likely.

A text too long for the row loses tokens from the start of the text before the blank (the pattern's words next
to the blank and everything after it are kept); an example whose label has no verbalizer fails the pipeline.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from glm_jax.data import counters, example as example_lib
from glm_jax.data.example import DTYPES, FEATURES, SpecialIds

MASK = "[MASK]"
TEMPLATES: dict[str, "ClozeTemplate"] = {}  # Task name -> its template (tasks/finetune.py registers them)


@dataclasses.dataclass(frozen=True)
class ClozeTemplate:
  """pattern: text with `{field}` references to the example's string features and one "[MASK]";
  verbalizers: label value -> the words that fill the blank for it; label_key: the example's label feature."""

  pattern: str
  verbalizers: Mapping[int, str]
  label_key: str = "label"

  def __post_init__(self):
    if self.pattern.count(MASK) != 1:
      raise ValueError(f"the pattern {self.pattern!r} needs exactly one {MASK}")
    if not self.verbalizers or not all(v.strip() for v in self.verbalizers.values()):
      raise ValueError(f"every label needs a non-empty verbalizer; got {dict(self.verbalizers)}")

  @property
  def fields(self) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(self.pattern) if name]

  def labels(self) -> list[int]:
    return sorted(self.verbalizers)

  def text(self, example: Mapping[str, str]) -> str:
    """The pattern filled from a Python example (evaluation)."""
    return self.pattern.format(**{name: example[name] for name in self.fields})

  def text_tf(self, example: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """The filled pattern's text before and after the blank, as scalar tf.strings (the pipeline)."""
    pieces = []
    for literal, name, _, _ in string.Formatter().parse(self.pattern):
      pieces.append(tf.constant(literal))
      if name:
        pieces.append(tf.strings.strip(example[name]))
    text = tf.strings.join(pieces)
    parts = tf.strings.split(text, MASK, maxsplit=1)
    return tf.strings.strip(parts[0]), tf.strings.strip(parts[1])


def _verbalizer_table(template: ClozeTemplate) -> tf.lookup.StaticHashTable:
  keys = tf.constant(template.labels(), tf.int64)
  values = tf.constant([template.verbalizers[k] for k in template.labels()])
  return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value="")


def cloze_part_a(
  before: Sequence[int], after: Sequence[int], ids: SpecialIds, max_length: int, answer_length: int
) -> tuple[list[int], int, bool]:
  """(Part A, its blank's position, whether it was truncated) for the text before and after the blank, filled with
  an answer of `answer_length` tokens in a row of `max_length`: [CLS], the text before (its start cut to fit),
  [MASK], the text after. The pipeline (training) and the scorer (evaluation) both build Part A here."""
  budget = max_length - 3 - answer_length - len(after)  # [CLS], [MASK] and [sop]; [eop] closes the answer's span
  if budget < 0:
    raise ValueError(
      f"the fill and the pattern after the blank need {max_length - budget} tokens; the row has {max_length}"
    )
  truncated = len(before) > budget
  before = list(before)[len(before) - budget :] if truncated else list(before)
  return [ids.cls, *before, ids.mask, *after], 1 + len(before), truncated


def _example_fn(max_length: int, ids: SpecialIds):
  """The numpy function: (tokens before the blank, verbalizer tokens, tokens after) -> one example's features."""

  def make(before, answer, after):
    counters.increment("cloze/examples")
    part_a, blank, truncated = cloze_part_a(before.tolist(), after.tolist(), ids, max_length, answer.size)
    counters.increment("cloze/truncated", int(truncated))
    example = example_lib.from_spans(part_a, [(blank, answer.tolist())], ids)
    return tuple(example[name] for name in FEATURES)

  return make


def cloze_preprocessor(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int] | None,
  output_features: Mapping[str, seqio.Feature],
  template: ClozeTemplate,
) -> tf.data.Dataset:
  """Labelled examples -> GLM examples whose blank is the label's verbalizer (a seqio preprocessor once
  `template` is bound)."""
  if not sequence_length or "input_ids" not in sequence_length:
    raise ValueError(
      "the cloze preprocessor needs a sequence length: pass task_feature_lengths="
      "glm_jax.data.feature_converter.task_feature_lengths(L) to seqio.get_dataset"
    )
  vocabulary = output_features["input_ids"].vocabulary
  make = _example_fn(int(sequence_length["input_ids"]), SpecialIds.from_vocabulary(vocabulary))
  table = _verbalizer_table(template)
  out_types = [tf.as_dtype(DTYPES[name]) for name in FEATURES]

  def to_example(ex):
    label = tf.cast(ex[template.label_key], tf.int64)
    verbalizer = table.lookup(label)
    tf.debugging.assert_none_equal(verbalizer, "", message=f"a label has no verbalizer in {template}")
    before, after = template.text_tf(ex)
    tokens = [tf.cast(vocabulary.encode_tf(t), tf.int32) for t in (before, verbalizer, after)]
    features = tf.numpy_function(make, tokens, out_types, stateful=False)
    for values in features:
      values.set_shape([None])
    return dict(zip(FEATURES, features))

  return dataset.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)


def part_a(
  template: ClozeTemplate, example: Mapping[str, str], vocabulary, ids: SpecialIds, max_length: int, answer_length: int
) -> tuple[list[int], int]:
  """(Part A token ids, the blank's position in them) of a Python example, tokenized and truncated as the
  pipeline does for a fill of `answer_length` tokens (`cloze_part_a`)."""
  before, after = (t.strip() for t in template.text(example).split(MASK, 1))
  part_a, blank, _ = cloze_part_a(vocabulary.encode(before), vocabulary.encode(after), ids, max_length, answer_length)
  return part_a, blank
