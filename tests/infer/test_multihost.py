"""Candidate scoring and blank infilling on a mesh that spans 2 processes (localhost, 2 CPU devices each, gloo): every
process passes the same prompts and reads the scores and spans one process computes alone (greedy, sampled, beam
search). Run as a script, this file is the child process."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
import pytest

PROMPTS = [[2, 12, 13, 3, 14, 15], [2, 7, 16], [2, 17, 18, 19, 20, 6, 21, 22, 1], [2, 9, 3, 10, 11]]
BLANKS = [3, 1, 5, 2]
# The last prompt's candidates are every token alone: greedy decoding writes exactly one of them.
CANDIDATES = [
  [[20], [21, 22, 23], [24, 25]],
  [[26, 27]],
  [[28], [29, 30], [31], [32, 33, 34, 35]],
  [[t] for t in range(40)],
]
TIMEOUT_S = 300


def _results(model, params) -> dict[str, list]:
  from glm_jax.data.example import SpecialIds
  from glm_jax.infer import DecodeOptions, generate, scoring

  ids = SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=6, gmask=7, sop=4, eop=5)
  results = {}
  for kind, eop in (("log_likelihood", True), ("greedy", False)):
    got = scoring.score_spans(model, params, PROMPTS, BLANKS, CANDIDATES, ids=ids, eop=eop, greedy=kind == "greedy")
    results[kind] = [s.tolist() for s in got]
  # Five prompts on 4 batch devices: a bucket of 8 rows, 3 of them padding; stops end spans at different steps.
  stops = (ids.eop, ids.eos, *range(8, 20))
  for strategy in ("greedy", "sample", "beam"):
    options = DecodeOptions(
      strategy=strategy, max_span_length=5, num_beams=2, no_repeat_ngram_size=2, top_k=8, seed=3, stop_ids=stops
    )
    got = generate(model, params, [*PROMPTS, PROMPTS[0]], ids=ids, options=options)
    results[f"decode_{strategy}"] = [[g.spans, g.scores] for g in got]
  return results


def _model():
  import flax.linen as nn
  import jax

  from glm_jax.model import GLM, GLMConfig

  model = GLM(GLMConfig(vocab_size=40, num_layers=2, hidden_size=32, num_heads=4, max_length=32, vocab_multiple=64))
  ids = np.zeros((1, 8), np.int32)
  params = model.init(jax.random.key(8), ids, ids, ids, sep=np.array([8]))["params"]
  return model, jax.tree.map(lambda x: 4.0 * np.asarray(x), nn.unbox(params))  # sharper, distinct scores


def _child(coordinator: str, process_id: int, out: str) -> None:
  import jax

  from glm_jax.train import distributed, partitioning

  distributed.initialize(coordinator, 2, process_id)
  model, params = _model()
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=1))  # 4 devices, 2 processes
  shardings = partitioning.logical_shardings(partitioning.abstract_boxed_params(model, 8), mesh)
  sharded = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]), params, shardings)
  assert not jax.tree.leaves(sharded)[0].is_fully_addressable
  pathlib.Path(out).write_text(json.dumps(_results(model, sharded)))


@pytest.mark.slow
def test_two_processes_score_and_decode_as_one(tmp_path, two_processes):
  outs = [tmp_path / f"scores.{p}.json" for p in range(2)]
  two_processes(__file__, lambda coordinator, p: [coordinator, str(p), str(outs[p])], TIMEOUT_S)
  want = _results(*_model())  # this process alone, unsharded
  assert sum(want["greedy"][-1]) == 1.0, want["greedy"]
  lengths = [len(spans[0]) for spans, _ in want["decode_sample"] + want["decode_beam"]]
  assert len(set(lengths)) > 2, lengths  # rows end their spans at different steps
  for out in outs:
    got = json.loads(out.read_text())
    for g, w in zip(got["log_likelihood"], want["log_likelihood"]):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert got["greedy"] == want["greedy"]
    for strategy in ("decode_greedy", "decode_sample", "decode_beam"):
      assert [spans for spans, _ in got[strategy]] == [spans for spans, _ in want[strategy]], strategy
      np.testing.assert_allclose(
        [s for _, scores in got[strategy] for s in scores], [s for _, scores in want[strategy] for s in scores],
        rtol=1e-4, atol=1e-4,
      )  # fmt: skip


if __name__ == "__main__":
  _child(sys.argv[1], int(sys.argv[2]), sys.argv[3])
  # Leave only when both processes are done: the coordination service's shutdown barrier (os._exit skips the atexit
  # one), so process 0 cannot close its sockets while process 1 still reads the last collective's data.
  import jax

  jax.distributed.shutdown()
  os._exit(0)
