"""Batched, cached blank infilling: greedy, sampling and beam search (the generation entry point, docs/design.md).

    generate(model, params, prompts, ids=SpecialIds..., options=DecodeOptions(...)) -> [Generation, ...]

Each prompt is a Part A (its [CLS], blanks and [eos] included). The batch's Part A is prefilled once, bidirectionally,
into a key/value cache (glm_jax.model.cache); then the blanks are filled in position order, all rows' k-th blank at
once. A blank is decoded as Part B: [sop] at the blank's position with block position 1, then each new token at the
same position with block positions 2, 3, ..., one query per row against the cache, in one jitted `lax.while_loop`
that ends when every row has finished the blank. The finished span is then written into the cache as one chunk
([sop] + its tokens, no end token), so later blanks see it, as in THUDM's generate_samples.py.

Shapes are bucketed (rows and Part A length to powers of two, the blanks to a power of two), so a program compiles
once per (batch bucket, length bucket) and options, not per prompt or per token. Rows of a bucket with fewer blanks
idle through the later ones; rows that finished a blank stop writing and are masked, and the loop stops when all
have. Under a mesh (the params' shardings), the batch is split over ("data", "fsdp") and the cache's heads over
"tensor", as the model's activations are.

Beam search follows the HF-style `BeamSearchScorer` of the THUDM code (tasks/seq2seq/evaluate.py with
--select-topk): each step keeps the top 2 * num_beams candidates of sum log-probability (deterministic); a stop
token among the first num_beams closes a hypothesis scored sum / len ** length_penalty (len: its tokens, without the
stop token), the first num_beams other candidates are the next beams; a row is done once num_beams hypotheses are
kept and none of its candidates, normalized by the current length, beats the worst kept; at max_span_length the
open beams are hypotheses too. Each blank keeps its best hypothesis before the next blank starts.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from glm_jax.data.example import SpecialIds
from glm_jax.model import GLM, mask_padded_vocab, unstack_layers
from glm_jax.model.cache import KVCache
from glm_jax.model.sharding import BATCH_AXES, with_mesh_rules

STRATEGIES = ("greedy", "sample", "beam")
_MIN_LENGTH_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How blanks are filled.

  strategy: "greedy", "sample" (temperature, then top_k, then top_p; from `seed`) or "beam" (num_beams,
    length_penalty: a hypothesis scores sum / len ** length_penalty).
  max_span_length: tokens of a span at most (without [sop] and the end token); min_span_length: end tokens are
    forbidden before a span has this many. no_repeat_ngram_size: no n-gram occurs twice within the span (0: off).
  stop_ids: tokens that end a span; None: [eop] and [eos] (published 2B/10B models end a [gMASK] continuation with
    [eos]); (): a span always runs to max_span_length.
  """

  strategy: str = "greedy"
  max_span_length: int = 32
  min_span_length: int = 0
  num_beams: int = 4
  length_penalty: float = 1.0
  no_repeat_ngram_size: int = 0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop_ids: tuple[int, ...] | None = None

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(f"strategy={self.strategy!r}; expected one of {STRATEGIES}")
    if self.max_span_length < 1:
      raise ValueError(f"max_span_length={self.max_span_length} must be at least 1")
    if not 0 <= self.min_span_length <= self.max_span_length:
      raise ValueError(f"min_span_length={self.min_span_length} must be in [0, max_span_length={self.max_span_length}]")
    if self.num_beams < 1:
      raise ValueError(f"num_beams={self.num_beams} must be at least 1")
    if self.temperature <= 0:
      raise ValueError(f"temperature={self.temperature} must be positive (greedy decoding: strategy='greedy')")
    if self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0: off) and top_p={self.top_p} in (0, 1] (1: off)")
    if self.no_repeat_ngram_size < 0:
      raise ValueError(f"no_repeat_ngram_size={self.no_repeat_ngram_size} must be >= 0 (0: off)")
    if self.stop_ids is not None:
      object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))

  def stops(self, ids: SpecialIds) -> tuple[int, ...]:
    return (ids.eop, ids.eos) if self.stop_ids is None else self.stop_ids


# The options the `infer` command takes as flags, with their defaults (all but stop_ids).
OPTION_FLAGS = {f.name: f.default for f in dataclasses.fields(DecodeOptions) if f.name != "stop_ids"}


