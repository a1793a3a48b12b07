"""glm-jax entry point, T5X style.

  python -m glm_jax.main train --gin_file=gin/pretrain/quickstart.gin --model_dir=runs/quickstart \
      [--gin.TrainConfig.num_steps=100 ...]
  python -m glm_jax.main eval --gin_file=gin/pretrain/quickstart.gin --checkpoint=runs/quickstart
  python -m glm_jax.main infer --checkpoint=runs/quickstart --text="The [MASK] is in the module."
  python -m glm_jax.main score --checkpoint=runs/quickstart --text="It works with [MASK]." \
      --candidate=paths --candidate="the network"
  python -m glm_jax.main convert --from_pytorch=glm-large/ --output_dir=ckpt/glm-large  # needs [convert]
  python -m glm_jax.main compile --gin_file=gin/pretrain/large.gin --topology=v5e:2x4   # fits? (no TPU needed)

gin binds only here, at the edge: the dataclass configs are gin-configurable and `train` below is the
configurable that builds the Experiment; the library under glm_jax/ never reads gin. A misspelt binding fails at
start with gin's own error naming it. `--gin_search_paths` (default: the repo root) lets gin files `include` each other
by repo-relative paths.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time

import flax.linen as nn
import jax
import seqio
from etils import epath

import gin
from glm_jax import deviceless, ops
from glm_jax.convert import tokenizers as convert_tokenizers
from glm_jax.data import cloze, vocab
from glm_jax.infer import infilling, scoring
from glm_jax.model import GLM, GLMConfig, preset
from glm_jax.train import checkpoints, distributed, inputs, loop, optimizer, partitioning

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPERATIVE_CONFIG_FILE = "operative_config.gin"

gin.external_configurable(loop.TrainConfig, module="glm_jax")
gin.external_configurable(optimizer.OptimizerConfig, module="glm_jax")
gin.external_configurable(partitioning.MeshConfig, module="glm_jax")
gin.external_configurable(inputs.DataConfig, module="glm_jax")


@gin.configurable(module="glm_jax")
def model_preset(name: str = gin.REQUIRED, overrides: dict | None = None) -> GLMConfig:
  """A GLMConfig preset (glm_jax/model/config.py PRESETS) with field overrides, e.g. {"dropout": 0.0}."""
  return preset(name, **(overrides or {}))


@gin.configurable(module="glm_jax")
def model_from_checkpoint(directory: str = gin.REQUIRED, overrides: dict | None = None) -> GLMConfig:
  """The GLMConfig saved with the newest checkpoint under `directory` (a `train` model_dir or a
  `convert --output_dir`), with field overrides, e.g. {"dropout": 0.1, "remat_policy": "full"}."""
  return dataclasses.replace(checkpoints.load_model_config(directory), **(overrides or {}))


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a training run is configured by (gin builds it through `experiment`)."""

  model: GLMConfig
  train: loop.TrainConfig
  optimizer: optimizer.OptimizerConfig
  mesh: partitioning.MeshConfig
  data: inputs.DataConfig


@gin.configurable(module="glm_jax")
def experiment(
  model: GLMConfig = gin.REQUIRED,
  train_config: loop.TrainConfig = gin.REQUIRED,
  optimizer_config: optimizer.OptimizerConfig = gin.REQUIRED,
  mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
  data: inputs.DataConfig = inputs.DataConfig(),
) -> Experiment:
  return Experiment(model, train_config, optimizer_config, mesh_config, data)


def train(model_dir: str, exp: Experiment, progress: bool = True) -> dict:
  """Trains `exp.model` on the seqio Task/Mixture of `exp.data`; see glm_jax/train/loop.py."""
  tc, data = exp.train, exp.data
  checkpoints.ensure_writable(model_dir)  # before any data is read or anything compiled
  inputs.check_fits_model(data, exp.model.vocab_size)
  train_batches = inputs.batches(
    data,
    data.train_split,
    tc.batch_size,
    tc.length,
    repeat=True,
    shuffle=data.shuffle,
    checkpointable=data.checkpoint_input,
  )
  eval_batches = None
  if data.eval_split:
    eval_batches = lambda: inputs.batches(  # noqa: E731
      data, data.eval_split, tc.batch_size, tc.length, repeat=True, shuffle=False
    )
  if jax.process_index() == 0:
    (epath.Path(model_dir) / OPERATIVE_CONFIG_FILE).write_text(gin.operative_config_str())  # local or gs://
  return loop.train(exp.model, tc, exp.optimizer, exp.mesh, train_batches, model_dir, eval_batches, progress=progress)


