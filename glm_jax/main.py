"""glm-jax's command line, T5X style: `python -m glm_jax.main <command> [-v] ...` (`<command> --help` for its flags).

  train     --gin_file=gin/pretrain/quickstart.gin --model_dir=runs/quickstart [--gin.TrainConfig.num_steps=100]
  eval      --gin_file=gin/pretrain/quickstart.gin --checkpoint=runs/quickstart [--cloze=N | --generate=N | --lm=N]
  infer     --checkpoint=runs/quickstart --text="The [MASK] is in the module." [--strategy=beam --num_beams=4]
  score     --checkpoint=runs/quickstart --text="It works with [MASK]." --candidate=paths --candidate="the network"
  convert   --from_pytorch=glm-large/ --output_dir=ckpt/glm-large --vocab_files vocab.txt   (needs [convert])
  compile   --gin_file=gin/pretrain/large.gin --topology=v5e:2x4      (does it fit a TPU slice? no TPU needed)
  inspect   --mixture=glm_embedded --num_examples=4 --length=128      (decoded examples of a Task)
  vocab     --corpus='data/*.txt' --vocab_size=8000 --output=my.model (or --checkpoint=DIR: add one to a checkpoint)
Each command's work is in the library, gin's glue in glm_jax/gin_config.py, what is printed in glm_jax/console.py.
"""

import argparse
import os
import sys

from glm_jax import console

if __name__ == "__main__":  # a command: TensorFlow starts without its C++ start-up lines (unless -v)
  console.quiet_startup(console.verbosity(sys.argv[1:]))

import tasks  # noqa: F401  (registers the Tasks, so inspect and gin files can name them and their configurables)
from glm_jax import deviceless, gin_config
from glm_jax.convert import checkpoint as convert  # torch is imported only when a checkpoint is read
from glm_jax.data import inspect, tokenizers, vocab
from glm_jax.eval import evaluate
from glm_jax.infer import infilling, scoring
from glm_jax.infer.decode import OPTION_FLAGS, DecodeOptions
from glm_jax.train import aot, checkpoints, distributed, experiment