@dataclasses.dataclass(frozen=True)
class Generation:
  """One prompt's fills: `spans`, one token list per blank in position order (no [sop], no end token); `scores`,
  per span the sum of its tokens' log-probabilities (the end token's included when it ended the span), divided by
  len(span) ** length_penalty for beam search."""

  spans: list[list[int]]
  scores: list[float]


def generate(model: GLM, params, prompts: Sequence[Sequence[int]], *, ids: SpecialIds, options: DecodeOptions):
  """Fills every blank ([MASK], [sMASK], [gMASK]) of each prompt (a Part A of token ids as the model sees it);
  returns one Generation per prompt. Raises ValueError naming a prompt without a blank or longer than the model."""
  if not prompts:
    return []
  prompts = [[int(t) for t in p] for p in prompts]
  cfg = model.config
  span = options.max_span_length
  if span + 1 > cfg.max_length:
    raise ValueError(f"max_span_length={span} needs block positions up to {span + 1} > max_length={cfg.max_length}")
  blanks = [[i for i, t in enumerate(p) if t in ids.masks] for p in prompts]
  for i, (p, b) in enumerate(zip(prompts, blanks)):
    if len(p) > cfg.max_length:
      raise ValueError(
        f"prompt {i} has {len(p)} tokens, more than the model's max_length={cfg.max_length} (shorten the text)"
      )
    if not b:
      raise ValueError(f"prompt {i} has no blank ([MASK], [sMASK] or [gMASK]) to fill")

  mesh = mesh_of(params)
  rows = bucket(len(prompts), 1, batch_devices(mesh))
  length = min(bucket(max(map(len, prompts)), _MIN_LENGTH_BUCKET), cfg.max_length)
  num_blanks = max(map(len, blanks))
  blank_slots = bucket(num_blanks, 1)
  capacity = length + blank_slots * (span + 1)

  # Bucket rows beyond the prompts repeat prompt 0 with no blank to fill.
  part_a = np.full((rows, length), ids.pad, np.int32)
  part_a_len = np.full((rows,), len(prompts[0]), np.int32)
  positions = np.zeros((rows, blank_slots), np.int32)
  counts = np.zeros((rows,), np.int32)
  for r in range(rows):
    p, b = (prompts[r], blanks[r]) if r < len(prompts) else (prompts[0], [])
    part_a[r, : len(p)], part_a_len[r] = p, len(p)
    positions[r, : len(b)], counts[r] = b, len(b)
  # A row's random stream depends on the seed, its prompt and how many equal prompts precede it, not on its place in
  # the batch: a batch samples what its rows would alone, and repeated prompts sample independently.
  seen: dict[tuple[int, ...], int] = {}
  streams = np.zeros((rows, 2), np.uint32)
  for r, p in enumerate(prompts):
    occurrence = seen[tuple(p)] = seen.get(tuple(p), -1) + 1
    streams[r] = zlib.crc32(np.asarray(p, np.int32).tobytes()), occurrence

  static = dataclasses.replace(options, seed=0)
  model, params = decoding_layout(model, params)
  programs = _programs(model, static, options.stops(ids), ids.sop, mesh)
  place = programs.place
  cache = programs.prefill(params, place(part_a), place(part_a_len), capacity=capacity)
  base = jax.random.key(options.seed)
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(base, s[0]), s[1]))(jnp.asarray(streams))
  keys = place(np.asarray(jax.random.key_data(keys)))  # as host data: every process places the same rows
  spans: list[list[list[int]]] = [[] for _ in prompts]
  scores: list[list[float]] = [[] for _ in prompts]
  for j in range(num_blanks):
    active = counts > j
    cache, tokens, lengths, blank_scores = programs.fill(
      params, cache, place(positions[:, j]), place(active), keys, jnp.int32(j), commit=j + 1 < num_blanks
    )
    tokens, lengths, blank_scores = (np.asarray(x) for x in (tokens, lengths, blank_scores))
    for r in range(len(prompts)):
      if active[r]:
        spans[r].append(tokens[r, : lengths[r]].tolist())
        scores[r].append(float(blank_scores[r]))
  return [Generation(s, c) for s, c in zip(spans, scores)]


