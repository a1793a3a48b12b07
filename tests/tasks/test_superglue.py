"""tasks/superglue.py: the SuperGLUE Tasks read the distribution's files, render the reference's patterns and train on
the right candidate; `eval --cloze` scores them with SuperGLUE's metrics."""

from __future__ import annotations

import json
import pathlib

import gin
import numpy as np
import pytest
import seqio

from glm_jax import main
from glm_jax.data import counters, example, feature_converter, superglue, superglue_sources
from tasks import superglue as superglue_tasks

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "superglue"
L = 256


@pytest.fixture
def fixtures_dir():
  gin.clear_config()
  gin.parse_config([f"superglue_config.data_dir = '{FIXTURES}'"])
  yield str(FIXTURES)
  gin.clear_config()


def _rows(task: str, split: str = "train") -> list[dict[str, np.ndarray]]:
  ds = seqio.get_dataset(
    superglue_tasks.task_name(task),
    feature_converter.task_feature_lengths(L),
    dataset_split=split,
    shuffle=False,
    feature_converter=feature_converter.GLMFeatureConverter(pack=False),
  )
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("task", superglue_tasks.TASKS)
def test_each_task_trains_on_the_right_candidate_of_the_references_pattern(task, fixtures_dir):
  vocabulary = superglue_tasks.pretrain.VOCABULARY
  ids = example.SpecialIds.from_vocabulary(vocabulary)
  task_dir = superglue_sources.WSC_NEGATIVE_DIR if task == "wsc" else None
  examples = superglue_sources.read_examples(task, fixtures_dir, "train", task_dir=task_dir)
  rows = _rows(task)
  assert len(rows) == len(examples) and rows
  pattern = superglue.DEFAULT_PATTERNS[task]
  for row, ex in zip(rows, examples):
    size = int(row["segment_ids"].sum())
    segment = {name: row[name][:size] for name in example.FEATURES}
    part_a, spans = example.split(segment)
    question = superglue.cloze(task, ex, pattern)
    ((blank, fill),) = spans
    assert fill.tolist() == vocabulary.encode(question.candidates[question.label])
    expected_a, expected_blank, _ = superglue.part_a_ids(question, vocabulary, ids, L, 1 + fill.size)
    assert part_a.tolist() == expected_a and blank == expected_blank
    assert part_a[0] == ids.cls and part_a[-1] == ids.eos and part_a[blank] == ids.mask


def test_unlabelled_examples_are_skipped_and_counted(fixtures_dir):
  counters.reset()
  test_examples = superglue_sources.read_examples("boolq", fixtures_dir, "test")
  assert test_examples and _rows("boolq", "test") == []
  assert counters.snapshot("superglue/boolq/") == {"superglue/boolq/unlabelled": len(test_examples)}