def _parser() -> argparse.ArgumentParser:
  doc = argparse.RawDescriptionHelpFormatter
  parser = argparse.ArgumentParser(prog="python -m glm_jax.main", description=__doc__, formatter_class=doc)
  common, gin, hosts = (argparse.ArgumentParser(add_help=False) for _ in range(3))
  common.add_argument("-v", "--verbosity", action="count", default=0, help="-v: library logs and tracebacks")
  gin.add_argument("--gin_file", action="append", default=[], help="gin file(s), parsed in order")
  gin.add_argument("--gin_bindings", action="append", default=[], help="extra bindings NAME=VALUE")
  gin.add_argument("--gin_search_paths", default=gin_config.REPO_ROOT, help="comma-separated roots of includes")
  gin.add_argument("--gin_allow_import", action="append", default=[], metavar="PACKAGE",
                   help="a package gin files may import besides glm_jax and tasks (its code runs)")  # fmt: skip
  for flag, kind, text in distributed.COMMAND_LINE_FLAGS:  # multi-host; none of them on a TPU VM pod or SLURM
    env = f"GLM_JAX_{flag.upper()}"
    hosts.add_argument(f"--{flag}", type=kind, default=os.environ.get(env), help=f"{text} (env {env})")
  commands = parser.add_subparsers(dest="command", required=True)

  def command(name: str, text: str, *groups: argparse.ArgumentParser):
    return commands.add_parser(name, help=text, parents=[common, *groups]).add_argument

  add = command("train", "train (or resume) a model", gin, hosts)
  add("--model_dir", required=True, help="checkpoints, metrics, TensorBoard events, loss curve")
  add("--allow_config_change", action="store_true", help="resume although the model or data bindings changed")
  add("--break_lock", action="store_true", help="take over the model_dir's lease from a run that is dead")
  add("--cloze", type=int, metavar="N", help="each evaluation also scores a cloze Task on N examples (0: all)")
  add = command("eval", "a checkpoint's loss and accuracy on the experiment's eval split", gin, hosts)
  add("--checkpoint", required=True, help="a model_dir written by `train`, or a convert output")
  add("--cloze", type=int, metavar="N", help="also a cloze Task's accuracy on N examples (0: all)")
  add("--generate", type=int, metavar="N", help="a seq2seq Task: decode N examples (0: all), their ROUGE")
  add("--lm", type=int, metavar="N", help="a zero-shot LM Task (LAMBADA, WikiText): accuracy or perplexity, N rows")
  add("--rouge_style", choices=["plain", "reference"], default="plain", help="ROUGE as rouge-score, or the reference's")
  add("--predictions", help="the decoded predictions' jsonl (default <checkpoint>/predictions.<task>.<split>.jsonl)")
  add("--decode_batch_size", type=int, default=8, help="sources decoded together (--generate)")
  add = command("compile", "compile the experiment's train step for a TPU slice: does it fit?", gin)
  add("--topology", required=True, help="generation:chips, e.g. v5e:2x4, v4:2x2x2, v5p:2x2x2")
  add = command("infer", "fill the blanks of texts: greedy, sampling or beam search, batched")
  add("--checkpoint", required=True, help="a model_dir written by `train`, or a convert output")
  add("--text", action="append", help="a text with [MASK], [sMASK] or [gMASK] blanks, or none (continued); repeatable")
  add("--input", help='a JSON-lines file of {"text": ...} objects (instead of --text)')
  add("--output", help="write a JSON line per text (text, output, spans, scores) here instead of printing")
  add("--batch_size", type=int, default=8, help="texts decoded together")
  for name, default in OPTION_FLAGS.items():  # DecodeOptions' fields
    add(f"--{name}", type=type(default), default=default, help=f"(default {default}; see glm_jax/infer/decode.py)")
  add = command("score", "rank candidate fills of a blank")
  add("--checkpoint", required=True, help="a model_dir written by `train`, or a convert output")
  add("--text", required=True, help="a text with exactly one [MASK], [sMASK] or [gMASK]")
  add("--candidate", action="append", required=True, help="a candidate fill; repeat the flag")
  add("--eop", action="store_true", help="also score [eop] after each candidate")
  add("--length_penalty", type=float, default=0.0, help="divide by (scored tokens) ** this (0: sum, 1: per token)")
  add("--length_normalized", action="store_true", help="log-likelihood per scored token (--length_penalty=1)")
  add = command("convert", "import a THUDM GLM checkpoint (PyTorch: an HF folder or Megatron/DeepSpeed)")
  add("--from_pytorch", required=True, help="HF folder, Megatron/DeepSpeed folder, or a .bin/.pt file")
  add("--output_dir", required=True, help="an empty directory for the glm-jax checkpoint")
  add("--vocab_files", nargs="*", default=(), help="the tokenizer's files, kept with the checkpoint")
  add("--tokenizer", choices=sorted(tokenizers.FAMILIES), help="family of --vocab_files (default: by shape)")
  add("--num_heads", type=int, help="attention heads, when there is no config.json and no published shape")
  add("--allow_pickle", action="store_true", help="load .pt files holding Python objects (trusted files only)")
  add("--no_scan_layers", action="store_true", help="write per-layer params (layers_0, ...)")
  add = command("inspect", "print decoded examples of a Task or Mixture; save their model features", gin)
  add("--mixture", required=True, help="a registered seqio Mixture or Task, e.g. glm_embedded")
  for flag, default in (("--num_examples", 4), ("--length", 128), ("--seed", 0)):
    add(flag, type=int, default=default)
  add("--split", default="validation")
  add("--out", help="save the converted model features [N, L] to this .npz file")
  add("--pack", action="store_true", help="pack several examples per row in --out")
  add("--candidates", type=int, help="the cloze layout in --out: C rows per example (a cloze Task's candidates)")
  add = command("vocab", "train a SentencePiece vocabulary, or give a checkpoint the tokenizer it lacks")
  add("--corpus", help="comma-separated globs of .txt/.jsonl files, or 'embedded'")
  add("--vocab_size", type=int, default=vocab.DEFAULT_VOCAB_SIZE)
  add("--model_type", default="unigram", choices=["unigram", "bpe"])
  add("--files", nargs="+", help="a tokenizer's files (with --family), instead of --corpus")
  add("--family", choices=sorted(vocab.FAMILIES), help="the tokenizer family of --files")
  add("--output", help="write the trained SentencePiece model file here")
  add("--checkpoint", help="a checkpoint without a tokenizer: keep this vocabulary with it")
  return parser