def bucket(n: int, minimum: int, multiple: int = 1) -> int:
  """The power of two >= max(n, minimum), rounded up to a multiple of `multiple`."""
  size = 1 << (max(n, minimum) - 1).bit_length()
  return -(-size // multiple) * multiple


def decoding_layout(model: GLM, params):
  """(model, params) as the decode loop runs them: on XLA:CPU a scanned model's layers are unrolled (its params
  unstacked once per call, a copy of the weights), because there each step of a scanned loop copies every layer's
  weights and cache out of the stack before its matmuls (about half of a GLM-Base step); GPU and TPU keep the scan,
  and its slices, as they are. The copy is skipped (the scan kept) when the weights take more than a quarter of the
  machine's memory; `checkpoints.load_for_inference` hands CPU callers unrolled params to begin with."""
  leaf = jax.tree.leaves(params)[0]
  platform = next(iter(leaf.devices())).platform if isinstance(leaf, jax.Array) else jax.default_backend()
  if platform != "cpu" or not model.config.scan_layers:
    return model, params
  weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nn.unbox(params)))
  if weights > _host_memory() / 4:
    return model, params
  unrolled = GLM(dataclasses.replace(model.config, scan_layers=False))
  return unrolled, _unstack(params, model.config.num_layers)


def _host_memory() -> int:
  """Bytes of physical memory (unknown: as if unbounded)."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return 1 << 62


@functools.partial(jax.jit, static_argnums=1)
def _unstack(params, num_layers: int):
  # Boxed params (nn.LogicallyPartitioned) name the stacked axes; the slices keep their arrays' shardings instead.
  return unstack_layers(nn.unbox(params), num_layers)


def mesh_of(params) -> Mesh | None:
  """The mesh the params are laid out on (a NamedSharding over more than one device), else None."""
  leaf = jax.tree.leaves(params)[0]
  sharding = getattr(leaf, "sharding", None)
  if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
    return sharding.mesh
  return None


def batch_devices(mesh: Mesh | None) -> int:
  """The devices a batch is split over (data x fsdp): rows come in multiples of it."""
  return 1 if mesh is None else int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))


def rows_placer(mesh: Mesh | None):
  """Puts host arrays [rows, ...] onto the mesh, rows split over data x fsdp (as global arrays, so every process of
  a multi-process mesh passes the same host array and keeps its own shards); without a mesh, jnp.asarray."""
  if mesh is None:
    return jnp.asarray
  rows = NamedSharding(mesh, P(BATCH_AXES))

  def place(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, rows, lambda index: host[index])

  return place


@dataclasses.dataclass(frozen=True)
class _Programs:
  prefill: object
  fill: object
  place: object


@functools.lru_cache(maxsize=16)
def _programs(model: GLM, options: DecodeOptions, stops: tuple[int, ...], sop: int, mesh: Mesh | None) -> _Programs:
  """The jitted prefill and blank-filling programs of a model and options (jax.jit keeps one per bucket shape)."""
  wrap = (lambda fn: fn) if mesh is None else (lambda fn: with_mesh_rules(fn, mesh))
  beams = options.num_beams if options.strategy == "beam" else 1
  prefill_program = jax.jit(wrap(functools.partial(prefill, model, beams)), static_argnames="capacity")
  fill_blank = functools.partial(_fill_blank, model, options, stops, sop)
  if mesh is not None:
    fill_blank = _replicating_results(fill_blank, mesh)
  fill = jax.jit(wrap(fill_blank), static_argnames="commit", donate_argnums=1)
  return _Programs(prefill_program, fill, rows_placer(mesh))


def _replicating_results(fill_blank, mesh: Mesh):
  """fill_blank with its spans (tokens, lengths, scores) replicated over the mesh, so that every process of a
  multi-process mesh reads all rows' spans (the cache stays split as it is)."""
  everywhere = NamedSharding(mesh, P())

  def fill(*args, **kwargs):
    cache, *spans = fill_blank(*args, **kwargs)
    return cache, *(jax.lax.with_sharding_constraint(x, everywhere) for x in spans)

  return fill


def prefill(model: GLM, beams: int, params, part_a, part_a_len, *, capacity: int) -> KVCache:
  """The cache of Part A (int [B, A], real tokens first, `part_a_len` [B] of them), each row repeated `beams` times."""
  batch, length = part_a.shape
  index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  segment_ids = (index < part_a_len[:, None]).astype(jnp.int32)
  cache = KVCache.allocate(model.config, batch, capacity)
  cache = cache if model.config.scan_layers else cache.layered()  # unrolled layers: one buffer each, no slicing
  _, cache = model.apply(
    {"params": params}, part_a, index, jnp.zeros_like(index), sep=part_a_len, segment_ids=segment_ids, cache=cache
  )
  return cache if beams == 1 else cache.take(jnp.repeat(jnp.arange(batch), beams))