def test_settings_are_checked_and_missing_data_is_named(tmp_path, monkeypatch):
  gin.clear_config()
  try:
    gin.parse_config(["superglue_config.pattern_ids = {'copa': 3}"])
    with pytest.raises(ValueError, match="copa=3 is not one of the reference's patterns"):
      superglue_tasks.superglue_config()
    gin.clear_config()
    monkeypatch.delenv("GLM_JAX_SUPERGLUE_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"superglue_config.data_dir .*\$GLM_JAX_SUPERGLUE_DIR"):
      superglue_tasks.load_examples("rte", "validation")
    gin.parse_config([f"superglue_config.data_dir = '{tmp_path}'"])
    with pytest.raises(FileNotFoundError, match="RTE"):
      superglue_tasks.load_examples("rte", "validation")
  finally:
    gin.clear_config()


def test_cross_entropy_rows_hold_every_candidate_of_an_example(fixtures_dir):
  gin.parse_config(["superglue_config.loss = 'cross_entropy'"])
  vocabulary = superglue_tasks.pretrain.VOCABULARY
  ids = example.SpecialIds.from_vocabulary(vocabulary)
  examples = superglue_sources.read_examples("copa", fixtures_dir, "train")
  ds = seqio.get_dataset(
    superglue_tasks.task_name("copa"),
    feature_converter.task_feature_lengths(L, cloze=True),
    dataset_split="train",
    shuffle=False,
    feature_converter=feature_converter.GLMFeatureConverter(pack=False, candidates=3),  # one padding row each
    trim_output_features=False,
  )
  rows = list(ds.as_numpy_iterator())
  assert len(rows) == 3 * len(examples)
  for e, ex in enumerate(examples):
    question = superglue.cloze("copa", ex, 0)
    for c in range(3):
      row = rows[3 * e + c]
      assert np.all(row["cloze_label"] == question.label)
      if c == 2:  # the padding candidate: an empty row
        assert not row["segment_ids"].any() and not row["loss_mask"].any()
        continue
      size = int(row["segment_ids"].sum())
      part_a, ((blank, fill),) = example.split({name: row[name][:size] for name in example.FEATURES})
      assert fill.tolist() == vocabulary.encode(question.candidates[c]) and part_a[blank] == ids.mask
      assert row["target_ids"][size - 1] == ids.eop and row["loss_mask"][size - 1] == 1  # multi-token: [eop] scored
  with pytest.raises(ValueError, match="not packed"):
    feature_converter.GLMFeatureConverter(pack=True, candidates=2)
  too_few = feature_converter.GLMFeatureConverter(pack=False, candidates=1)
  ds = seqio.get_dataset(
    superglue_tasks.task_name("copa"), feature_converter.task_feature_lengths(L, cloze=True), dataset_split="train",
    shuffle=False, feature_converter=too_few, trim_output_features=False,
  )  # fmt: skip
  with pytest.raises(Exception, match="raise DataConfig.candidates"):
    next(ds.as_numpy_iterator())


GIN = """
include 'gin/models/tiny.gin'
model_preset.overrides = {'max_length': 256, 'num_layers': 1}
experiment.data = @DataConfig()
DataConfig.mixture_or_task_name = 'glm_copa_superglue'
DataConfig.eval_split = 'validation'
DataConfig.pack = False
experiment.train_config = @TrainConfig()
TrainConfig.num_steps = 2
TrainConfig.batch_size = 8
TrainConfig.length = 256
TrainConfig.log_every = 1
TrainConfig.eval_every = 2
TrainConfig.eval_steps = 1
TrainConfig.checkpoint_every = 2
experiment.optimizer_config = @OptimizerConfig()
OptimizerConfig.warmup_steps = 0
superglue_config.data_dir = '{data}'
"""


CROSS_ENTROPY = """
superglue_config.loss = 'cross_entropy'
DataConfig.candidates = 2
TrainConfig.loss = @LossConfig()
LossConfig.cloze_candidates = 2
"""


@pytest.mark.slow
@pytest.mark.parametrize(
  "task,loss,candidates",
  [("copa", "generative", 2), ("copa", "cross_entropy", 2), ("record", "cross_entropy", 10),
   ("wsc", "cross_entropy", 10), ("wsc", "generative", 1)],
)  # fmt: skip
def test_train_then_eval_cloze_reports_superglue_metrics(tmp_path, task, loss, candidates):
  config = GIN.replace("{data}", str(FIXTURES)).replace("glm_copa_superglue", f"glm_{task}_superglue")
  if loss == "cross_entropy":
    config += CROSS_ENTROPY.replace("= 2", f"= {candidates}") + f"TrainConfig.batch_size = {4 * candidates}\n"
  negative = task == "wsc" and loss == "cross_entropy"
  if negative:  # as gin/finetune/wsc.gin: validation's candidates are not grouped by 9, so no loss rows of C
    config += "TrainConfig.eval_steps = 0\n"
  elif task == "wsc":  # as gin/finetune/wsc_generative.gin: the plain files, judged by greedy decoding
    config += "superglue_config.wsc_negative = False\n"
  (tmp_path / "task.gin").write_text(config)
  run = tmp_path / "run"
  main.run(["train", f"--gin_file={tmp_path / 'task.gin'}", f"--model_dir={run}"])
  task_dir = superglue_sources.WSC_NEGATIVE_DIR if negative else None  # superglue_config.wsc_negative
  examples = superglue_sources.read_examples(task, str(FIXTURES), "validation", task_dir=task_dir)
  metric = "cloze_em" if task == "record" else "cloze_accuracy"
  # Training evaluates the SuperGLUE metrics too (ReCoRD's validation examples accept any gold answer: no one right
  # row, so no loss there, only the metrics).
  (logged,) = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "eval"]
  assert logged["step"] == 2 and logged["cloze_num_examples"] == len(examples) and 0.0 <= logged[metric] <= 1.0
  has_loss = task == "copa" or loss == "generative"
  assert ("loss" in logged) == has_loss, logged
  result = main.run(["eval", f"--gin_file={tmp_path / 'task.gin'}", f"--checkpoint={run}", "--cloze=0"])
  assert result["cloze_num_examples"] == len(examples)
  assert {k: v for k, v in result.items() if k.startswith("cloze_")} == {
    k: v for k, v in logged.items() if k.startswith("cloze_")
  }  # the final checkpoint gives the training run's final evaluation again
  assert ("loss" in result) == has_loss


@pytest.mark.slow
def test_an_eval_split_without_rows_is_refused_at_once_without_a_hook(tmp_path):
  # ReCoRD's validation split gives no loss rows; the loss evaluation alone names the problem instead of reading the
  # repeated source forever.
  config = GIN.replace("{data}", str(FIXTURES)).replace("glm_copa_superglue", "glm_record_superglue")
  (tmp_path / "task.gin").write_text(config + CROSS_ENTROPY.replace("= 2", "= 10") + "TrainConfig.batch_size = 40\n")
  main.run(["train", f"--gin_file={tmp_path / 'task.gin'}", f"--model_dir={tmp_path / 'run'}",
            "--gin.TrainConfig.num_steps=1", "--gin.DataConfig.eval_split=None"])  # fmt: skip
  with pytest.raises(ValueError, match="no target token"):
    main.run(["eval", f"--gin_file={tmp_path / 'task.gin'}", f"--checkpoint={tmp_path / 'run'}"])


# Fine-tuning with the cross-entropy loss learns a cloze task: notebooks/finetune_cloze.ipynb fine-tunes a tiny GLM on
# the toy RTE (glm_jax.data.synthetic.write_toy_rte, gin/finetune/toy_rte.gin) and tests/test_notebooks.py checks that
# it then gets >= 90% of the validation questions right while the untrained model gets <= 80%.
