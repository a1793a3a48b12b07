"""The SuperGLUE fine-tuning recipes (gin/finetune/<task>.gin: GLM-Large; gin/finetune/10b/<task>.gin: GLM-10B) hold
the hyper-parameters of the THUDM reference's scripts.

REFERENCE restates by hand, per task and model, what THUDM/GLM 4f61ed7 runs (docs/recipes.md, "SuperGLUE
fine-tuning", has the same table with the departures). GLM-Large: scripts/finetune_superglue.sh with
config_tasks/model_blocklm_large.sh and config_tasks/task_<task>.sh; GLM-10B: scripts/ds_finetune_superglue.sh with
config_tasks/model_blocklm_10B.sh, the task's file and config_tasks/config_blocklm_10B.json. Each test parses one recipe
with gin and builds its experiment (no data is read, nothing is trained); the steps, warmup and batch rows are derived
here from the table. Citations: T = config_tasks/task_<task>.sh, FS = scripts/finetune_superglue.sh,
DS = scripts/ds_finetune_superglue.sh, J = config_tasks/config_blocklm_10B.json, JR = its ReCoRD twin
config_tasks/config_blocklm_10B_record.json, AR = arguments.py, DSET = tasks/superglue/dataset.py,
PVP = tasks/superglue/pvp.py, ML / M10 = config_tasks/model_blocklm_large.sh / model_blocklm_10B.sh."""

from __future__ import annotations

import math
import os
import re

import gin
import pytest

from glm_jax import gin_config
from glm_jax.data import superglue

pytestmark = pytest.mark.usefixtures("empty_gin_config")

TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")

# (task, model): (epochs, batch in examples, lr, warmup fraction, weight decay, pattern id, loss, multi-token,
#                 max length).
# Large: epochs EPOCH_SINGLE (T:7, FS:36); batch BATCH_SIZE (T:23, MultiRC T:24, WSC T:26) split over the GPUs
# (FS:15, 35: global = BATCH_SIZE; FS:35 comes after MultiRC's own --batch-size 16, T:10); lr LR_SINGLE (T:6, FS:37);
# the rest from TRAIN_ARGS (T:10-13; MultiRC T:11-14; WSC T:10-16); seq length MAX_SEQ_LEN (T:4, FS:27).
# 10B: epochs XXLARGE_EPOCH (T:8, DS:41); batch 4 a GPU x 2 accumulated (J:2-3) x 8 GPUs (DS:9-11), ReCoRD
# 1 x 8 (JR:2-3, its T:19 comes after DS:21) x 8; lr 5e-6 (J:26) and weight decay 0.01 (J:32) override the command
# line (AR:455-467); pattern 0 for all: DS:38 passes --pattern-id 0 after the task's (DS:36), argparse keeps the last.
# Loss: cross_entropy (AR:366-367) but WSC's mix (T:13). Multi-token: --multi-token is never passed (AR:364), but
# the COPA, WSC and ReCoRD patterns always are (PVP:423-425, 534-536, 647-649).
REFERENCE = {
  ("boolq", "large"): (20, 16, 1e-5, 0.1, 0.1, 4, "cross_entropy", False, 256),  # T:7, 23, 6, 11, 12, 13, 4
  ("boolq", "10b"): (24, 64, 5e-6, 0.1, 0.01, 0, "cross_entropy", False, 256),  # T:8, J:2-3, J:26, T:11, J:32, DS:38
  ("cb", "large"): (50, 16, 1e-5, 0.1, 0.1, 3, "cross_entropy", False, 256),  # T:7, 23, 6, 11, 12, 13, 4
  ("cb", "10b"): (100, 64, 5e-6, 0.1, 0.01, 0, "cross_entropy", False, 256),  # T:8, J:2-3, J:26, T:11, J:32, DS:38
  ("copa", "large"): (50, 16, 1e-5, 0.1, 0.1, 0, "cross_entropy", True, 256),  # T:7, 23, 6, 11, 12, 13, 4
  ("copa", "10b"): (100, 64, 5e-6, 0.1, 0.01, 0, "cross_entropy", True, 256),  # T:8, J:2-3, J:26, T:11, J:32, DS:38
  ("multirc", "large"): (15, 64, 1e-5, 0.1, 0.1, 0, "cross_entropy", False, 512),  # T:7, 24, 6, 12, 13, 14, 4
  ("multirc", "10b"): (12, 64, 5e-6, 0.1, 0.01, 0, "cross_entropy", False, 512),  # T:8, J:2-3, J:26, T:12, J:32
  ("record", "large"): (5, 64, 1e-5, 0.1, 0.1, 0, "cross_entropy", True, 512),  # T:7, 23, 6, 11, 12, 13, 4
  ("record", "10b"): (3, 64, 5e-6, 0.1, 0.01, 0, "cross_entropy", True, 512),  # T:8, JR:2-3, JR:26, T:11, JR:32
  ("rte", "large"): (50, 16, 1e-5, 0.1, 0.1, 0, "cross_entropy", False, 256),  # T:7, 23, 6, 11, 12, 13, 4
  ("rte", "10b"): (50, 64, 5e-6, 0.1, 0.01, 0, "cross_entropy", False, 256),  # T:8, J:2-3, J:26, T:11, J:32, DS:38
  ("wic", "large"): (30, 16, 1e-5, 0.1, 0.1, 1, "cross_entropy", False, 256),  # T:7, 23, 6, 11, 12, 13, 4
  ("wic", "10b"): (40, 64, 5e-6, 0.1, 0.01, 0, "cross_entropy", False, 256),  # T:8, J:2-3, J:26, T:11, J:32, DS:38
  ("wsc", "large"): (50, 16, 1e-5, 0.1, 0.1, 2, "mix", True, 128),  # T:7, 26, 6, 11, 12, 16, 13, 4
  ("wsc", "10b"): (100, 64, 5e-6, 0.1, 0.01, 0, "mix", True, 128),  # T:8, J:2-3, J:26, T:11, J:32, DS:38, T:13
  # config_tasks/task_wsc_generative.sh (TG): the plain WSC files, no --loss-func, --wsc-negative or --pattern-id
  # (AR's defaults), trained by lm_forward_step (tasks/superglue/finetune.py:99-102).
  ("wsc_generative", "large"): (50, 16, 1e-5, 0.1, 0.1, 0, "generative", True, 128),  # TG:7, 19, 6, 11, 12, 4
  ("wsc_generative", "10b"): (100, 64, 5e-6, 0.1, 0.01, 0, "generative", True, 128),  # TG:8, J:2-3, J:26, TG:11
}  # fmt: skip
# The SuperGLUE task of a recipe named otherwise.
TASK_OF = {"wsc_generative": "wsc"}