def _step(model: GLM, params, cache: KVCache, tokens, positions, block_positions, live):
  """One token per row ([R] each) against the cache -> (log-probabilities [R, V] over the real vocabulary, the
  cache with the token written). Rows not `live` are padding: nothing counts for them."""
  column = lambda x: x[:, None].astype(jnp.int32)  # noqa: E731
  logits, cache = model.apply(
    {"params": params},
    column(tokens),
    column(positions),
    column(block_positions),
    sep=jnp.zeros(tokens.shape, jnp.int32),
    segment_ids=column(live),
    cache=cache,
  )
  return jax.nn.log_softmax(mask_padded_vocab(logits[:, 0], model.config.vocab_size), axis=-1), cache


def banned_tokens(span, length, vocab: int, options: DecodeOptions, stops: tuple[int, ...]):
  """bool [R, V]: the tokens a span (int [R, S], its first `length` [R] tokens generated) may not take next:
  the stop tokens before min_span_length, and those that would repeat an n-gram of the span."""
  rows = span.shape[0]
  banned = jnp.zeros((rows, vocab), bool)
  if options.min_span_length > 0 and stops:
    is_stop = jnp.zeros((vocab,), bool).at[jnp.asarray(stops)].set(True)
    banned = banned | ((length < options.min_span_length)[:, None] & is_stop[None, :])
  n = options.no_repeat_ngram_size
  if n > 0 and span.shape[1] >= n:
    windows = span.shape[1] - n + 1  # n-grams span[i : i + n], i < windows
    if n == 1:
      match = jnp.ones((rows, windows), bool)
    else:
      # The span's last n - 1 tokens, which the next token would complete to an n-gram.
      tail = jax.vmap(lambda s, m: jax.lax.dynamic_slice(s, (jnp.maximum(m - n + 1, 0),), (n - 1,)))(span, length)
      match = jnp.stack([jnp.all(span[:, i : i + n - 1] == tail, axis=-1) for i in range(windows)], axis=-1)
    match = match & (jnp.arange(windows)[None, :] + n - 1 < length[:, None])  # only n-grams already generated
    completing = span[:, n - 1 :]  # [R, windows]: the token that completes window i
    hits = jnp.zeros((rows, vocab), bool).at[jnp.arange(rows)[:, None], completing].max(match)
    banned = banned | hits
  return banned


def _without_banned(log_probs, span, length, options: DecodeOptions, stops: tuple[int, ...]):
  """log_probs [R, V] with the banned tokens at -inf; without a ban in the options, log_probs as they are (no
  [R, V] mask built on every step)."""
  if not (options.min_span_length > 0 and stops) and not options.no_repeat_ngram_size:
    return log_probs
  banned = banned_tokens(span, length, log_probs.shape[-1], options, stops)
  return jnp.where(banned, -jnp.inf, log_probs)


def sample_logits(log_probs, keys, temperature: float, top_k: int, top_p: float):
  """One token per row drawn from softmax(log_probs / temperature) truncated to its top_k tokens (0: all), then to
  the smallest prefix of them whose probability reaches top_p (1: all); log_probs [R, V], keys [R] -> int32 [R]."""
  logits = log_probs / temperature
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    ordered = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above
    keep_ordered = before <= top_p  # the first token is always kept
    keep = jnp.zeros_like(keep_ordered).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_ordered)
    logits = jnp.where(keep, logits, -jnp.inf)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _fill_blank(model: GLM, options, stops, sop, params, cache: KVCache, positions, active, keys, blank, *, commit):
  """Fills one blank of each row (`positions` [B]: its index in Part A; rows not `active` skip it; `keys`: each
  row's random key data) and, with `commit`, writes the chosen span into the cache. Returns (cache, tokens [B, S],
  lengths [B], scores [B])."""
  start = cache.lengths
  keys = jax.random.wrap_key_data(keys)  # [B, 2] uint32 -> keys
  if options.strategy == "beam":
    cache, tokens, lengths, scores = _beam_search(model, options, stops, sop, params, cache, positions, active)
  else:
    cache, tokens, lengths, scores = _single(model, options, stops, sop, params, cache, positions, active, keys, blank)
  if commit:
    cache = _commit(model, sop, params, cache.with_lengths(start), positions, tokens, lengths, active)
  return cache, tokens, lengths, scores


