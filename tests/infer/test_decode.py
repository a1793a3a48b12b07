"""glm_jax.infer.generate against its oracles: full-recompute greedy (glm_jax.infer.recompute), an exhaustive search
and a plain Python re-statement of the HF BeamSearchScorer rules (driven by full-forward log-probabilities), the
truncated distributions of top-k / top-p sampling; and the properties a user relies on (batch = rows alone, seeds,
stop tokens, span limits, one compilation per bucket, the same result on an 8-device mesh)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from glm_jax.data.example import SpecialIds
from glm_jax.infer import DecodeOptions, decode, generate, recompute
from glm_jax.model import GLM, GLMConfig

IDS = SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7)
# Random models rarely predict [eop]: a set of ordinary tokens also ends spans, so spans end at different times.
STOPS = (IDS.eop, IDS.eos, *range(8, 20))


def _model(vocab_size=100, seed=1, **overrides):
  config = GLMConfig(
    vocab_size=vocab_size, num_layers=2, hidden_size=32, num_heads=4, max_length=128, init_std=0.5, **overrides
  )
  model = GLM(config)
  ids = jnp.ones((1, 8), jnp.int32)
  return model, model.init(jax.random.key(seed), ids, ids, ids, sep=jnp.array([4]))["params"]


@pytest.fixture(scope="module")
def tiny():
  return _model()


def _prompts(seed, count, vocab_size=100):
  """[CLS] + text with 1-4 blanks of every kind (+ [eos] unless it ends with [gMASK]), of different lengths."""
  rng = np.random.default_rng(seed)
  prompts = []
  for i in range(count):
    body = rng.integers(20, vocab_size, rng.integers(4, 24)).tolist()
    for position in sorted(rng.choice(len(body), rng.integers(1, 5), replace=False)):
      body[position] = (IDS.mask, IDS.smask, IDS.gmask)[(i + position) % 3]
    prompts.append([IDS.cls, *body] + ([] if body[-1] == IDS.gmask else [IDS.eos]))
  return prompts


def _oracle(model, params):
  """Full-forward log-probabilities of the next token after (part_a, spans so far), cached by prefix."""
  next_log_probs = recompute.make_next_token_fn(model, params)

  @functools.lru_cache(maxsize=None)
  def log_probs(part_a: tuple, spans: tuple) -> np.ndarray:
    length = 128
    return next_log_probs(recompute.decode_inputs(list(part_a), [(b, list(s)) for b, s in spans], IDS, length))

  return log_probs


@pytest.fixture(params=["unrolled", "scanned"])
def decode_layout(request, monkeypatch):
  """Both decode loops: on CPU generate unrolls a scanned model's layers; "scanned" keeps the scan, as GPU and TPU
  (and a CPU too small for a second copy of the weights) run it."""
  if request.param == "scanned":
    monkeypatch.setattr(decode, "_host_memory", lambda: 0)
  return request.param


def test_cached_greedy_equals_full_recompute_token_for_token(tiny, decode_layout):
  model, params = tiny
  prompts = _prompts(0, 5)
  generations = generate(model, params, prompts, ids=IDS, options=DecodeOptions(max_span_length=6, stop_ids=STOPS))
  next_log_probs = recompute.make_next_token_fn(model, params)
  lengths = set()
  for prompt, generation in zip(prompts, generations):
    spans, scores = recompute.fill_blanks(next_log_probs, prompt, IDS, 128, 6, stop_ids=STOPS)
    assert generation.spans == spans
    np.testing.assert_allclose(generation.scores, scores, rtol=1e-5, atol=1e-4)
    lengths |= {len(s) for s in spans}
  assert len(lengths) >= 3, "the spans should end at different times"


def _banned(tokens, t, options, stops, vocab_size):
  """The bans of decode.banned_tokens written out: stop tokens before min_span_length, n-gram completions."""
  banned = set()
  if t < options.min_span_length:
    banned |= set(stops)
  n = options.no_repeat_ngram_size
  if n and t + 1 >= n:
    prefix = tuple(tokens[t - n + 1 :]) if n > 1 else ()
    banned |= {tokens[i + n - 1] for i in range(t - n + 1) if tuple(tokens[i : i + n - 1]) == prefix}
  return banned


def hf_beam_search(log_probs, part_a, options, stops, vocab_size):
  """The HF BeamSearchScorer (do_early_stopping=False, deterministic top-2k), one blank after another, in Python."""
  beams, penalty, span_limit = options.num_beams, options.length_penalty, options.max_span_length
  spans, scores, done_spans = [], [], []
  for blank in [i for i, t in enumerate(part_a) if t in IDS.masks]:
    open_beams = [([], 0.0)] + [([], -1e9)] * (beams - 1)
    hyps: list[tuple[float, list[int]]] = []

    def add(score, tokens):
      if len(hyps) < beams or score > min(h[0] for h in hyps):
        hyps.append((score, tokens))
        if len(hyps) > beams:
          hyps.remove(min(hyps, key=lambda h: h[0]))

    done = False
    for t in range(span_limit):
      candidates = []
      for k, (tokens, score) in enumerate(open_beams):
        lp = np.array(log_probs(tuple(part_a), tuple(done_spans) + ((blank, tuple(tokens)),)), np.float64)
        for v in _banned(tokens, t, options, stops, vocab_size):
          lp[v] = -np.inf
        candidates += [(score + lp[v], k, v) for v in range(vocab_size)]
      candidates.sort(key=lambda c: -c[0])
      top = candidates[: 2 * beams]
      next_beams = []
      for rank, (score, k, v) in enumerate(top):
        if v in stops:
          if rank < beams:
            add(score / max(t, 1) ** penalty, open_beams[k][0])
        else:
          next_beams.append((open_beams[k][0] + [v], score))
        if len(next_beams) == beams:
          break
      open_beams = next_beams
      if len(hyps) >= beams and min(h[0] for h in hyps) >= top[0][0] / max(t, 1) ** penalty:
        done = True
        break
    if not done:
      for tokens, score in open_beams:
        add(score / max(len(tokens), 1) ** penalty, tokens)
    score, best = max(hyps, key=lambda h: h[0])
    spans.append(best)
    scores.append(score)
    done_spans.append((blank, tuple(best)))
  return spans, scores


@pytest.mark.parametrize(
  "options",
  [
    DecodeOptions(strategy="beam", num_beams=3, max_span_length=5, length_penalty=1.0),
    DecodeOptions(
      strategy="beam", num_beams=2, max_span_length=4, length_penalty=0.0, min_span_length=2, no_repeat_ngram_size=2
    ),  # fmt: skip
  ],
  ids=["lp1", "lp0-min2-ngram2"],
)
def test_beam_search_equals_the_hf_scorer_rules(tiny, options):
  model, params = tiny
  options = DecodeOptions(**{**options.__dict__, "stop_ids": STOPS})
  prompts = _prompts(1, 3)
  log_probs = _oracle(model, params)
  generations = generate(model, params, prompts, ids=IDS, options=options)
  for prompt, generation in zip(prompts, generations):
    spans, scores = hf_beam_search(log_probs, prompt, options, STOPS, model.config.padded_vocab_size)
    assert generation.spans == spans
    np.testing.assert_allclose(generation.scores, scores, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_with_enough_beams_is_an_exhaustive_search(length_penalty):
  """12 tokens (2 of them stop tokens), spans of at most 2: 122 possible fills, 128 beams keep every one."""
  model, params = _model(vocab_size=12, vocab_multiple=1, seed=3)
  prompt = [IDS.cls, 8, IDS.mask, 9, IDS.eos]
  log_probs = _oracle(model, params)
  outcomes = {}  # fill -> score
  first = log_probs(tuple(prompt), ((2, ()),))
  for stop in (IDS.eop, IDS.eos):
    outcomes[(stop,)] = first[stop]
  for a in set(range(12)) - {IDS.eop, IDS.eos}:
    second = log_probs(tuple(prompt), ((2, (a,)),))
    for b in range(12):
      fill = (a, b) if b not in (IDS.eop, IDS.eos) else (a, "stop", b)
      score = first[a] + second[b]
      outcomes[fill] = score / (2 if len(fill) == 2 else 1) ** length_penalty
  best = max(outcomes, key=outcomes.get)
  options = DecodeOptions(strategy="beam", num_beams=128, max_span_length=2, length_penalty=length_penalty)
  (generation,) = generate(model, params, [prompt], ids=IDS, options=options)
  assert generation.spans == [[t for t in best if t != "stop" and t not in (IDS.eop, IDS.eos)]]
  np.testing.assert_allclose(generation.scores, [outcomes[best]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("top_k", "top_p"), [(3, 1.0), (0, 0.6), (4, 0.8)])
def test_sampling_frequencies_match_the_truncated_distribution(top_k, top_p):
  log_probs = jax.nn.log_softmax(jnp.array([2.0, 1.5, 1.2, 1.0, 0.5, 0.2, -0.5, -1.0]))
  draws = 40_000
  keys = jax.random.split(jax.random.key(0), draws)
  temperature = 0.8
  tokens = np.asarray(
    jax.jit(decode.sample_logits, static_argnums=(2, 3, 4))(
      jnp.broadcast_to(log_probs, (draws, 8)), keys, temperature, top_k, top_p
    )
  )
  probs = np.asarray(jax.nn.softmax(log_probs / temperature), np.float64)
  keep = np.ones(8, bool)
  if top_k:
    keep[np.argsort(-probs)[top_k:]] = False
  truncated = np.where(keep, probs, 0.0) / np.where(keep, probs, 0.0).sum()
  before = np.cumsum(np.sort(truncated)[::-1]) - np.sort(truncated)[::-1]
  keep[np.argsort(-truncated)[before > top_p]] = False
  expected = np.where(keep, truncated, 0.0) / np.where(keep, truncated, 0.0).sum()
  counts = np.bincount(tokens, minlength=8)
  assert counts[~keep].sum() == 0, "a token outside the truncation was drawn"
  assert stats.chisquare(counts[keep], expected[keep] * draws).pvalue > 1e-3


@pytest.mark.parametrize(
  "strategy", ["greedy", pytest.param("sample", marks=pytest.mark.slow), pytest.param("beam", marks=pytest.mark.slow)]
)
def test_a_batch_equals_its_rows_decoded_one_by_one(tiny, strategy):
  model, params = tiny
  options = DecodeOptions(strategy=strategy, num_beams=2, max_span_length=4, stop_ids=STOPS, seed=5)
  prompts = _prompts(2, 3)
  together = generate(model, params, prompts, ids=IDS, options=options)
  for prompt, generation in zip(prompts, together):
    (alone,) = generate(model, params, [prompt], ids=IDS, options=options)
    assert alone.spans == generation.spans
    np.testing.assert_allclose(alone.scores, generation.scores, rtol=1e-5, atol=1e-5)


def test_seeds_reproduce_and_repeated_prompts_sample_independently(tiny):
  model, params = tiny
  prompt = _prompts(3, 1)[0]
  options = DecodeOptions(strategy="sample", max_span_length=6, stop_ids=(), seed=11)
  first = generate(model, params, [prompt] * 4, ids=IDS, options=options)
  again = generate(model, params, [prompt] * 4, ids=IDS, options=options)
  other = generate(model, params, [prompt] * 4, ids=IDS, options=DecodeOptions(**{**options.__dict__, "seed": 12}))
  assert [g.spans for g in first] == [g.spans for g in again]
  assert [g.spans for g in first] != [g.spans for g in other]
  assert len({str(g.spans) for g in first}) > 1, "the same prompt twice in a batch must not sample the same fill"


def test_stop_ids_and_span_limits(tiny):
  model, params = tiny
  prompts = _prompts(4, 4)
  never = generate(model, params, prompts, ids=IDS, options=DecodeOptions(max_span_length=5, stop_ids=()))
  assert all(len(s) == 5 for g in never for s in g.spans)
  options = DecodeOptions(max_span_length=8, min_span_length=3, no_repeat_ngram_size=2, stop_ids=STOPS)
  for generation in generate(model, params, prompts, ids=IDS, options=options):
    for span in generation.spans:
      assert len(span) >= 3
      bigrams = list(zip(span, span[1:]))
      assert len(bigrams) == len(set(bigrams)), span
      assert not set(span) & set(STOPS)


def test_one_compilation_per_bucket(tiny):
  model, params = tiny
  options = DecodeOptions(max_span_length=3, stop_ids=STOPS)
  programs = decode._programs(model, options, STOPS, IDS.sop, None)
  before = programs.fill._cache_size()
  for length in (20, 23, 30):  # one length bucket (32), 2 rows (bucket 2), one blank each
    prompts = [[IDS.cls, *range(20, 20 + length - 3), IDS.mask, IDS.eos]] * 2
    generate(model, params, prompts, ids=IDS, options=options)
  assert programs.fill._cache_size() - before <= 1


def test_errors_name_the_prompt(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match="prompt 1 has no blank"):
    generate(model, params, [[IDS.cls, IDS.mask], [IDS.cls, 30]], ids=IDS, options=DecodeOptions())
  with pytest.raises(ValueError, match="prompt 0 has 130 tokens, more than the model's max_length=128"):
    generate(model, params, [[IDS.cls, IDS.mask] + [30] * 128], ids=IDS, options=DecodeOptions())
  with pytest.raises(ValueError, match="strategy='top'"):
    DecodeOptions(strategy="top")


@pytest.mark.slow
def test_decoding_on_an_8_device_mesh_equals_one_device(tiny, decode_layout):
  from glm_jax.train import partitioning

  model, params = tiny
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
  shardings = partitioning.logical_shardings(partitioning.abstract_boxed_params(model, 8), mesh)
  sharded = jax.device_put(params, shardings)
  assert decode.mesh_of(sharded) is mesh
  prompts = _prompts(5, 3)
  for options in (
    DecodeOptions(max_span_length=4, stop_ids=STOPS),
    DecodeOptions(strategy="beam", num_beams=2, max_span_length=3, stop_ids=STOPS),
  ):
    want = generate(model, params, prompts, ids=IDS, options=options)
    got = generate(model, sharded, prompts, ids=IDS, options=options)
    assert [g.spans for g in got] == [g.spans for g in want]
    np.testing.assert_allclose([s for g in got for s in g.scores], [s for g in want for s in g.scores], atol=1e-4)


def test_cpu_decoding_unrolls_a_scanned_model_unless_its_weights_would_not_fit_twice(monkeypatch):
  model, params = _model()
  assert model.config.scan_layers
  unrolled, unstacked = decode.decoding_layout(model, params)
  assert not unrolled.config.scan_layers and "layers_0" in unstacked and "layers" not in unstacked
  stacked = nn.unbox(params)["layers"]["mlp"]["dense_h_to_4h"]["kernel"]
  np.testing.assert_array_equal(unstacked["layers_1"]["mlp"]["dense_h_to_4h"]["kernel"], stacked[1])
  assert decode.decoding_layout(unrolled, unstacked)[0] is unrolled  # already unrolled: as it is
  monkeypatch.setattr(decode, "_host_memory", lambda: 1024)  # a machine too small for a second copy
  assert decode.decoding_layout(model, params)[0] is model
