"""Zero-shot LM metrics: LAMBADA accuracy and perplexity from batched, padded rows (on one device or a mesh) equal a
hand re-statement with the same model, one unpadded row (or one cache-scored span) at a time."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest

from glm_jax.data import example as example_lib, language_model as lm
from glm_jax.data.example import SpecialIds
from glm_jax.eval import language_model as lm_eval
from glm_jax.infer import decode, scoring
from glm_jax.train import partitioning

LENGTH = 48


@pytest.fixture(scope="module")
def glm():
  from glm_jax.data import vocab
  from glm_jax.model import GLM, GLMConfig

  vocabulary = vocab.default_vocabulary()
  config = GLMConfig(vocab_size=vocabulary.vocab_size, num_layers=1, hidden_size=32, num_heads=4, max_length=LENGTH)
  model = GLM(config)
  ids = np.zeros((1, 8), np.int32)
  params = model.init(jax.random.key(7), ids, ids, ids, sep=np.array([8]))["params"]
  return model, params, SpecialIds.from_vocabulary(vocabulary)


@functools.lru_cache
def _forward(model):
  return jax.jit(lambda params, ids, pos, block, sep: model.apply({"params": params}, ids, pos, block, sep=sep))


def _logits(model, params, row):
  """Logits of one row, alone: zeros after its tokens (no segment ids; its tokens never attend positions after
  their own row's end), float64 [len(row), vocab]."""
  n = row["input_ids"].size
  x = {k: np.pad(row[k], (0, LENGTH - n))[None] for k in ("input_ids", "position_ids", "block_position_ids")}
  out = _forward(model)(params, x["input_ids"], x["position_ids"], x["block_position_ids"], row["sep"][:1])
  return np.asarray(out[0, :n, : model.config.vocab_size], np.float64)


def _padded(rows):
  return [example_lib.pad(r, LENGTH) for r in rows]


@pytest.mark.parametrize("unidirectional", [False, True])
def test_lambada_accuracy_equals_a_hand_restatement(glm, unidirectional):
  model, params, ids = glm
  rng = np.random.default_rng(0)
  rows = []
  for i in range(7):
    context = [int(t) for t in rng.integers(300, 3000, rng.integers(3, 12))]
    probe, _ = lm.lambada_row(context, [300], ids, mask="[gMASK]", max_length=LENGTH, unidirectional=unidirectional)
    greedy = int(np.argmax(_logits(model, params, probe)[-1]))  # the model's word after the context
    # Examples 0, 2, 4, 6 end in the model's own choice (right), the others in another token (wrong); example 6's
    # answer has a second token, the greedy one after the first.
    answer = [greedy] if i % 2 == 0 else [greedy + 1]
    if i == 6:
      two, _ = lm.lambada_row(context, [greedy, 300], ids, mask="[gMASK]", max_length=LENGTH,
                              unidirectional=unidirectional)  # fmt: skip
      answer = [greedy, int(np.argmax(_logits(model, params, two)[-1]))]
    row, _ = lm.lambada_row(context, answer, ids, mask="[gMASK]", max_length=LENGTH, unidirectional=unidirectional)
    rows.append(row)

  hand = []
  for row in rows:
    predicted = np.argmax(_logits(model, params, row), axis=-1)
    scored = row["loss_mask"] > 0
    hand.append(bool(np.all(predicted[scored] == row["target_ids"][scored])))
  assert hand == [True, False, True, False, True, False, True]  # the fixture is what it says

  stats = lm_eval.row_stats(model, params, lm_eval.batches(_padded(rows), 3))
  assert stats["correct"].tolist() == hand
  got = lm_eval.lambada_metrics(stats)
  assert got == {"lambada_accuracy": 4 / 7, "lambada_examples": 7.0}
  if not unidirectional:  # the cache scorer's greedy check, another path to the same answer
    prompts = [r["input_ids"][: int(r["sep"][0])] for r in rows]
    spans = [[list(r["target_ids"][r["loss_mask"] > 0])] for r in rows]
    blanks = [int(r["position_ids"][-1]) for r in rows]
    greedy = scoring.score_spans(model, params, prompts, blanks, spans, ids=ids, greedy=True)
    assert [bool(g[0]) for g in greedy] == hand


@pytest.mark.parametrize("unidirectional", [False, True])
def test_perplexity_sums_each_tokens_loss_once(glm, unidirectional):
  model, params, ids = glm
  tokens = [int(t) for t in np.random.default_rng(1).integers(300, 3000, 41)]
  windows = lm.windows(len(tokens), seq_length=12, overlap=4, unidirectional=unidirectional)
  rows = [lm.window_row(tokens, w, ids, mask="[gMASK]", unidirectional=unidirectional) for w in windows]

  # By hand: each window's row alone; -log p of each scored target, and which document token it is.
  nll, seen = 0.0, []
  for w, row in zip(windows, rows):
    logits = _logits(model, params, row)
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    scored = np.flatnonzero(row["loss_mask"] > 0)
    nll -= sum(log_probs[p, row["target_ids"][p]] for p in scored)
    seen += list(range(w.first_scored, w.end))
  assert seen == list(range(1, len(tokens)))

  stats = lm_eval.row_stats(model, params, lm_eval.batches(_padded(rows), 4))
  got = lm_eval.perplexity_metrics(stats, (50, 1))
  assert got["lm_scored_tokens"] == len(tokens) - 1
  assert got["lm_loss"] == pytest.approx(nll / 40, rel=1e-5)
  assert got["lm_ppl"] == pytest.approx(math.exp(nll / 40), rel=1e-4)
  assert got["lm_token_ratio"] == 40 / 49  # the reference's (tokens - 1) / (words - 1) for one document
  assert got["lm_adjusted_ppl"] == pytest.approx(math.exp(nll / 40 * 40 / 49), rel=1e-4)
  assert "lm_adjusted_ppl" not in lm_eval.perplexity_metrics(stats, None)
  if not unidirectional:  # the cache scorer over each window's Part A, another path to the same sum
    prompts = [r["input_ids"][: int(r["sep"][0])] for r in rows]
    spans = [[tokens[w.first_scored : w.end]] for w in windows]
    scores = scoring.score_spans(model, params, prompts, [len(p) - 1 for p in prompts], spans, ids=ids)
    assert -sum(float(s[0]) for s in scores) == pytest.approx(nll, rel=1e-5)


def test_rows_on_an_8_device_mesh_score_as_on_one(glm):
  model, params, ids = glm
  rng = np.random.default_rng(2)
  rows = []
  for _ in range(5):  # 5 rows: batches of 4 on the mesh's 4 batch devices, the last one padded
    context = [int(t) for t in rng.integers(300, 3000, rng.integers(3, 20))]
    rows.append(lm.lambada_row(context, [301, 302], ids, mask="[gMASK]", max_length=LENGTH, unidirectional=False)[0])
  one = lm_eval.row_stats(model, params, lm_eval.batches(_padded(rows), 4))
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
  sharded = jax.device_put(params, partitioning.logical_shardings(partitioning.abstract_boxed_params(model, 8), mesh))
  devices = decode.batch_devices(decode.mesh_of(sharded))
  assert devices == 4
  many = lm_eval.row_stats(model, sharded, lm_eval.batches(_padded(rows), 3, devices))
  np.testing.assert_allclose(many["nll"], one["nll"], rtol=1e-5)
  assert many["correct"].tolist() == one["correct"].tolist() and many["scored"].tolist() == [2] * 5


def test_batches_fill_the_last_one_with_empty_rows(glm):
  _, _, ids = glm
  rows = _padded([lm.lambada_row([300 + i], [400], ids, mask="[MASK]", max_length=LENGTH, unidirectional=False)[0]
                  for i in range(5)])  # fmt: skip
  got = list(lm_eval.batches(rows, 3, devices=2))  # rounded up to 4 rows a batch
  assert [b["input_ids"].shape for b in got] == [(4, LENGTH), (4, LENGTH)]
  assert got[1]["segment_ids"][1:].sum() == 0 and got[1]["loss_mask"][1:].sum() == 0
  with pytest.raises(ValueError, match="no LAMBADA example"):
    lm_eval.lambada_metrics({"correct": np.zeros([0], bool)})
