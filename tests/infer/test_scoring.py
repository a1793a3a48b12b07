"""Cloze scoring: candidate fills of a blank scored by their log-likelihood as Part B."""

import jax
import numpy as np
import pytest

from glm_jax.data import vocab
from glm_jax.infer import infilling, scoring
from glm_jax.model import GLM, GLMConfig

IDS = infilling.InfillIds(pad=0, cls=2, sop=4, eop=5, masks=(3, 6, 7))


def test_candidate_rows_layout():
  part_a = [2, 10, 3, 11]  # [CLS] a [MASK] b
  rows = scoring.candidate_rows(part_a, 2, [[20, 21], [30]], IDS, length=8, eop=True)
  np.testing.assert_array_equal(rows.input_ids, [[2, 10, 3, 11, 4, 20, 21, 0], [2, 10, 3, 11, 4, 30, 0, 0]])
  np.testing.assert_array_equal(rows.position_ids, [[0, 1, 2, 3, 2, 2, 2, 0], [0, 1, 2, 3, 2, 2, 0, 0]])
  np.testing.assert_array_equal(rows.block_position_ids, [[0, 0, 0, 0, 1, 2, 3, 0], [0, 0, 0, 0, 1, 2, 0, 0]])
  np.testing.assert_array_equal(rows.target_ids[:, 4:7], [[20, 21, 5], [30, 5, 0]])
  np.testing.assert_array_equal(rows.loss_mask, [[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(rows.sep, [4, 4])
  without_eop = scoring.candidate_rows(part_a, 2, [[20, 21]], IDS, length=6)
  np.testing.assert_array_equal(without_eop.input_ids, [[2, 10, 3, 11, 4, 20]])  # 21 predicts nothing scored
  np.testing.assert_array_equal(without_eop.loss_mask, [[0, 0, 0, 0, 1, 1]])
  with pytest.raises(ValueError, match="needs 7 positions but the length is 6"):
    scoring.candidate_rows(part_a, 2, [[20, 21]], IDS, length=6, eop=True)
  with pytest.raises(ValueError, match="at least one token"):
    scoring.candidate_rows(part_a, 2, [[20], []], IDS, length=8)


def _teacher_forced_log_likelihood(model, params, part_a, mask_position, candidate, eop):
  """The oracle: one forward per target token on the infilling decoder's rows (glm_jax.infer.infilling), each
  exactly as long as its prefix, summing log p(next token) over the real vocabulary."""
  total = 0.0
  targets = [*candidate, IDS.eop] if eop else list(candidate)
  for t, target in enumerate(targets):
    row = infilling.decode_inputs(
      part_a, [(mask_position, candidate[:t])], IDS.sop, IDS.pad, length=len(part_a) + t + 1
    )
    logits = model.apply(
      {"params": params},
      row.input_ids[None],
      row.position_ids[None],
      row.block_position_ids[None],
      sep=np.array([row.sep]),
    )
    log_probs = jax.nn.log_softmax(np.asarray(logits[0, -1, : model.config.vocab_size], np.float64))
    total += float(log_probs[target])
  return total


@pytest.mark.slow  # the oracle compiles once per prefix length
@pytest.mark.parametrize("eop", [False, True])
def test_scores_equal_the_teacher_forced_log_likelihood(eop):
  cfg = GLMConfig(vocab_size=40, num_layers=2, hidden_size=32, num_heads=4, max_length=32, vocab_multiple=64)
  model = GLM(cfg)
  ids = np.zeros((1, 8), np.int32)
  params = model.init(jax.random.key(5), ids, ids, ids, sep=np.array([8]))["params"]
  part_a = [2, 12, 13, 3, 14, 15]
  candidates = [[20], [21, 22, 23], [24, 25]]  # different lengths: padded rows of one batch
  got = scoring.make_score_fn(model, params)(scoring.candidate_rows(part_a, 3, candidates, IDS, length=12, eop=eop))
  want = [_teacher_forced_log_likelihood(model, params, part_a, 3, c, eop) for c in candidates]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _default_vocabulary_model(seed: int, max_length: int):
  """(vocabulary, a random one-layer GLM over it, its params)."""
  vocabulary = vocab.default_vocabulary()
  model = GLM(
    GLMConfig(vocab_size=vocabulary.vocab_size, num_layers=1, hidden_size=32, num_heads=4, max_length=max_length)
  )
  ids = np.zeros((1, 8), np.int32)
  return vocabulary, model, model.init(jax.random.key(seed), ids, ids, ids, sep=np.array([8]))["params"]


def test_score_candidates_reads_one_mask_of_the_text():
  vocabulary, model, params = _default_vocabulary_model(6, 64)
  text = "The module provides functions for working with [MASK]."
  candidates = ["paths", "files and directories"]
  summed = scoring.score_candidates(model, params, vocabulary, text, candidates)
  mean = scoring.score_candidates(model, params, vocabulary, text, candidates, length_normalized=True)
  lengths = [len(vocabulary.encode(c)) for c in candidates]
  assert all(s < 0 for s in summed)
  np.testing.assert_allclose(mean, np.asarray(summed) / lengths, rtol=1e-6)
  with pytest.raises(ValueError, match="exactly one .*found 0"):
    scoring.score_candidates(model, params, vocabulary, "no blank here", candidates)
  with pytest.raises(ValueError, match="exactly one .*found 2"):
    scoring.score_candidates(model, params, vocabulary, "[MASK] and [gMASK]", candidates)


def test_cloze_accuracy_batches_examples_without_mixing_them_up():
  from glm_jax.data import cloze

  vocabulary, model, params = _default_vocabulary_model(0, 32)
  params = jax.tree.map(lambda x: 20.0 * x, params)  # large weights: predictions that depend on the sentence
  template = cloze.ClozeTemplate("{sentence} It was [MASK].", {0: "bad", 1: "good", 2: "a long answer"})
  sentences = ["the module is fast", "a parser", "files and paths", "the network is slow", "it works", "lists"]
  # Each example's prediction, one example per call: the label with accuracy 1.
  predicted = [
    next(
      label
      for label in template.labels()
      if scoring.cloze_accuracy(
        model,
        params,
        vocabulary,
        template,
        [{"sentence": s, "label": label}],
        examples_per_call=1,
        length_normalized=True,
      )["accuracy"]
      == 1
    )
    for s in sentences
  ]
  assert len(set(predicted)) > 1, "a test of batching needs different predictions"
  examples = [{"sentence": s, "label": label} for s, label in zip(sentences, predicted)]
  for per_call in (4, 16):  # 6 = 4 + a padded 2; one padded batch
    result = scoring.cloze_accuracy(
      model, params, vocabulary, template, examples, examples_per_call=per_call, length_normalized=True
    )
    assert result == {"accuracy": 1.0, "num_examples": 6.0}
  flipped = [dict(ex, label=(ex["label"] + 1) % 3) for ex in examples]
  assert (
    scoring.cloze_accuracy(model, params, vocabulary, template, flipped, examples_per_call=4, length_normalized=True)[
      "accuracy"
    ]
    == 0
  )