def _commit(model: GLM, sop, params, cache: KVCache, positions, tokens, lengths, active) -> KVCache:
  """Writes [sop] + each row's span (tokens [B, S], `lengths` [B] of them) into the cache as one chunk, on each of
  the cache's rows of that prompt (a beam search's beams all continue from the chosen span)."""
  batch, span = tokens.shape
  copies = cache.lengths.shape[0] // batch
  chunk = jnp.concatenate([jnp.full((batch, 1), sop, jnp.int32), tokens], axis=1)  # [B, S + 1]
  real = (jnp.arange(span + 1)[None, :] <= lengths[:, None]) & active[:, None]
  block = jnp.broadcast_to(jnp.arange(1, span + 2, dtype=jnp.int32), chunk.shape)
  repeat = lambda x: jnp.repeat(x, copies, axis=0)  # noqa: E731
  _, cache = model.apply(
    {"params": params},
    repeat(chunk),
    repeat(jnp.broadcast_to(positions[:, None], chunk.shape)),
    repeat(block),
    sep=jnp.zeros((batch * copies,), jnp.int32),
    segment_ids=repeat(real.astype(jnp.int32)),
    cache=cache,
  )
  return cache


def _single(model: GLM, options, stops, sop, params, cache, positions, active, keys, blank):
  """Greedy or sampled decoding of one blank per row (one row per prompt)."""
  batch, span = positions.shape[0], options.max_span_length
  stop_ids = jnp.asarray(stops if stops else (-1,), jnp.int32)
  keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, blank)

  def body(state):
    t, cache, token, tokens, length, score, done = state
    log_probs, cache = _step(model, params, cache, token, positions, jnp.full((batch,), t + 1), ~done)
    allowed = _without_banned(log_probs, tokens, length, options, stops)
    if options.strategy == "greedy":
      chosen = jnp.argmax(allowed, axis=-1).astype(jnp.int32)
    else:
      step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
      chosen = sample_logits(allowed, step_keys, options.temperature, options.top_k, options.top_p)
    live = ~done
    ends = jnp.isin(chosen, stop_ids)
    grows = live & ~ends
    score = score + jnp.where(live, jnp.take_along_axis(log_probs, chosen[:, None], axis=-1)[:, 0], 0.0)
    tokens = tokens.at[:, t].set(jnp.where(grows, chosen, tokens[:, t]))
    length = length + grows
    done = done | ends | (length >= span)
    return t + 1, cache, chosen, tokens, length, score, done

  def cond(state):
    t, *_, done = state
    return (t < span) & ~jnp.all(done)

  state = (
    jnp.int32(0),
    cache,
    jnp.full((batch,), sop, jnp.int32),
    jnp.zeros((batch, span), jnp.int32),
    jnp.zeros((batch,), jnp.int32),
    jnp.zeros((batch,), jnp.float32),
    ~active,
  )
  _, cache, _, tokens, length, score, _ = jax.lax.while_loop(cond, body, state)
  return cache, tokens, length, score


