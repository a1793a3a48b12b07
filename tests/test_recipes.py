"""The pretraining recipes (gin/pretrain/*.gin) hold the settings of the THUDM scripts they are named after.

REFERENCE restates, per recipe, the values of docs/recipes.md's tables (read from THUDM/GLM 4f61ed7's config/*.sh and
their DeepSpeed JSON files); the test builds each recipe's experiment with gin and compares."""

from __future__ import annotations

import os
import re

import gin
import pytest

from glm_jax import gin_config

pytestmark = pytest.mark.usefixtures("empty_gin_config")

# recipe: (layers, hidden, heads, length, task Task or mixture rates, document (min_ratio, suffix_prob) or None,
#          lr, decay style, decay steps, floor, warmup steps, steps, global batch, b2, eps, weight decay)
REFERENCE = {
  "base": (12, 768, 12, 512, "glm_token_embedded", None, 4e-4, "cosine", 120000, 0.05, 6000, 150000, 16 * 256, 0.98,
           1e-6, 0.1),
  "large": (24, 1024, 16, 512, "glm_token_embedded", None, 2e-4, "cosine", 160000, 0.05, 8000, 200000, 16 * 256, 0.98,
            1e-6, 0.1),
  "large_chinese": (24, 1024, 16, 512, (0.4, 0.3, 0.3), (0.25, 0.5), 4e-4, "cosine", 200000, 0.1, 8000, 250000,
                    32 * 256, 0.98, 1e-6, 0.01),
  "10b": (48, 4096, 64, 512, (0.5, 0.3, 0.2), (0.25, 0.5), 1e-4, "cosine", 175000, 0.1, 7000, 250000, 21 * 256, 0.95,
          1e-8, 0.1),
  "10b_chinese": (48, 4096, 64, 512, (0.5, 0.3, 0.2), (0.25, 0.5), 1e-4, "cosine", 120000, 0.1, 4800, 150000, 21 * 256,
                  0.95, 1e-8, 0.1),
  "10b_longer": (48, 4096, 64, 1024, (0.43, 0.285, 0.285), (0.25, 0.5), 3e-5, "linear", 50000, 0.1, 250, 250000,
                 8 * 256, 0.95, 1e-8, 0.1),
  "roberta_large": (24, 1024, 16, 512, "glm_token_embedded", None, 4e-4, "linear", 500000, 0.025, 30000, 500000,
                    16 * 8 * 256, 0.98, 1e-6, 0.01),
}  # fmt: skip


# --short-seq-prob and --single-span-prob of each recipe (single span: as a share of the token examples).
SHORT_AND_SINGLE = {"large_chinese": (0.02, 0.0), "10b": (0.02, 0.0), "10b_chinese": (0.02, 0.0),
                    "10b_longer": (0.5, 0.05 / 0.43)}  # fmt: skip


# --block-mask-prob of each recipe (the others leave it at 0).
BLOCK_MASK = {"large_chinese": 0.1, "10b": 0.1, "10b_chinese": 0.1, "10b_longer": 0.1}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_recipe_holds_its_reference_scripts_settings(name):
  (layers, hidden, heads, length, data, document, lr, style, decay, floor, warmup, steps, batch, b2, eps,
   wd) = REFERENCE[name]  # fmt: skip
  gin_config.parse_gin([f"gin/pretrain/{name}.gin"], [])
  exp = gin_config.experiment()
  m, t, o = exp.model, exp.train, exp.optimizer
  assert (m.num_layers, m.hidden_size, m.num_heads) == (layers, hidden, heads)
  assert t.length == length <= m.max_length
  if isinstance(data, str):
    assert exp.data.mixture_or_task_name == data
    assert t.loss.objective_weights is None  # one objective: the token mean is the reference's
  else:
    import tasks

    assert tuple(tasks.pretrain.glm_mixture_rates().values()) == data
    # Each objective gets its rate of the gradient, as the reference's one objective per micro-batch gives it.
    assert t.loss.objective_weights == tasks.pretrain.glm_mixture_rates()
    objective = tasks.pretrain.DocumentObjective()
    assert (objective.min_ratio, objective.suffix_prob) == document
    assert m.task_mask  # [sMASK] and [gMASK] exist for the sentence and document objectives
  token = gin.query_parameter("TokenObjective.mask_ratio"), gin.query_parameter("TokenObjective.max_span_length")
  assert token == (0.15, 39)
  assert (o.learning_rate, o.decay_style, o.decay_steps, o.min_lr_ratio, o.warmup_steps) == (lr, style, decay, floor,
                                                                                             warmup)  # fmt: skip
  assert (t.num_steps, t.batch_size, o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm) == (steps, batch, 0.9, b2,
                                                                                              eps, wd, 1.0)  # fmt: skip
  assert t.batch_size % t.accumulation_steps == 0
  import tasks

  short, single = SHORT_AND_SINGLE.get(name, (0.0, 0.0))
  objectives = (tasks.pretrain.TokenObjective(), tasks.pretrain.SentenceObjective(), tasks.pretrain.DocumentObjective())
  assert [o.short_seq_prob for o in objectives] == [short] * 3
  assert all(o.eos for o in objectives)  # documents end with [eos]
  assert objectives[0].single_span_prob == pytest.approx(single, abs=1e-4)
  assert objectives[0].block_mask_prob == BLOCK_MASK.get(name, 0.0)


def test_every_reference_script_has_a_recipe_and_a_table():
  doc = open(os.path.join(gin_config.REPO_ROOT, "docs", "recipes.md")).read()
  tables = dict(re.findall(r"^## .*: `gin/pretrain/(\w+)\.gin` <- `config/(\w+)\.sh`", doc, re.M))
  assert set(tables) == set(REFERENCE)
  assert set(tables.values()) == {"ds_block_base", "ds_block_large", "ds_block_large_chinese", "ds_block_10B",
                                  "ds_block_10B_chinese", "ds_block_10B_longer", "ds_blockta_large"}  # fmt: skip
  for name in REFERENCE:
    assert os.path.exists(os.path.join(gin_config.REPO_ROOT, "gin", "pretrain", f"{name}.gin"))
