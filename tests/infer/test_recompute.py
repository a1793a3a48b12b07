"""The full-recompute greedy decoder (the slow oracle of glm_jax.infer.generate): its rows and its order."""

import jax
import numpy as np
import pytest

from glm_jax.data.example import SpecialIds
from glm_jax.infer import recompute
from glm_jax.model import GLM, GLMConfig

IDS = SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=6, gmask=7, sop=4, eop=5)


def test_decode_inputs_layout():
  part_a = [2, 10, 3, 11, 6]  # [CLS] a [MASK] b [sMASK]
  row = recompute.decode_inputs(part_a, [(2, [20, 21]), (4, [])], IDS, length=12)
  np.testing.assert_array_equal(row.features["input_ids"], [2, 10, 3, 11, 6, 4, 20, 21, 4, 0, 0, 0])
  np.testing.assert_array_equal(row.features["position_ids"], [0, 1, 2, 3, 4, 2, 2, 2, 4, 0, 0, 0])
  np.testing.assert_array_equal(row.features["block_position_ids"], [0, 0, 0, 0, 0, 1, 2, 3, 1, 0, 0, 0])
  np.testing.assert_array_equal(row.features["sep"], [5] * 9 + [0] * 3)
  np.testing.assert_array_equal(row.features["segment_ids"], [1] * 9 + [0] * 3)
  assert row.last == 8


def _one_hot(token, vocab=64):
  out = np.full(vocab, -30.0)
  out[token] = 0.0
  return out


def test_fill_blanks_goes_left_to_right_and_conditions_on_earlier_spans():
  seen = []

  def next_log_probs(row):  # span 1: 30, 31, [eop]; span 2: 40s until max_span_length
    seen.append(row.features["input_ids"][: row.last + 1].tolist())
    span_len = int(row.features["block_position_ids"][row.last]) - 1
    if row.features["position_ids"][row.last] == 2:
      return _one_hot([30, 31, IDS.eop][span_len])
    return _one_hot(40)

  part_a = [2, 10, 3, 11, 7]
  spans, scores = recompute.fill_blanks(next_log_probs, part_a, IDS, length=16, max_span_length=3)
  assert spans == [[30, 31], [40, 40, 40]]
  assert scores == [0.0, 0.0]
  assert len(seen) == 3 + 3
  assert seen[0] == part_a + [4]
  assert seen[3] == part_a + [4, 30, 31, 4]  # the second span sees the first in Part B
  # [eos] ends a span too by default; with stop_ids=() nothing does.
  spans, _ = recompute.fill_blanks(lambda row: _one_hot(IDS.eos), part_a, IDS, 16, 3)
  assert spans == [[], []]
  spans, _ = recompute.fill_blanks(lambda row: _one_hot(IDS.eos), part_a, IDS, 16, 2, stop_ids=())
  assert spans == [[IDS.eos] * 2] * 2


@pytest.mark.slow  # the unpadded oracle compiles once per length
def test_padded_greedy_decode_matches_unpadded_forward():
  cfg = GLMConfig(vocab_size=40, num_layers=2, hidden_size=32, num_heads=4, max_length=32, vocab_multiple=64)
  model = GLM(cfg)
  ids = np.zeros((1, 8), np.int32)
  params = model.init(jax.random.key(3), ids, ids, ids, sep=np.array([8]))["params"]

  def oracle(row):  # direct forward on exactly the real tokens, over the real vocabulary
    n = row.last + 1
    logits = model.apply(
      {"params": params},
      row.features["input_ids"][None, :n],
      row.features["position_ids"][None, :n],
      row.features["block_position_ids"][None, :n],
      sep=row.features["sep"][:1],
    )
    return np.asarray(jax.nn.log_softmax(logits[0, -1, : cfg.vocab_size]))

  part_a = [2, 12, 3, 13, 6]
  fast = recompute.fill_blanks(recompute.make_next_token_fn(model, params), part_a, IDS, 32, max_span_length=3)
  slow = recompute.fill_blanks(oracle, part_a, IDS, 32, max_span_length=3)
  assert fast[0] == slow[0]
  np.testing.assert_allclose(fast[1], slow[1], rtol=1e-5)
  assert all(t < cfg.vocab_size for span in fast[0] for t in span)