def evaluate(checkpoint: str, exp: Experiment, cloze_examples: int | None = None) -> dict[str, float]:
  """Loss and accuracy of `checkpoint`'s params on `exp.train.eval_steps` batches of the experiment's eval split
  (its data, batch size and length; the model is `exp.model`, which must fit the checkpoint): the batches the
  training loop evaluates on, so a run's final checkpoint gives its final eval loss again.

  With `cloze_examples` (a cloze Task, glm_jax.data.cloze), also the classification accuracy on the first
  `cloze_examples` examples of the split (0: all), predicting the verbalizer the model finds most likely."""
  tc, data = exp.train, exp.data
  if not data.eval_split:
    raise ValueError("the experiment has no eval split: bind DataConfig.eval_split (e.g. 'validation')")
  template = None
  if cloze_examples is not None:
    template = cloze.TEMPLATES.get(data.mixture_or_task_name)
    if template is None:
      raise ValueError(f"{data.mixture_or_task_name!r} is not a cloze Task (registered: {sorted(cloze.TEMPLATES)})")
    if jax.process_count() > 1:
      raise ValueError("eval --cloze scores on one host: run it as one process (the loss eval runs on many)")
  inputs.check_fits_model(data, exp.model.vocab_size)
  batches = inputs.batches(data, data.eval_split, tc.batch_size, tc.length, repeat=True, shuffle=False)
  model, mesh = GLM(exp.model), partitioning.make_mesh(exp.mesh)
  params, shardings = loop.restore_sharded_params(model, checkpoint, mesh, tc.length)
  result = loop.evaluate(model, params, shardings, mesh, batches, tc.eval_steps)
  if template is not None:
    task = seqio.get_mixture_or_task(data.mixture_or_task_name)
    raw = task.source.get_dataset(split=data.eval_split, shuffle=False)
    if cloze_examples:
      raw = raw.take(cloze_examples)
    examples = ({k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()} for ex in raw.as_numpy_iterator())
    vocabulary = task.output_features["input_ids"].vocabulary
    scored = scoring.cloze_accuracy(model, jax.device_get(params), vocabulary, template, examples)
    result.update(cloze_accuracy=scored["accuracy"], cloze_examples=scored["num_examples"])
  return result


def compile_for_tpu(topology: str, exp: Experiment) -> dict:
  """The experiment's train step compiled by libtpu for a TPU topology this machine does not have (MaxText's
  train_compile; needs glm_jax/deviceless.py's environment): per chip, the HBM it takes and whether it fits
  (deviceless.tpu_memory's fields, or the compiler's error). The mesh is exp.mesh over the topology's chips;
  attention left to the platform default gets TPU's kernel."""
  devices = deviceless.tpu_devices(topology)
  kind = devices[0].device_kind
  model = exp.model.replace(
    attention_implementation=exp.model.attention_implementation or ops.default_implementation("tpu")
  )
  result = {
    "topology": topology,
    "device_kind": kind,
    "chips": len(devices),
    "mesh": "x".join(str(n) for n in exp.mesh.shape(len(devices))),
    "hbm_gib": deviceless.TPU_HBM_BYTES[kind] / 2**30,
  }
  try:
    compiled = loop.compile_train_step(model, exp.train, exp.optimizer, partitioning.make_mesh(exp.mesh, devices))
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    return {**result, "fits": False, "error": " ".join(str(error).split())}
  return {**result, "fits": True, **deviceless.tpu_memory(compiled, kind)}


def _load(checkpoint: str):
  """(model, params, vocabulary) of the newest checkpoint under `checkpoint`, params on one device."""
  model = GLM(checkpoints.load_model_config(checkpoint))
  abstract = nn.unbox(partitioning.abstract_boxed_params(model, 8))
  params = jax.device_get(checkpoints.restore_params(checkpoint, abstract))
  vocabulary = checkpoint_vocabulary(checkpoint)
  if vocabulary.vocab_size > model.config.vocab_size:
    raise ValueError(
      f"the vocabulary of {checkpoint!r} has {vocabulary.vocab_size} ids but the model has "
      f"{model.config.vocab_size} (a converted checkpoint needs its tokenizer: "
      f"convert with --vocab_files)"
    )
  return model, params, vocabulary