# What every run of a model shares. Large: linear decay (T:10) to 0.1 of the peak (AR:152), Adam b1/b2/eps
# (AR:379-381), clipping (AR:129), no accumulation (AR:116); 10B: the same decay, Adam betas/eps from J:27-31,
# clipping J:5, accumulation J:3 (ReCoRD JR:3). Model: ML:3-6 (max-position-embeddings 512), M10:5-8 (1024).
OPTIMIZER = {"large": ("linear", 0.1, 0.9, 0.999, 1e-8, 1.0), "10b": ("linear", 0.1, 0.9, 0.95, 1e-8, 1.0)}
ACCUMULATION = {"large": 1, "10b": 2}
ACCUMULATION_10B_RECORD = 8
MODEL = {"large": (24, 1024, 16, 512), "10b": (48, 4096, 64, 1024)}
# Not a reference setting (the reference's GPUs hold the model whole): our mesh (data, fsdp, tensor). Large: the
# default, data parallel; 10B: gin/pretrain/10b.gin's.
MESH = {"large": (-1, 1, 1), "10b": (1, -1, 4)}

# Train examples as the reference's processors produce them from SuperGLUE's train.jsonl (split sizes: the SuperGLUE
# release as the Hugging Face super_glue card and the TFDS catalog list them). COPA: its 400 lines and a mirror of each
# (DSET:608-619); MultiRC: one per answer option; ReCoRD: one per distinct gold answer (DSET:843-860), counted here as
# its 100730 queries (a few have two answer texts); WSC: only the label-True train lines (DSET:501-502), 259 of 554.
TRAIN_EXAMPLES = {"boolq": 9427, "cb": 250, "copa": 800, "multirc": 27243, "record": 100730, "rte": 2490, "wic": 5428,
                  "wsc": 259, "wsc_generative": 259}  # fmt: skip
# Validation examples (the same sources); ReCoRD and WSC evaluate no loss in training, only their metrics (the
# recipes say why).
DEV_EXAMPLES = {"boolq": 3270, "cb": 56, "copa": 100, "multirc": 4848, "rte": 277, "wic": 638}