def run(argv: list[str], command_line: bool = False):
  """Runs a command, returns its result, raises its errors (notebooks and tests call this; `main` reports them)."""
  bindings, rest = gin_config.split_gin_args(argv)
  args = _parser().parse_args(rest)
  console.configure_logging(args.verbosity)
  takes_gin = hasattr(args, "gin_file")  # train, eval, compile, inspect
  if bindings and not takes_gin:
    raise ValueError(f"{args.command} takes no gin bindings: the model config comes from the checkpoint")
  if args.command in ("train", "eval"):
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)  # before any device use
  if args.command == "compile" and not deviceless.in_environment():  # run again, with the compilers on the path
    if not command_line:
      raise SystemExit("compile needs the deviceless compilers (glm_jax/deviceless.py): run it as a command")
    deviceless.reexec_in_environment(["-m", "glm_jax.main", *argv])
  if takes_gin:
    gin_config.parse_gin(args.gin_file, args.gin_bindings + bindings, args.gin_search_paths,
                         tuple(args.gin_allow_import))  # fmt: skip
  match args.command:  # each command's work (in the library), what it prints, and its result
    case "train":
      exp = gin_config.experiment()
      result = experiment.train(args.model_dir, exp, operative_config=gin_config.operative_config,
                                allow_config_change=args.allow_config_change, break_lock=args.break_lock,
                                eval_hook=evaluate.training_hook(exp, args.cloze))  # fmt: skip
      print(experiment.format_summary(result, args.model_dir))
    case "eval":
      exp, generation = gin_config.experiment(), None
      if args.generate is not None:
        path = args.predictions or evaluate.default_predictions_path(args.checkpoint, exp)
        generation = evaluate.GenerateEval(args.generate, path, args.rouge_style, args.decode_batch_size)
      result = evaluate.evaluate(args.checkpoint, exp, args.cloze, generation, args.lm)
      print(" ".join(f"{k}={v:.4f}" for k, v in result.items()))
    case "compile":
      result = aot.compile_for_topology(args.topology, gin_config.experiment())
      print(aot.format_result(result))
      if not result["fits"]:
        raise SystemExit(1)
    case "infer":
      options = DecodeOptions(**{name: getattr(args, name) for name in OPTION_FLAGS})
      result = infilling.infer(*checkpoints.load_for_inference(args.checkpoint), options, args.text, args.input,
                               args.output, args.batch_size)  # fmt: skip
      print(f"{len(result)} texts filled: {args.output}" if args.output else "\n".join(r.output for r in result))
    case "score":
      penalty = 1.0 if args.length_normalized else args.length_penalty
      result = scoring.score_candidates(*checkpoints.load_for_inference(args.checkpoint), args.text, args.candidate,
                                        args.eop, penalty)  # fmt: skip
      print(scoring.format_scores(args.candidate, result))
    case "convert":
      result = convert.convert_checkpoint(args.from_pytorch, args.output_dir, num_heads=args.num_heads,
        allow_pickle=args.allow_pickle, scan_layers=not args.no_scan_layers, vocab_files=args.vocab_files,
        tokenizer=args.tokenizer)  # fmt: skip
    case "inspect":
      result = inspect.inspect_task(args.mixture, num_examples=args.num_examples, length=args.length,
                                    split=args.split, seed=args.seed, out=args.out, pack=args.pack,
                                    candidates=args.candidates)  # fmt: skip
    case "vocab":
      result = vocab.make(args.corpus, args.files, args.family, args.vocab_size, args.model_type)
      if args.checkpoint:
        checkpoints.attach_vocabulary(args.checkpoint, result)
      if args.output:
        vocab.write_model_file(result, args.output)
      print(f"{result.vocab_size} ids, special ids {result.special_ids}: {args.output or args.checkpoint}")
  return result


def main(argv: list[str] | None = None) -> int:
  """The command line: runs the command, reporting errors as one line (glm_jax/console.py); the exit status."""
  command_line, argv = argv is None, sys.argv[1:] if argv is None else list(argv)
  with console.reporting(console.verbosity(argv)):
    run(argv, command_line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