def infer(checkpoint: str, text: str, max_span_length: int) -> str:
  """Restores the params of the newest checkpoint under `checkpoint` and fills the masks of `text`."""
  model, params, vocabulary = _load(checkpoint)
  return infilling.infill_text(model, params, vocabulary, text, max_span_length)


def score(
  checkpoint: str, text: str, candidates: list[str], eop: bool = False, length_normalized: bool = False
) -> list[float]:
  """The log-likelihood of each candidate as the fill of the one mask in `text` (glm_jax/infer/scoring.py)."""
  model, params, vocabulary = _load(checkpoint)
  return scoring.score_candidates(model, params, vocabulary, text, candidates, eop, length_normalized)


def checkpoint_vocabulary(checkpoint: str):
  """The vocabulary of a checkpoint directory: the tokenizer saved beside a converted THUDM checkpoint
  (glm_jax.convert), else the default glm-jax SentencePiece vocabulary that `train` used."""
  saved = convert_tokenizers.load_with_checkpoint(checkpoint)
  return saved if saved is not None else vocab.default_vocabulary()


def _split_gin_args(argv: list[str]) -> tuple[list[str], list[str]]:
  """`--gin.NAME=VALUE` (T5X style) -> gin bindings `NAME=VALUE`; the rest is left for argparse."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      binding = arg[len("--gin.") :]
      if "=" not in binding:
        raise SystemExit(f"--gin.{binding}: expected --gin.NAME=VALUE")
      bindings.append(binding)
    else:
      rest.append(arg)
  return bindings, rest


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m glm_jax.main", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  commands = parser.add_subparsers(dest="command", required=True)
  train_cmd = commands.add_parser("train", help="train (or resume) a model")
  train_cmd.add_argument("--model_dir", required=True, help="checkpoints, metrics, TensorBoard, loss curve")
  eval_cmd = commands.add_parser("eval", help="a checkpoint's loss and accuracy on the experiment's eval split")
  eval_cmd.add_argument("--checkpoint", required=True, help="a model_dir written by `train`, or a convert output")
  compile_cmd = commands.add_parser(
    "compile", help="compile the experiment's train step for a TPU slice on this machine: does it fit?"
  )
  compile_cmd.add_argument("--topology", required=True, help="generation:chips, e.g. v5e:2x4, v4:2x2x2, v5p:2x2x2")
  for cmd in (train_cmd, eval_cmd, compile_cmd):
    cmd.add_argument("--gin_file", action="append", default=[], help="gin file(s), parsed in order")
    cmd.add_argument("--gin_bindings", action="append", default=[], help="extra bindings NAME=VALUE")
    cmd.add_argument("--gin_search_paths", default=REPO_ROOT, help="comma-separated include roots")
  for cmd in (train_cmd, eval_cmd):
    # Multi-host (glm_jax/train/distributed.py): none of these on a TPU VM pod / SLURM (jax detects them).
    cmd.add_argument(
      "--coordinator_address",
      default=os.environ.get("GLM_JAX_COORDINATOR_ADDRESS"),
      help="HOST:PORT of process 0, the same on every process (env GLM_JAX_COORDINATOR_ADDRESS)",
    )
    cmd.add_argument(
      "--num_processes",
      type=int,
      default=os.environ.get("GLM_JAX_NUM_PROCESSES"),
      help="number of processes (hosts); 1 turns auto-detection off (env GLM_JAX_NUM_PROCESSES)",
    )
    cmd.add_argument(
      "--process_id",
      type=int,
      default=os.environ.get("GLM_JAX_PROCESS_ID"),
      help="this process, 0 .. num_processes - 1 (env GLM_JAX_PROCESS_ID)",
    )
  eval_cmd.add_argument(
    "--cloze",
    type=int,
    default=None,
    metavar="N",
    help="a cloze Task: also the accuracy of scoring its verbalizers on N examples (0: all)",
  )
  infer_cmd = commands.add_parser("infer", help="fill [MASK]/[sMASK]/[gMASK] blanks greedily")
  infer_cmd.add_argument("--checkpoint", required=True, help="a model_dir written by `train`")
  infer_cmd.add_argument("--text", required=True)
  infer_cmd.add_argument("--max_span_length", type=int, default=32)
  score_cmd = commands.add_parser("score", help="rank candidate fills of one blank by their log-likelihood (cloze)")
  score_cmd.add_argument("--checkpoint", required=True, help="a model_dir written by `train`, or a convert output")
  score_cmd.add_argument("--text", required=True, help="text with exactly one [MASK], [sMASK] or [gMASK]")
  score_cmd.add_argument("--candidate", action="append", required=True, help="a candidate fill; repeat the flag")
  score_cmd.add_argument("--eop", action="store_true", help="also score [eop] after each candidate")
  score_cmd.add_argument("--length_normalized", action="store_true", help="log-likelihood per scored token")
  commands.add_parser(
    "convert",
    add_help=False,
    help="import a THUDM GLM checkpoint: convert --from_pytorch PATH --output_dir DIR (see `convert --help`)",
  )
  return parser


def parse_gin(gin_files: list[str], bindings: list[str], search_paths: str) -> None:
  """Parses the files then the bindings into an emptied, then locked, gin config (so one process can run several
  commands: a notebook, a test)."""
  gin.clear_config()
  for path in filter(None, search_paths.split(",")):
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(gin_files, bindings, finalize_config=True)


def main(argv: list[str] | None = None) -> dict | str | int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
  from_command_line = argv is None
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["convert"]:  # its own flags: glm_jax/convert/__main__.py
    from glm_jax.convert import __main__ as convert_main  # torch loads only when a file is read

    return convert_main.main(argv[1:], prog="python -m glm_jax.main convert")
  gin_bindings, rest = _split_gin_args(argv)
  args = _parser().parse_args(rest)
  if args.command in ("infer", "score") and gin_bindings:
    raise SystemExit(f"{args.command} takes no gin bindings: the model config comes from the checkpoint")
  if args.command == "infer":
    filled = infer(args.checkpoint, args.text, args.max_span_length)
    print(filled)
    return filled
  if args.command == "score":
    scores = score(args.checkpoint, args.text, args.candidate, args.eop, args.length_normalized)
    best = max(range(len(scores)), key=scores.__getitem__)
    for i, (candidate, value) in enumerate(zip(args.candidate, scores)):
      print(f"{value:10.4f}  {candidate}{'  <- best' if i == best else ''}")
    return scores
  if args.command == "compile":
    return _compile_command(args, gin_bindings, from_command_line, argv)
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)  # before any device use
  parse_gin(args.gin_file, args.gin_bindings + gin_bindings, args.gin_search_paths)
  if args.command == "eval":
    result = evaluate(args.checkpoint, experiment(), args.cloze)
    print(" ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return result
  start = time.perf_counter()
  summary = train(args.model_dir, experiment())
  logging.info(
    "trained to step %d in %.1f s: first loss %s, final loss %s, final eval loss %s",
    summary["steps"],
    time.perf_counter() - start,
    summary["first_loss"],
    summary["final_loss"],
    summary["final_eval_loss"],
  )
  return summary


def _compile_command(args, gin_bindings: list[str], from_command_line: bool, argv: list[str]) -> dict:
  if not deviceless.in_environment():
    if not from_command_line:
      raise SystemExit(
        "compile needs the deviceless compilers (glm_jax/deviceless.py): run it as a command, or in "
        "a process started with deviceless.environment()"
      )
    try:
      deviceless.reexec_in_environment(["-m", "glm_jax.main", *argv])
    except FileNotFoundError as error:  # the compilers are not installed: say how
      raise SystemExit(str(error)) from None
  parse_gin(args.gin_file, args.gin_bindings + gin_bindings, args.gin_search_paths)
  result = compile_for_tpu(args.topology, experiment())
  print(
    f"{result['device_kind']} x {result['chips']} ({result['topology']}), mesh data x fsdp x tensor = "
    f"{result['mesh']}, {result['hbm_gib']:.0f} GiB HBM per chip"
  )
  if not result["fits"]:
    print(f"does not fit: {result['error']}")
    raise SystemExit(1)
  print(
    f"fits: peak {result['peak_gib']:.2f} GiB per chip ({result['peak_gib'] / result['hbm_gib']:.0%} of HBM): "
    f"arguments {result['argument_gib']:.2f} GiB (params, optimizer state, batch), temporaries "
    f"{result['temp_gib']:.2f} GiB; {result['mosaic_calls']} Mosaic (attention) kernel calls"
  )
  return result


if __name__ == "__main__":
  main()