# Most candidates an example has: the task's verbalizers or choices; ReCoRD train: the answer and at most 9 other
# entities (DSET:806, 847-849); WSC train with --wsc-negative (T:14): the referent and groups of at most 9 negatives
# (DSET:503-510).
# The generative WSC: one row an example, its referent.
CANDIDATES = {"boolq": 2, "cb": 3, "copa": 2, "multirc": 2, "record": 10, "rte": 2, "wic": 2, "wsc": 10,
              "wsc_generative": 1}  # fmt: skip

# --log-interval (T:16; MultiRC T:17, WSC T:19).
LOG_INTERVAL = {"copa": 20}

# The departures the recipes make on purpose (docs/recipes.md): glm-jax has no mix loss.
OUR_LOSS = {"cross_entropy": "cross_entropy", "mix": "cross_entropy", "generative": "generative"}


def recipe(task: str, model: str) -> str:
  return f"gin/finetune/{task}.gin" if model == "large" else f"gin/finetune/10b/{task}.gin"


def expected_schedule(task: str, model: str) -> tuple[int, int, int]:
  """(num_steps, warmup_steps, batch rows): the reference's epochs over its train examples in full batches, its
  warmup fraction of those steps (rounded half up), and its batch of examples as rows of candidates."""
  epochs, batch, _, warmup, *_ = REFERENCE[task, model]
  steps = math.ceil(epochs * TRAIN_EXAMPLES[task] / batch)
  assert warmup == 0.1
  return steps, (steps + 5) // 10, batch * CANDIDATES[task]


def check(task: str, model: str) -> None:
  """Asserts that the parsed recipe of (task, model) holds REFERENCE's settings."""
  import tasks

  epochs, batch, lr, _, weight_decay, pattern, loss, multi_token, length = REFERENCE[task, model]
  steps, warmup, rows = expected_schedule(task, model)
  exp = gin_config.experiment()
  m, t, o, data = exp.model, exp.train, exp.optimizer, exp.data
  config = tasks.superglue.superglue_config()

  layers, hidden, heads, positions = MODEL[model]
  assert (m.num_layers, m.hidden_size, m.num_heads, m.max_length) == (layers, hidden, heads, positions)
  assert m.dtype == "bfloat16" and m.remat_policy == ("full" if model == "10b" else "none")
  checkpoint_overrides = {"dtype": "bfloat16", **({"remat_policy": "full"} if model == "10b" else {})}
  assert gin.query_parameter("model_from_checkpoint.overrides") == checkpoint_overrides
  assert t.init_checkpoint is None  # a converted checkpoint's model.gin binds it
  assert (exp.mesh.data, exp.mesh.fsdp, exp.mesh.tensor) == MESH[model]

  name = TASK_OF.get(task, task)
  assert data.mixture_or_task_name == f"glm_{name}_superglue"
  assert config["patterns"][name] == pattern
  assert config["multi_token"] is False
  assert (name in superglue.ALWAYS_MULTI_TOKEN or config["multi_token"]) == multi_token
  assert config["loss"] == OUR_LOSS[loss]
  if name == "wsc":
    assert config["wsc_negative"] is (task == "wsc")
  c = CANDIDATES[task] if loss != "generative" else None  # the generative loss: Part B the right candidate
  assert (data.pack, data.candidates, t.loss.cloze_candidates, t.loss.objective_weights) == (False, c, c, None)

  assert (t.num_steps, t.batch_size, t.length) == (steps, rows, length)
  assert t.schedule_steps is None  # the schedule spans the run
  accumulation = ACCUMULATION_10B_RECORD if (task, model) == ("record", "10b") else ACCUMULATION[model]
  assert t.accumulation_steps == accumulation and batch % accumulation == 0  # accumulation splits examples
  assert t.length <= m.max_length

  style, floor, b1, b2, eps, clip = OPTIMIZER[model]
  assert (o.learning_rate, o.warmup_steps, o.decay_style, o.decay_steps, o.min_lr_ratio) == (lr, warmup, style, None,
                                                                                              floor)  # fmt: skip
  assert (o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm) == (b1, b2, eps, weight_decay, clip)

  epoch = math.ceil(TRAIN_EXAMPLES[task] / batch)
  assert (t.eval_every, t.checkpoint_every, t.log_every) == (epoch, epoch, LOG_INTERVAL.get(task, 50))
  if task in DEV_EXAMPLES:
    assert (data.eval_split, t.eval_steps) == ("validation", math.ceil(DEV_EXAMPLES[task] / batch))
  else:  # ReCoRD and WSC validation rows do not fit the training layout: no loss, the SuperGLUE metrics alone
    assert (data.eval_split, t.eval_steps) == ("validation", 0)


