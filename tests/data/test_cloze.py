"""Classification examples as GLM cloze examples: the verbalizer is the one blank's span."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from glm_jax.data import cloze, counters, example, feature_converter, vocab
from tasks import finetune

TEMPLATE = cloze.ClozeTemplate("{sentence} It was really [MASK].", {0: "terrible", 1: "great"})
SENTENCES = ["the module is fast", "a slow and broken parser that loses every file it reads and writes"]


def _task(name, sentences, labels, template=TEMPLATE):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"sentence": sentences, "label": labels})

  if name not in seqio.TaskRegistry.names():
    finetune.register_cloze_task(name, seqio.FunctionDataSource(dataset_fn, splits=("train",)), template)
  return seqio.get_mixture_or_task(name)


def _examples(task, length):
  ds = task.get_dataset(feature_converter.task_feature_lengths(length), split="train", shuffle=False)
  return list(ds.as_numpy_iterator())


def test_the_verbalizer_of_the_label_is_the_span_of_the_blank():
  vocabulary = vocab.default_vocabulary()
  special = example.SpecialIds.from_vocabulary(vocabulary)
  examples = _examples(_task("test_cloze_layout", SENTENCES, [1, 0]), 64)
  for ex, sentence, verbalizer in zip(examples, SENTENCES, ["great", "terrible"]):
    before, after, answer = (list(vocabulary.encode(t)) for t in (f"{sentence} It was really", ".", verbalizer))
    np.testing.assert_array_equal(example.reconstruct(ex, special), before + answer + after)
    a_len = 1 + len(before) + 1 + len(after)  # [CLS], the text before the blank, [MASK], the text after
    np.testing.assert_array_equal(ex["input_ids"][:a_len], [special.cls, *before, special.mask, *after])
    np.testing.assert_array_equal(ex["input_ids"][a_len:], [special.sop, *answer])
    np.testing.assert_array_equal(ex["target_ids"][a_len:], [*answer, special.eop])
    np.testing.assert_array_equal(ex["position_ids"][a_len:], [1 + len(before)] * (len(answer) + 1))
    np.testing.assert_array_equal(ex["block_position_ids"][a_len:], np.arange(1, len(answer) + 2))
    np.testing.assert_array_equal(ex["loss_mask"], [0] * a_len + [1] * (len(answer) + 1))
    assert (ex["sep"] == a_len).all()
    # Evaluation tokenizes Part A the same way.
    assert cloze.part_a(TEMPLATE, {"sentence": sentence}, vocabulary, special, 64, len(answer)) == (
      ex["input_ids"][:a_len].tolist(),
      1 + len(before),
    )


def test_a_long_text_loses_its_first_tokens_and_keeps_the_pattern():
  vocabulary = vocab.default_vocabulary()
  special = example.SpecialIds.from_vocabulary(vocabulary)
  counters.reset()
  (ex,) = _examples(_task("test_cloze_long", SENTENCES[1:], [0]), 16)
  assert ex["input_ids"].size == 16 and counters.snapshot("cloze/")["cloze/truncated"] == 1
  kept = example.reconstruct(ex, special).tolist()
  full = (
    list(vocabulary.encode(f"{SENTENCES[1]} It was really"))
    + list(vocabulary.encode("terrible"))
    + list(vocabulary.encode("."))
  )
  assert kept == full[len(full) - len(kept) :]
  answer = len(vocabulary.encode("terrible"))
  assert (
    cloze.part_a(TEMPLATE, {"sentence": SENTENCES[1]}, vocabulary, special, 16, answer)[0]
    == ex["input_ids"][: 16 - answer - 1].tolist()
  )


def test_a_label_without_a_verbalizer_fails_the_pipeline():
  with pytest.raises(tf.errors.InvalidArgumentError, match="no verbalizer"):
    _examples(_task("test_cloze_bad_label", SENTENCES[:1], [7]), 64)


@pytest.mark.parametrize(
  "pattern,verbalizers,message",
  [
    ("{sentence} It was really good.", {0: "a"}, "exactly one"),
    ("[MASK] {sentence} [MASK]", {0: "a"}, "exactly one"),
    ("{sentence} [MASK]", {0: "a", 1: " "}, "non-empty verbalizer"),
  ],
)
def test_bad_templates_raise(pattern, verbalizers, message):
  with pytest.raises(ValueError, match=message):
    cloze.ClozeTemplate(pattern, verbalizers)
