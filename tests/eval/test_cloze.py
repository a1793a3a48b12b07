"""Cloze classification accuracy: every verbalizer scored as the blank's fill, batched without mixing examples."""

import jax

from glm_jax.data import cloze
from glm_jax.eval import cloze as cloze_eval


def test_cloze_accuracy_batches_examples_without_mixing_them_up(default_vocabulary_glm):
  vocabulary, model, params = default_vocabulary_glm(0, 32)
  params = jax.tree.map(lambda x: 20.0 * x, params)  # large weights: predictions that depend on the sentence
  template = cloze.ClozeTemplate("{sentence} It was [MASK].", {0: "bad", 1: "good", 2: "a long answer"})
  sentences = ["the module is fast", "a parser", "files and paths", "the network is slow", "it works", "lists"]
  # Each example's prediction, one example per call: the label with accuracy 1.
  predicted = [
    next(
      label
      for label in template.labels()
      if cloze_eval.cloze_accuracy(
        model,
        params,
        vocabulary,
        template,
        [{"sentence": s, "label": label}],
        examples_per_call=1,
        length_penalty=1.0,
      )["accuracy"]
      == 1
    )
    for s in sentences
  ]
  assert len(set(predicted)) > 1, "a test of batching needs different predictions"
  examples = [{"sentence": s, "label": label} for s, label in zip(sentences, predicted)]
  for per_call in (4, 16):  # 6 = 4 + 2; one batch of 6
    result = cloze_eval.cloze_accuracy(
      model, params, vocabulary, template, examples, examples_per_call=per_call, length_penalty=1.0
    )
    assert result == {"accuracy": 1.0, "num_examples": 6.0}
  flipped = [dict(ex, label=(ex["label"] + 1) % 3) for ex in examples]
  assert (
    cloze_eval.cloze_accuracy(model, params, vocabulary, template, flipped, examples_per_call=4, length_penalty=1.0)[
      "accuracy"
    ]
    == 0
  )