@pytest.mark.parametrize("task,model", sorted(REFERENCE))
def test_each_recipe_holds_its_reference_scripts_settings(task, model):
  gin_config.parse_gin([recipe(task, model)], [])
  check(task, model)


WRONG = [
  "OptimizerConfig.learning_rate = 2e-5",
  "OptimizerConfig.warmup_steps = 100",
  "OptimizerConfig.weight_decay = 0.0",
  "OptimizerConfig.decay_style = 'cosine'",
  "OptimizerConfig.min_lr_ratio = 0.0",
  "OptimizerConfig.b2 = 0.98",
  "OptimizerConfig.eps = 1e-6",
  "OptimizerConfig.grad_clip_norm = None",
  "TrainConfig.num_steps = 1000",
  "TrainConfig.batch_size = 64",
  "TrainConfig.length = 512",
  "TrainConfig.accumulation_steps = 4",
  "superglue_config.pattern_ids = {'rte': 1}",
  "superglue_config.loss = 'generative'",
  "superglue_config.multi_token = True",
  "DataConfig.candidates = 3",
  "LossConfig.cloze_candidates = 3",
  "DataConfig.pack = True",
  "model_preset.name = 'base'",
  "experiment.mesh_config = @MeshConfig()\nMeshConfig.tensor = 2",
]


@pytest.mark.parametrize("model", ["large", "10b"])
@pytest.mark.parametrize("binding", WRONG)
def test_a_wrong_value_fails_the_check(binding, model):
  gin_config.parse_gin([recipe("rte", model)], [binding])
  with pytest.raises(AssertionError):
    check("rte", model)


def test_the_10b_recipes_change_the_large_ones():
  for task in TASKS:  # (10b/wsc_generative.gin changes 10b/wsc.gin as wsc_generative.gin changes wsc.gin)
    text = open(os.path.join(gin_config.REPO_ROOT, recipe(task, "10b"))).read()
    assert re.search(rf"^include '{re.escape(recipe(task, 'large'))}'$", text, re.M), task


def test_the_docs_table_has_every_recipe_with_its_steps():
  doc = open(os.path.join(gin_config.REPO_ROOT, "docs", "recipes.md")).read()
  heading = "## SuperGLUE fine-tuning: `gin/finetune/<task>.gin` <- `config_tasks/task_<task>.sh`"
  assert heading in doc
  section = doc[doc.index(heading) :]
  for (task, model), (epochs, batch, *_) in REFERENCE.items():
    row = re.search(rf"^\| {task} \| {'Large' if model == 'large' else '10B'} \|.*$", section, re.M)
    assert row, (task, model)
    steps, warmup, rows = expected_schedule(task, model)
    assert f"{steps} / {warmup} / {rows} (C {CANDIDATES[task]})" in row.group(0), (task, model)
    assert f"| {TRAIN_EXAMPLES[task]} " in row.group(0), (task, model)


# The summarization recipes (gin/finetune/{cnn_dailymail,xsum,gigaword}.gin): GLM-10B as the reference's README runs
# it, scripts/ds_finetune_seq2seq.sh (SDS) with config_tasks/model_blocklm_10B.sh (M10), config_tasks/seq_<task>.sh
# (S: seq_cnndm_org.sh, seq_xsum.sh, seq_gigaword.sh) and config_tasks/config_blocklm_10B_cnndm.json (JC).
# dataset: (epochs S:5, train pairs, src S:18, tgt S:19, min tgt S:20, length penalty S:21, beams S:23; line numbers
# of seq_cnndm_org.sh, seq_gigaword.sh's TASK_ARGS are one line earlier).
SEQ2SEQ_REFERENCE = {
  "cnn_dailymail": (10, 287226, 608, 160, 55, 0.7, 5),
  "xsum": (6, 204045, 608, 60, 10, 1.0, 6),
  "gigaword": (10, 3803957, 192, 32, 0, 0.6, 5),
}
# Shared: batch 4 a GPU (JC:2) x 1 accumulated (JC:3) x 2 nodes x 8 GPUs (SDS:9-10); lr 5e-6 and weight decay 0.01
# (JC:26, 32) override --lr and --weight-decay (AR:455-467); Adam betas / eps (JC:27-31), clipping (JC:5); warmup 0.06,
# linear decay (S:7-8) to 0.1 (AR:152); label smoothing 0.1 (S:10); save / log / eval intervals (S:12-15).
SEQ2SEQ_SHARED = dict(batch=64, lr=5e-6, weight_decay=0.01, b1=0.9, b2=0.95, eps=1e-8, clip=1.0, warmup=0.06,
                      smoothing=0.1, log=50, eval_every=1000, eval_steps=100, save=10000)  # fmt: skip


