"""The zero-shot evaluation recipes (gin/eval/{lambada,wikitext}.gin) hold the settings of the THUDM scripts they are
named after: config_tasks/zero_lambada.sh (ZL) and zero_wikitext.sh (ZW) with config_tasks/model_blocklm_10B.sh
(M10), as scripts/evaluate_lm.sh runs them (THUDM/GLM 4f61ed7)."""

from __future__ import annotations

import gin
import pytest

from glm_jax import gin_config

pytestmark = pytest.mark.usefixtures("empty_gin_config")

# recipe: (Task, split, --eval-batch-size, --seq-length, --overlapping-eval or None, row length)
# ZL:4-5 (the test file lambada_test.jsonl, ZL:3); ZW:4-6 (wiki.test.tokens, ZW:3). Windows are seq_length + 1
# tokens long ([CLS], the blank, seq_length - 1 tokens), LAMBADA rows at most seq_length.
REFERENCE = {
  "lambada": ("glm_lambada", "test", 16, 512, None, 512),
  "wikitext": ("glm_wikitext103", "test", 16, 1024, 256, 1025),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("extra", [[], ["language_model_config.unidirectional = True"]])
def test_each_eval_recipe_holds_its_reference_scripts_settings(name, extra):
  import tasks

  task, split, batch, seq_length, overlap, length = REFERENCE[name]
  gin_config.parse_gin([f"gin/eval/{name}.gin"], extra)
  exp = gin_config.experiment()
  m, t, data = exp.model, exp.train, exp.data
  assert (m.num_layers, m.hidden_size, m.num_heads, m.max_length, m.task_mask) == (48, 4096, 64, 1024, True)  # M10
  assert (data.mixture_or_task_name, data.eval_split, data.pack) == (task, split, False)
  assert (t.batch_size, t.length, t.eval_steps) == (batch, length, 0)
  assert t.length <= m.max_length + 1  # the position tables hold rows of max_length + 1 tokens
  config = tasks.language_model.language_model_config()
  assert (config["seq_length"] or tasks.language_model.SEQ_LENGTH[data_kind(task)]) == seq_length
  if overlap is not None:
    assert config["overlap"] == overlap
  assert config["mask"] is None  # the model's: [gMASK] for GLM-10B's task mask
  assert config["unidirectional"] is bool(extra)
  assert gin.query_parameter("model_from_checkpoint.overrides") == {"dtype": "bfloat16"}


def data_kind(task: str) -> str:
  from glm_jax.data import language_model

  return language_model.REGISTERED[task].kind
