"""tasks/language_model.py: the LAMBADA and WikiText Tasks read the reference's files and make the rows of
glm_jax.data.language_model; malformed lines are skipped and counted; a missing blank, file or row length is named;
`eval --lm` scores a saved checkpoint through gin/eval/*.gin."""

from __future__ import annotations

import json

import gin
import numpy as np
import pytest
import seqio

from glm_jax.data import counters, example, feature_converter, language_model as lm
from tasks import language_model as lm_tasks, pretrain

PASSAGES = ["the parser reads the file and returns the values", "each class writes a stream to the disk", "one"]
WIKI = " = Title = \n \n The parser reads the file , and the class @-@ based stream writes values . \n" * 3


@pytest.fixture
def data(tmp_path):
  lines = [json.dumps({"text": t}) for t in PASSAGES] + ["not json", json.dumps({"passage": "no text key"})]
  (tmp_path / "lambada_test.jsonl").write_text("\n".join(lines) + "\n")
  (tmp_path / "wiki.test.tokens").write_text(WIKI)
  (tmp_path / "wiki.valid.tokens").write_text(" = Valid = \n")
  gin.clear_config()
  yield tmp_path
  gin.clear_config()


def _rows(task: str, length: int = 64, split: str = "test", task_mask: bool | None = True):
  converter = feature_converter.GLMFeatureConverter(pack=False)
  lengths = feature_converter.task_feature_lengths(length)

  def read():
    ds = seqio.get_dataset(task, lengths, dataset_split=split, shuffle=False, num_epochs=1,
                           feature_converter=converter)  # fmt: skip
    return list(ds.as_numpy_iterator())

  if task_mask is None:
    return read()
  with lm.model_mask(task_mask):
    return read()


def _bind(data, *more):
  gin.parse_config([f"language_model_config.lambada_file = '{data}/lambada_test.jsonl'",
                    f"language_model_config.wikitext_dir = '{data}'", *more])  # fmt: skip


def _same(row, want):
  size = want["input_ids"].size
  assert int(row["segment_ids"].sum()) == size
  for name in ("input_ids", "target_ids", "loss_mask", "position_ids", "block_position_ids", "sep"):
    np.testing.assert_array_equal(row[name][:size], want[name], err_msg=name)


@pytest.mark.parametrize("unidirectional", [False, True])
def test_lambada_rows_are_the_passages_last_words(data, unidirectional):
  _bind(data, f"language_model_config.unidirectional = {unidirectional}", "language_model_config.seq_length = 64")
  vocabulary = pretrain.task_vocabulary()
  ids = example.SpecialIds.from_vocabulary(vocabulary)
  key = "language_model/glm_lambada/skipped"
  before = counters.snapshot().get(key, 0)
  rows = _rows(lm_tasks.LAMBADA, task_mask=False)
  assert len(rows) == 2  # "one" has no context; the two malformed lines are skipped
  for row, text in zip(rows, PASSAGES):
    context, answer = lm.lambada_tokens(text, vocabulary.encode)
    want, _ = lm.lambada_row(context, answer, ids, mask="[MASK]", max_length=64, unidirectional=unidirectional)
    _same(row, want)
  assert counters.snapshot().get(key, 0) - before == 3


def test_wikitext_rows_are_the_windows_of_the_detokenized_file(data):
  _bind(data, "language_model_config.seq_length = 16", "language_model_config.overlap = 4")
  vocabulary = pretrain.task_vocabulary()
  ids = example.SpecialIds.from_vocabulary(vocabulary)
  tokens = list(vocabulary.encode(lm.wikitext_detokenize(WIKI)))
  windows = lm.windows(len(tokens), 16, 4)
  rows = _rows(lm_tasks.WIKITEXT103, length=17)
  assert len(rows) == len(windows) > 3
  for row, w in zip(rows, windows):
    _same(row, lm.window_row(tokens, w, ids, mask="[gMASK]", unidirectional=False))
  assert sum(int(r["loss_mask"].sum()) for r in rows) == len(tokens) - 1
  assert lm.REGISTERED[lm_tasks.WIKITEXT103].original_words("test") == (lm.original_words(WIKI), 1)


def test_a_perplexity_task_over_files_of_documents(tmp_path):
  (tmp_path / "valid.txt").write_text("the parser reads the file\n\neach class writes a stream to the disk\nx\n")
  name = lm_tasks.register_perplexity_task("toy_lm_docs", {"validation": str(tmp_path / "valid.txt")})
  try:
    gin.clear_config()
    gin.parse_config(["language_model_config.seq_length = 8", "language_model_config.overlap = 2"])
    vocabulary = pretrain.task_vocabulary()
    rows = _rows(name, length=9, split="validation")
    lines = ["the parser reads the file", "each class writes a stream to the disk", "x"]
    scored = sum(max(len(vocabulary.encode(line)) - 1, 0) for line in lines)
    assert sum(int(r["loss_mask"].sum()) for r in rows) == scored
    assert lm.REGISTERED[name].original_words("validation") == (5 + 8 + 1, 3)
  finally:
    gin.clear_config()
    seqio.TaskRegistry.remove(name)
    lm.REGISTERED.pop(name, None)


