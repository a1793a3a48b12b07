"""Ahead-of-time compilation of the train step from abstract state and batch (on this host's devices here; the
`compile` command's TPU slices are tests/test_main.py's)."""

from __future__ import annotations

import jax

from glm_jax.model import GLMConfig
from glm_jax.train import aot, optimizer, partitioning, step
from glm_jax.train.loop import TrainConfig


def _compile(**train):
  config = GLMConfig(vocab_size=128, hidden_size=32, num_layers=1, num_heads=2, max_length=32)
  tc = TrainConfig(batch_size=4, length=32, num_steps=2, **train)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  return aot.compile_train_step(config, tc, optimizer.OptimizerConfig(warmup_steps=1), mesh)


def test_the_train_step_compiles_for_the_cloze_layout_with_its_label_feature():
  # The cross-entropy loss reads each row's right candidate: the abstract batch must hold it (else a KeyError).
  assert "cloze_label" in str(_compile(loss=step.LossConfig(cloze_candidates=2)).in_tree)
  assert "cloze_label" not in str(_compile().in_tree)