def check_seq2seq(dataset: str) -> None:
  """Asserts that the parsed summarization recipe of `dataset` holds SEQ2SEQ_REFERENCE's and SEQ2SEQ_SHARED's
  settings, and that the Task builds its rows and decodes with the reference's lengths and beam search."""
  import tasks
  from glm_jax.eval import seq2seq as seq2seq_eval

  epochs, pairs, src, tgt, min_tgt, penalty, beams = SEQ2SEQ_REFERENCE[dataset]
  s = SEQ2SEQ_SHARED
  exp = gin_config.experiment()
  m, t, o, data = exp.model, exp.train, exp.optimizer, exp.data
  assert (m.num_layers, m.hidden_size, m.num_heads, m.max_length) == MODEL["10b"]
  assert m.dtype == "bfloat16" and m.remat_policy == "full"
  assert gin.query_parameter("model_from_checkpoint.overrides") == {"dtype": "bfloat16", "remat_policy": "full"}
  assert (exp.mesh.data, exp.mesh.fsdp, exp.mesh.tensor) == MESH["10b"]

  assert (data.mixture_or_task_name, data.eval_split, data.pack) == (f"glm_{dataset}_seq2seq", "validation", False)
  assert tasks.seq2seq.mask() == "[sMASK]"  # M10's --task-mask
  assert tasks.seq2seq.lengths(dataset) == (src, tgt)
  options = seq2seq_eval.decode_options(dataset, tgt, **tasks.seq2seq.seq2seq_config()["decode"])
  assert (options.strategy, options.num_beams, options.length_penalty) == ("beam", beams, penalty)
  assert (options.min_span_length, options.max_span_length, options.no_repeat_ngram_size) == (min_tgt, tgt, 3)

  steps = math.ceil(epochs * pairs / s["batch"])
  assert (t.num_steps, t.batch_size, t.accumulation_steps, t.schedule_steps) == (steps, s["batch"], 1, None)
  assert src + tgt <= t.length <= m.max_length and t.length - (src + tgt) < 32
  assert (t.loss.label_smoothing, t.loss.cloze_candidates, t.loss.objective_weights) == (s["smoothing"], None, None)
  assert (t.log_every, t.eval_every, t.eval_steps, t.checkpoint_every) == (s["log"], s["eval_every"],
                                                                           s["eval_steps"], s["save"])  # fmt: skip
  assert (o.learning_rate, o.warmup_steps, o.decay_style, o.decay_steps, o.min_lr_ratio) == (
    s["lr"], math.floor(steps * s["warmup"] + 0.5), "linear", None, 0.1)  # fmt: skip
  assert (o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm) == (s["b1"], s["b2"], s["eps"], s["weight_decay"],
                                                                   s["clip"])  # fmt: skip


@pytest.mark.parametrize("dataset", sorted(SEQ2SEQ_REFERENCE))
def test_each_summarization_recipe_holds_its_reference_scripts_settings(dataset):
  gin_config.parse_gin([f"gin/finetune/{dataset}.gin"], [])
  check_seq2seq(dataset)


@pytest.mark.parametrize(
  "binding",
  [
    "OptimizerConfig.learning_rate = 1e-5",
    "OptimizerConfig.warmup_steps = 100",
    "OptimizerConfig.weight_decay = 0.1",
    "OptimizerConfig.b2 = 0.999",
    "TrainConfig.num_steps = 1000",
    "TrainConfig.batch_size = 32",
    "TrainConfig.length = 512",
    "LossConfig.label_smoothing = 0.0",
    "seq2seq_config.mask = '[MASK]'",
    "seq2seq_config.max_src_length = 512",
    "seq2seq_config.decode = {'num_beams': 4}",
    "DataConfig.pack = True",
    "model_preset.name = 'large'",
  ],
)
def test_a_wrong_summarization_value_fails_the_check(binding):
  gin_config.parse_gin(["gin/finetune/cnn_dailymail.gin"], [binding])
  with pytest.raises(AssertionError):
    check_seq2seq("cnn_dailymail")
