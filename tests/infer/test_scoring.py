"""Cloze scoring: candidate fills of a blank scored by their log-likelihood as Part B, over the cache (score_spans)
against one full forward per candidate row and a per-token teacher-forced oracle."""

import jax
import numpy as np
import pytest

from glm_jax.data import example
from glm_jax.data.example import SpecialIds
from glm_jax.infer import recompute, scoring
from glm_jax.model import GLM, GLMConfig

IDS = SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=6, gmask=7, sop=4, eop=5)


def test_candidate_rows_layout():
  part_a = [2, 10, 3, 11]  # [CLS] a [MASK] b
  rows = scoring.candidate_rows(part_a, 2, [[20, 21], [30]], IDS, length=8, eop=True)
  np.testing.assert_array_equal(rows["input_ids"], [[2, 10, 3, 11, 4, 20, 21, 0], [2, 10, 3, 11, 4, 30, 0, 0]])
  np.testing.assert_array_equal(rows["position_ids"], [[0, 1, 2, 3, 2, 2, 2, 0], [0, 1, 2, 3, 2, 2, 0, 0]])
  np.testing.assert_array_equal(rows["block_position_ids"], [[0, 0, 0, 0, 1, 2, 3, 0], [0, 0, 0, 0, 1, 2, 0, 0]])
  np.testing.assert_array_equal(rows["target_ids"][:, 4:7], [[20, 21, 5], [30, 5, 0]])
  np.testing.assert_array_equal(rows["loss_mask"], [[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(rows["sep"], [[4] * 7 + [0], [4] * 6 + [0, 0]])  # Part A's length, per token
  without_eop = scoring.candidate_rows(part_a, 2, [[20, 21]], IDS, length=6)
  np.testing.assert_array_equal(without_eop["input_ids"], [[2, 10, 3, 11, 4, 20]])  # 21 predicts nothing scored
  np.testing.assert_array_equal(without_eop["loss_mask"], [[0, 0, 0, 0, 1, 1]])
  with pytest.raises(ValueError, match="needs 7 positions but the length is 6"):
    scoring.candidate_rows(part_a, 2, [[20, 21]], IDS, length=6, eop=True)
  with pytest.raises(ValueError, match="at least one token"):
    scoring.candidate_rows(part_a, 2, [[20], []], IDS, length=8)


def _teacher_forced_log_likelihood(model, params, part_a, mask_position, candidate, eop):
  """The oracle: one forward per target token on the recompute decoder's rows (glm_jax.infer.recompute), each
  exactly as long as its prefix, summing log p(next token) over the real vocabulary."""
  total = 0.0
  targets = [*candidate, IDS.eop] if eop else list(candidate)
  for t, target in enumerate(targets):
    row = recompute.decode_inputs(part_a, [(mask_position, candidate[:t])], IDS, length=len(part_a) + t + 1)
    logits = model.apply(
      {"params": params},
      row.features["input_ids"][None],
      row.features["position_ids"][None],
      row.features["block_position_ids"][None],
      sep=row.features["sep"][:1],
    )
    log_probs = jax.nn.log_softmax(np.asarray(logits[0, -1, : model.config.vocab_size], np.float64))
    total += float(log_probs[target])
  return total


def _random_glm(seed):
  """A random 2-layer GLM over 40 ids (64 rows), and its params."""
  model = GLM(GLMConfig(vocab_size=40, num_layers=2, hidden_size=32, num_heads=4, max_length=32, vocab_multiple=64))
  ids = np.zeros((1, 8), np.int32)
  return model, model.init(jax.random.key(seed), ids, ids, ids, sep=np.array([8]))["params"]


@pytest.mark.slow  # the oracle compiles once per prefix length
@pytest.mark.parametrize("eop", [False, True])
def test_scores_equal_the_teacher_forced_log_likelihood(eop):
  model, params = _random_glm(5)
  part_a = [2, 12, 13, 3, 14, 15]
  candidates = [[20], [21, 22, 23], [24, 25]]  # different lengths: padded rows of one batch
  got = scoring.make_score_fn(model, params)(scoring.candidate_rows(part_a, 3, candidates, IDS, length=12, eop=eop))
  want = [_teacher_forced_log_likelihood(model, params, part_a, 3, c, eop) for c in candidates]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  (cached,) = scoring.score_spans(model, params, [part_a], [3], [candidates], ids=IDS, eop=eop)
  np.testing.assert_allclose(cached, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eop", [False, True])
def test_scores_over_the_cache_equal_one_full_forward_per_candidate(eop):
  """A batch of prompts of different lengths, blanks and candidate counts: each prompt's Part A encoded once."""
  model, params = _random_glm(6)
  prompts = [[2, 12, 13, 3, 14, 15], [2, 7, 16], [2, 17, 18, 19, 20, 6, 21, 22, 1]]
  blanks = [3, 1, 5]
  candidates = [[[20], [21, 22, 23], [24, 25]], [[26, 27]], [[28], [29, 30], [31], [32, 33, 34, 35]]]
  score = scoring.make_score_fn(model, params)
  for penalty in (0.0, 1.0, 0.5):
    got = scoring.score_spans(model, params, prompts, blanks, candidates, ids=IDS, eop=eop, length_penalty=penalty)
    for prompt, blank, cands, scores in zip(prompts, blanks, candidates, got):
      rows = scoring.candidate_rows(prompt, blank, cands, IDS, length=16, eop=eop)
      want = score(rows) / rows["loss_mask"].sum(axis=-1) ** penalty
      np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)


def _full_forward_argmax(model, params, rows):
  """The greedy predictions [N, L] of one full forward per candidate row (the oracle of `greedy`)."""
  logits = model.apply(
    {"params": params}, rows["input_ids"], rows["position_ids"], rows["block_position_ids"], sep=rows["sep"][:, 0]
  )
  return np.argmax(np.asarray(logits[..., : model.config.vocab_size]), axis=-1)


@pytest.mark.parametrize("eop", [False, True])
def test_greedy_marks_the_candidates_greedy_decoding_writes(eop):
  model, params = _random_glm(7)
  prompt, blank = [2, 12, 13, 3, 14, 15], 3
  written = []  # the model's own greedy fill, token by token
  for _ in range(3):
    rows = scoring.candidate_rows(prompt, blank, [[*written, 0]], IDS, length=12)
    written.append(int(_full_forward_argmax(model, params, rows)[0, len(prompt) + len(written)]))
  candidates = [written, written[:2], [*written[:2], (written[2] + 1) % 40], [(written[0] + 1) % 40]]
  (got,) = scoring.score_spans(model, params, [prompt], [blank], [candidates], ids=IDS, eop=eop, greedy=True)
  rows = scoring.candidate_rows(prompt, blank, candidates, IDS, length=12, eop=eop)
  hit = (_full_forward_argmax(model, params, rows) == rows["target_ids"]) | (rows["loss_mask"] == 0)
  np.testing.assert_array_equal(got, hit.all(axis=-1).astype(np.float32))
  if not eop:  # the model's own fill and its prefixes, not a changed token
    np.testing.assert_array_equal(got, [1.0, 1.0, 0.0, 0.0])


def test_scores_on_an_8_device_mesh_equal_one_device():
  from glm_jax.infer import decode
  from glm_jax.train import partitioning

  model, params = _random_glm(8)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
  sharded = jax.device_put(params, partitioning.logical_shardings(partitioning.abstract_boxed_params(model, 8), mesh))
  assert decode.mesh_of(sharded) is mesh
  prompts = [[2, 12, 13, 3, 14, 15], [2, 7, 16], [2, 17, 18, 19, 20, 6, 21, 22, 1]]  # 3 rows: padded to 4 on the mesh
  candidates = [[[20], [21, 22, 23], [24, 25]], [[26, 27]], [[28], [29, 30], [31], [32, 33, 34, 35]]]
  for greedy in (False, True):
    want = scoring.score_spans(model, params, prompts, [3, 1, 5], candidates, ids=IDS, eop=True, greedy=greedy)
    got = scoring.score_spans(model, sharded, prompts, [3, 1, 5], candidates, ids=IDS, eop=True, greedy=greedy)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_score_candidates_reads_one_mask_of_the_text(default_vocabulary_glm):
  vocabulary, model, params = default_vocabulary_glm(6, 64)
  text = "The module provides functions for working with [MASK]."
  candidates = ["paths", "files and directories"]
  summed = scoring.score_candidates(model, params, vocabulary, text, candidates)
  mean = scoring.score_candidates(model, params, vocabulary, text, candidates, length_penalty=1.0)
  lengths = [len(vocabulary.encode(c)) for c in candidates]
  assert all(s < 0 for s in summed)
  np.testing.assert_allclose(mean, np.asarray(summed) / lengths, rtol=1e-6)
  ids = SpecialIds.from_vocabulary(vocabulary)
  part_a = [ids.cls, *example.encode_text(vocabulary, text, ids)]  # the space before [MASK] dropped, as infer does
  assert len(part_a) < len(vocabulary.encode(text)) + 1
  tokens = [list(vocabulary.encode(c)) for c in candidates]
  (oracle,) = scoring.score_spans(model, params, [part_a], [part_a.index(ids.mask)], [tokens], ids=ids)
  np.testing.assert_allclose(summed, oracle, rtol=1e-6)
  with pytest.raises(ValueError, match="exactly one .*found 0"):
    scoring.score_candidates(model, params, vocabulary, "no blank here", candidates)
  with pytest.raises(ValueError, match="exactly one .*found 2"):
    scoring.score_candidates(model, params, vocabulary, "[MASK] and [gMASK]", candidates)