def test_a_missing_blank_file_or_row_length_is_named(data, tmp_path):
  _bind(data, "language_model_config.seq_length = 64")
  with pytest.raises(Exception, match="bind language_model_config.mask"):
    _rows(lm_tasks.LAMBADA, task_mask=None)
  with pytest.raises(Exception, match="rows of up to 65 tokens .* do not fit in 64: raise TrainConfig.length"):
    _rows(lm_tasks.WIKITEXT103)  # windows of seq_length + 1 tokens
  gin.clear_config()
  gin.parse_config(["language_model_config.mask = '[sMASK]'", "language_model_config.seq_length = 16"])
  with pytest.raises(Exception, match="bind language_model_config.wikitext_dir"):
    _rows(lm_tasks.WIKITEXT103, task_mask=None)
  with pytest.raises(Exception, match="TFDS|lambada"):
    _rows(lm_tasks.LAMBADA, task_mask=None)  # no file, no prepared TFDS lambada here
  gin.parse_config([f"language_model_config.lambada_file = '{tmp_path}/missing.jsonl'"])
  with pytest.raises(Exception, match="missing.jsonl does not exist"):
    _rows(lm_tasks.LAMBADA, task_mask=None)
  with pytest.raises(ValueError, match="expected \\[MASK\\], \\[gMASK\\] or \\[sMASK\\]"):
    lm_tasks.language_model_config(mask="[X]")


def _checkpoint(directory):
  """A converted-style checkpoint (params, its tokenizer, model.gin) of a random one-layer GLM."""
  import flax.linen as nn
  import jax

  from glm_jax.convert import checkpoint as convert
  from glm_jax.model import GLM, GLMConfig
  from glm_jax.train import checkpoints

  vocabulary = pretrain.task_vocabulary()
  config = GLMConfig(vocab_size=vocabulary.vocab_size, num_layers=1, hidden_size=32, num_heads=4, max_length=64)
  ids = np.zeros((1, 8), np.int32)
  params = nn.unbox(GLM(config).init(jax.random.key(3), ids, ids, ids, sep=np.array([8]))["params"])
  checkpoints.save_params(str(directory), config, params)
  checkpoints.save_vocabulary(str(directory), vocabulary)
  convert.write_model_gin(str(directory), with_tokenizer=True)
  return config, params, vocabulary


def test_eval_lm_scores_a_checkpoint_through_the_eval_recipes(data, tmp_path):
  from glm_jax import main
  from glm_jax.eval import language_model as lm_eval
  from glm_jax.model import GLM

  ckpt = tmp_path / "ckpt"
  config, params, vocabulary = _checkpoint(ckpt)
  common = [f"--gin_file={ckpt}/model.gin", f"--checkpoint={ckpt}", "--lm=0", "--gin.TrainConfig.length=64",
            f"--gin.language_model_config.lambada_file='{data}/lambada_test.jsonl'",
            f"--gin.language_model_config.wikitext_dir='{data}'"]  # fmt: skip
  got = main.run(["eval", "--gin_file=gin/eval/lambada.gin", *common, "--gin.language_model_config.seq_length=64"])
  assert got["lambada_examples"] == 2 and 0.0 <= got["lambada_accuracy"] <= 1.0

  got = main.run(["eval", "--gin_file=gin/eval/wikitext.gin", *common, "--gin.language_model_config.seq_length=32",
                  "--gin.language_model_config.overlap=8"])  # fmt: skip
  tokens = list(vocabulary.encode(lm.wikitext_detokenize(WIKI)))
  words = lm.original_words(WIKI)
  assert got["lm_scored_tokens"] == len(tokens) - 1
  assert got["lm_token_ratio"] == pytest.approx((len(tokens) - 1) / (words - 1))
  # The same windows scored here, on one device, by the checkpoint's model as the recipe computes it (bf16).
  ids = example.SpecialIds.from_vocabulary(vocabulary)
  rows = [example.pad(lm.window_row(tokens, w, ids, mask="[gMASK]", unidirectional=False), 64)
          for w in lm.windows(len(tokens), 32, 8)]  # fmt: skip
  stats = lm_eval.row_stats(GLM(config.replace(dtype="bfloat16")), params, lm_eval.batches(rows, 16))
  want = lm_eval.perplexity_metrics(stats, (words, 1))
  assert got["lm_loss"] == pytest.approx(want["lm_loss"], rel=1e-2)
  assert got["lm_adjusted_ppl"] == pytest.approx(want["lm_adjusted_ppl"], rel=1e-2)
  with pytest.raises(ValueError, match="eval --lm scores a zero-shot LM Task; 'glm_facts'"):
    main.run(["eval", "--gin_file=gin/pretrain/quickstart.gin", f"--checkpoint={ckpt}", "--lm=0",
              "--gin.TrainConfig.eval_steps=0", "--gin.DataConfig.eval_split='validation'"])  # fmt: skip