def _beam_search(model: GLM, options, stops, sop, params, cache, positions, active):
  """Beam search over one blank per prompt; the cache holds num_beams rows per prompt (prompt-major)."""
  batch, span, beams = positions.shape[0], options.max_span_length, options.num_beams
  vocab, penalty = model.config.padded_vocab_size, options.length_penalty
  stop_ids = jnp.asarray(stops if stops else (-1,), jnp.int32)
  rows = batch * beams
  row_positions = jnp.repeat(positions, beams)
  prompt_of = jnp.arange(batch)[:, None]
  normalize = lambda scores, t: scores / jnp.maximum(t, 1).astype(jnp.float32) ** penalty  # noqa: E731

  def keep_best(kept, kept_tokens, kept_length, new, new_tokens, new_length):
    """The num_beams best of the kept hypotheses and the new ones (HF's BeamHypotheses.add, one step at a time)."""
    scores = jnp.concatenate([kept, new], axis=1)
    best, pick = jax.lax.top_k(scores, beams)
    pool_tokens = jnp.concatenate([kept_tokens, new_tokens], axis=1)
    pool_length = jnp.concatenate([kept_length, new_length], axis=1)
    return best, pool_tokens[prompt_of, pick], pool_length[prompt_of, pick]

  def body(state):
    t, cache, beam_scores, beam_tokens, kept, kept_tokens, kept_length, done = state
    live = jnp.repeat(~done, beams)
    token = jnp.where(t == 0, sop, beam_tokens[:, :, jnp.maximum(t - 1, 0)].reshape(rows))
    log_probs, cache = _step(model, params, cache, token, row_positions, jnp.full((rows,), t + 1), live)
    flat_tokens = beam_tokens.reshape(rows, span)
    log_probs = _without_banned(log_probs, flat_tokens, jnp.full((rows,), t), options, stops)
    candidates = (beam_scores[:, :, None] + log_probs.reshape(batch, beams, vocab)).reshape(batch, beams * vocab)
    top, index = jax.lax.top_k(candidates, 2 * beams)  # sorted, best first
    token_of, beam_of = index % vocab, index // vocab
    ends = jnp.isin(token_of, stop_ids)
    rank = jnp.arange(2 * beams)[None, :]
    # A stop token among the first num_beams candidates closes its beam's hypothesis (length t).
    closing = jnp.where(ends & (rank < beams), normalize(top, t), -jnp.inf)
    new_kept = keep_best(
      kept, kept_tokens, kept_length, closing, beam_tokens[prompt_of, beam_of], jnp.full((batch, 2 * beams), t)
    )
    # The first num_beams other candidates continue (fewer only if stop tokens fill the 2 * num_beams).
    continuing = jnp.argsort(jnp.where(ends, rank + 2 * beams, rank), axis=1)[:, :beams]
    alive = ~jnp.take_along_axis(ends, continuing, axis=1)
    source = jnp.take_along_axis(beam_of, continuing, axis=1)
    new_scores = jnp.where(alive, jnp.take_along_axis(top, continuing, axis=1), -jnp.inf)
    new_tokens = beam_tokens[prompt_of, source].at[:, :, t].set(jnp.take_along_axis(token_of, continuing, axis=1))
    full = jnp.all(jnp.isfinite(new_kept[0]), axis=1)
    finished = full & (jnp.min(new_kept[0], axis=1) >= normalize(top[:, 0], t))
    # Rows already done keep everything as it was (HF pads them).
    update = ~done
    pick = lambda new, old: jnp.where(update.reshape((batch,) + (1,) * (old.ndim - 1)), new, old)  # noqa: E731
    beam_scores, beam_tokens = pick(new_scores, beam_scores), pick(new_tokens, beam_tokens)
    kept, kept_tokens, kept_length = (pick(n, o) for n, o in zip(new_kept, (kept, kept_tokens, kept_length)))
    order = jnp.where(update[:, None], source, jnp.arange(beams)[None, :]) + prompt_of * beams
    cache = cache.take(order.reshape(rows))
    return t + 1, cache, beam_scores, beam_tokens, kept, kept_tokens, kept_length, done | (update & finished)

  def cond(state):
    t, *_, done = state
    return (t < span) & ~jnp.all(done)

  first_beam_only = jnp.where(jnp.arange(beams) == 0, 0.0, -1e9)
  state = (
    jnp.int32(0),
    cache,
    jnp.broadcast_to(first_beam_only, (batch, beams)),
    jnp.zeros((batch, beams, span), jnp.int32),
    jnp.full((batch, beams), -jnp.inf),
    jnp.zeros((batch, beams, span), jnp.int32),
    jnp.zeros((batch, beams), jnp.int32),
    ~active,
  )
  t, cache, beam_scores, beam_tokens, kept, kept_tokens, kept_length, done = jax.lax.while_loop(cond, body, state)
  # Rows still open at max_span_length: their open beams are hypotheses too (HF's finalize).
  open_scores = jnp.where(done[:, None], -jnp.inf, normalize(beam_scores, t))
  kept, kept_tokens, kept_length = keep_best(
    kept, kept_tokens, kept_length, open_scores, beam_tokens, jnp.full((batch, beams), t)
  )
  return cache, kept_tokens[:, 0], kept_length[:, 0], kept[:, 0]
