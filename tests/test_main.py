"""The command line: every command as a user runs it (in process through `main.run`, and as a command)."""

import json
import os
import re
import subprocess
import sys

import gin
import pytest

from glm_jax import console, deviceless, gin_config, main

pytestmark = pytest.mark.usefixtures("empty_gin_config")


def test_misspelt_binding_fails_at_start_naming_it(tmp_path):
  with pytest.raises(ValueError, match="num_stepz"):
    main.run(
      ["train", "--gin_file=gin/pretrain/quickstart.gin", "--gin.TrainConfig.num_stepz=3", f"--model_dir={tmp_path}"]
    )


def test_unknown_configurable_fails_naming_it(tmp_path):
  with pytest.raises(ValueError, match="TrainConfg"):
    main.run(
      ["train", "--gin_file=gin/pretrain/quickstart.gin", "--gin.TrainConfg.num_steps=3", f"--model_dir={tmp_path}"]
    )


def _random_hf_checkpoint(directory, config):
  """A THUDM HF-format checkpoint of `config` with random float32 weights (torch is the [convert] extra)."""
  torch = pytest.importorskip("torch")
  import json

  import numpy as np

  from glm_jax.convert import pytorch as pt

  rng = np.random.default_rng(0)
  directory.mkdir()
  torch.save(
    {k: torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for k, s in pt.torch_shapes(config).items()},
    directory / "pytorch_model.bin",
  )
  (directory / "config.json").write_text(json.dumps(pt.hf_config_dict(config)))
  return directory


def test_convert_subcommand_writes_a_checkpoint_and_infer_refuses_it_without_a_tokenizer(tmp_path):
  from glm_jax.model import GLMConfig
  from glm_jax.train import checkpoints

  config = GLMConfig(vocab_size=128, num_layers=1, hidden_size=16, num_heads=2, max_length=8)
  source = _random_hf_checkpoint(tmp_path / "hf", config)
  assert main.run(["convert", "--from_pytorch", str(source), "--output_dir", str(tmp_path / "out")]) == config
  assert checkpoints.load_model_config(str(tmp_path / "out")) == config
  gin_config.parse_gin([str(tmp_path / "out" / "model.gin")], [])  # what fine-tuning includes
  assert gin.query_parameter("experiment.model").scoped_configurable_fn() == config
  gin.clear_config()
  # No tokenizer was given: infer refuses the checkpoint (never reads it with another vocabulary) and names the fix.
  checkpoint = f"--checkpoint={tmp_path / 'out'}"
  for command in (
    ["infer", checkpoint, "--text=a [MASK] b"],
    ["score", checkpoint, "--text=a [MASK]", "--candidate=b"],
  ):
    with pytest.raises(FileNotFoundError, match="holds no tokenizer.*main vocab --checkpoint"):
      main.run(command)


def test_convert_subcommand_help_names_its_flags(capsys):
  with pytest.raises(SystemExit):
    main.run(["convert", "--help"])
  assert "--from_pytorch" in capsys.readouterr().out


# Given after quickstart.gin; model.gin, given last, replaces quickstart's model (the tiny preset).
FINETUNE_GIN = """
DataConfig.mixture_or_task_name = 'glm_embedded'  # the default vocabulary's Tasks (the facts have their own)
DataConfig.eval_split = None
TrainConfig.num_steps = 1
TrainConfig.batch_size = 8
TrainConfig.length = 32
TrainConfig.checkpoint_every = 1
OptimizerConfig.warmup_steps = 0
OptimizerConfig.learning_rate = 0.0  # the saved step-1 params must then be the converted ones, exactly
"""


def test_train_fine_tunes_a_converted_checkpoint_through_its_model_gin(tmp_path):
  import flax.linen as nn
  import jax
  import numpy as np

  from glm_jax.model import GLM, GLMConfig
  from glm_jax.train import checkpoints, partitioning

  config = GLMConfig(vocab_size=4096, num_layers=1, hidden_size=16, num_heads=2, max_length=32)
  source = _random_hf_checkpoint(tmp_path / "hf", config)
  converted_dir = str(tmp_path / "converted")
  main.run(["convert", "--from_pytorch", str(source), "--output_dir", converted_dir])
  (tmp_path / "finetune.gin").write_text(FINETUNE_GIN)
  run = tmp_path / "run"
  argv = [
    "train",
    "--gin_file=gin/pretrain/quickstart.gin",
    f"--gin_file={tmp_path / 'finetune.gin'}",
    f"--gin_file={tmp_path / 'converted' / 'model.gin'}",
    f"--model_dir={run}",
  ]  # as the README says
  # Converted without its tokenizer: the run refuses to start from it, naming the fix, and writes no checkpoint.
  with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
    main.run(argv)
  assert checkpoints.latest_step(str(run)) is None
  # The fix the message names: this checkpoint's tokenizer is the default vocabulary.
  main.run(["vocab", "--corpus=embedded", f"--checkpoint={converted_dir}"])
  summary = main.run(argv)
  assert summary["steps"] == 1 and np.isfinite(summary["final_loss"])
  assert checkpoints.load_vocabulary(str(run)).vocab_size == 4096  # the run keeps the tokenizer it trained with

  _, converted = checkpoints.load_params(converted_dir)
  abstract = nn.unbox(partitioning.abstract_boxed_params(GLM(config), 8))
  trained = checkpoints.restore_params(str(run), abstract)
  for got, want in zip(jax.tree.leaves(trained), jax.tree.leaves(converted)):
    np.testing.assert_array_equal(np.asarray(got), want)

  # (A run that already has its own checkpoint does not read init_checkpoint: tests/train/test_loop.py.)


def test_train_refuses_data_whose_vocabulary_exceeds_the_model(tmp_path):
  with pytest.raises(ValueError, match="has 4096 ids but the model's vocab_size is 100"):
    main.run(
      [
        "train",
        "--gin_file=gin/pretrain/quickstart.gin",
        "--gin.model_preset.overrides={'vocab_size': 100}",
        f"--model_dir={tmp_path}",
      ]
    )


def test_score_and_infer_subcommands_run_on_the_checkpoint(tmp_path, capsys):
  import flax.linen as nn
  import jax
  import numpy as np

  from glm_jax.data import vocab
  from glm_jax.infer import scoring
  from glm_jax.model import GLM, GLMConfig
  from glm_jax.train import checkpoints, loop

  config = GLMConfig(
    vocab_size=vocab.default_vocabulary().vocab_size, num_layers=1, hidden_size=32, num_heads=4, max_length=32
  )
  ids = np.zeros((1, 8), np.int32)
  params = nn.unbox(GLM(config).init(jax.random.key(7), ids, ids, ids, sep=np.array([8]))["params"])
  manager = checkpoints.make_manager(str(tmp_path / "run"))
  checkpoints.save(
    manager, loop.TrainState(step=jax.numpy.int32(1), params=params, opt_state={}), config, step=1, force=True
  )
  manager.wait_until_finished()
  manager.close()
  text, candidates = "It works with [MASK].", ["paths", "the network"]
  with pytest.raises(FileNotFoundError, match="holds no tokenizer"):  # a checkpoint written without its tokenizer
    main.run(["score", f"--checkpoint={tmp_path / 'run'}", f"--text={text}", "--candidate=x"])
  checkpoints.save_vocabulary(str(tmp_path / "run"), vocab.default_vocabulary())
  scores = main.run(
    ["score", f"--checkpoint={tmp_path / 'run'}", f"--text={text}", *(f"--candidate={c}" for c in candidates)]
  )
  want = scoring.score_candidates(GLM(config), params, vocab.default_vocabulary(), text, candidates)
  np.testing.assert_allclose(scores, want, rtol=1e-5)
  lines = capsys.readouterr().out.strip().splitlines()
  best = int(np.argmax(want))
  assert [line.endswith("<- best") for line in lines] == [i == best for i in range(2)]
  assert [line.split()[1] for line in lines] == ["paths", "the"]
  with pytest.raises(ValueError, match="score takes no gin bindings"):
    main.run(["score", f"--checkpoint={tmp_path / 'run'}", f"--text={text}", "--candidate=x", "--gin.a=1"])
  per_token = main.run(["score", f"--checkpoint={tmp_path / 'run'}", f"--text={text}", "--candidate=the network",
                        "--length_normalized"])  # fmt: skip
  np.testing.assert_allclose(per_token, [want[1] / len(vocab.default_vocabulary().encode("the network"))], rtol=1e-5)

  # infer, on the same checkpoint: flags -> DecodeOptions -> generate; --input / --output as JSON lines.
  from glm_jax.data import example as example_lib
  from glm_jax.data.example import SpecialIds
  from glm_jax.infer import DecodeOptions, generate, infilling

  checkpoint = f"--checkpoint={tmp_path / 'run'}"
  beam = ["--strategy=beam", "--num_beams=2", "--max_span_length=3", "--length_penalty=0.5"]
  results = main.run(["infer", checkpoint, "--text=It works [MASK] b", "--text=It works", *beam])
  vocabulary = vocab.default_vocabulary()
  ids = SpecialIds.from_vocabulary(vocabulary)
  prompts = [
    infilling.prompt(example_lib.encode_text(vocabulary, t, ids), ids, config.task_mask)[0]
    for t in ("It works [MASK] b", "It works")
  ]
  options = DecodeOptions(strategy="beam", num_beams=2, max_span_length=3, length_penalty=0.5)
  assert [r.scores for r in results] == [
    g.scores for g in generate(GLM(config), params, prompts, ids=ids, options=options)
  ]
  (tmp_path / "in.jsonl").write_text('{"text": "It works [MASK] b"}\n{"text": "It works"}\n')
  out = tmp_path / "out.jsonl"
  main.run(["infer", checkpoint, f"--input={tmp_path / 'in.jsonl'}", f"--output={out}", *beam])
  assert out.read_text().splitlines() == [json.dumps(r.as_json()) for r in results]
  assert capsys.readouterr().out.strip().endswith(f"2 texts filled: {out}")
  with pytest.raises(ValueError, match="strategy='nucleus'"):
    main.run(["infer", checkpoint, "--text=a", "--strategy=nucleus"])
  with pytest.raises(ValueError, match=r"text 1 is \d+ tokens long .* more than the model's max_length=32"):
    main.run(["infer", checkpoint, "--text=" + "It works " * 19])


def test_eval_subcommand_gives_a_runs_final_eval_loss_again(tmp_path, capsys):
  overrides = [
    "--gin.TrainConfig.num_steps=2",
    "--gin.TrainConfig.eval_every=2",
    "--gin.TrainConfig.eval_steps=2",
    "--gin.TrainConfig.length=32",
    "--gin.TrainConfig.checkpoint_every=2",
    "--gin.OptimizerConfig.warmup_steps=0",
    "--gin.model_preset.overrides={'max_length': 32}",
  ]
  summary = main.run(["train", "--gin_file=gin/pretrain/quickstart.gin", f"--model_dir={tmp_path / 'run'}", *overrides])
  result = main.run(["eval", "--gin_file=gin/pretrain/quickstart.gin", f"--checkpoint={tmp_path / 'run'}", *overrides])
  assert result["loss"] == pytest.approx(summary["final_eval_loss"], rel=1e-6)
  assert 0.0 <= result["accuracy"] <= 1.0
  assert f"loss={result['loss']:.4f}" in capsys.readouterr().out
  with pytest.raises(ValueError, match="no eval split: bind DataConfig.eval_split"):
    main.run(
      [
        "eval",
        "--gin_file=gin/pretrain/quickstart.gin",
        f"--checkpoint={tmp_path / 'run'}",
        *overrides,
        "--gin.DataConfig.eval_split=None",
      ]
    )


def _compile_command(*flags, reexec: bool = True):
  """`python -m glm_jax.main compile ...` as a user runs it (it re-runs itself with the deviceless compilers), or,
  with reexec=False, started in their environment (one interpreter start-up fewer)."""
  try:
    deviceless.environment()
  except FileNotFoundError as error:
    pytest.skip(str(error))
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # as on a user's command line
  if not reexec:
    env = deviceless.environment(env)
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "glm_jax.main",
      "compile",
      "--gin_file=gin/pretrain/quickstart.gin",
      "--topology=v5e:2x2",
      *flags,
    ],
    cwd=deviceless.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.slow
def test_compile_subcommand_says_whether_the_experiment_fits_a_tpu_slice():
  # The quickstart's model with D=64 (the TPU kernel's head dims), on 4 v5e chips it does not have.
  done = _compile_command("--gin.model_preset.overrides={'num_heads': 2}")
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  assert "TPU v5 lite x 4 (v5e:2x2), mesh data x fsdp x tensor = 4x1x1, 16 GiB HBM per chip" in done.stdout
  fits = re.search(r"fits: peak ([\d.]+) GiB per chip .* (\d+) Mosaic \(attention\) kernel calls", done.stdout)
  assert fits and 0 < float(fits.group(1)) < 1 and int(fits.group(2)) >= 3, done.stdout
  # 8192 rows of L=128 per chip: their float32 logits alone (8192 x 128 x 4096 x 4 bytes) are the chip's 16 GiB.
  done = _compile_command(
    "--gin.model_preset.overrides={'num_heads': 2}", "--gin.TrainConfig.batch_size=32768", reexec=False
  )
  assert done.returncode == 1 and "does not fit: RESOURCE_EXHAUSTED" in done.stdout, done.stdout + done.stderr[-2000:]


def test_compile_subcommand_in_process_needs_the_deviceless_environment():
  with pytest.raises(SystemExit, match="deviceless compilers"):
    main.run(["compile", "--gin_file=gin/pretrain/quickstart.gin", "--topology=v5e:2x2"])


def _command_line(*argv, timeout=300):
  """`python -m glm_jax.main ...` as a user runs it: (exit status, stdout lines, stderr lines)."""
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}  # as a user's
  done = subprocess.run(
    [sys.executable, "-m", "glm_jax.main", *argv],
    cwd=gin_config.REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  # Lines as a terminal shows them: the progress bar redraws itself with "\r" on one line.
  return done.returncode, done.stdout.split("\n")[:-1], done.stderr.split("\n")[:-1]


@pytest.mark.slow
def test_command_line_errors_are_one_line_with_exit_status_2_and_a_traceback_under_v(tmp_path):
  status, out, err = _command_line(
    "train", "--gin_file=gin/pretrain/quickstart.gin", "--gin.TrainConfig.num_stepz=3", f"--model_dir={tmp_path}"
  )
  assert (
    status == 2
    and out == []
    and err == ["error: Configurable 'TrainConfig' doesn't have a parameter named 'num_stepz'."]
  )
  # Under -v the error is raised on, so Python prints its traceback and exits with 1. Checked in this process: as a
  # second command it cost an interpreter start-up (the test took 59 s in CI with it, 14 s alone without).
  try:
    with pytest.raises(FileNotFoundError, match="^no checkpoint under"):
      main.main(["infer", f"--checkpoint={tmp_path / 'none'}", "--text=a [MASK]", "-v"])
  finally:
    console.configure_logging(0)  # -v turned the libraries' logs on for this process


@pytest.mark.slow
def test_the_quickstart_model_learns_its_facts(quickstart_run, tmp_path):
  """The quickstart's recipe, shortened to under a minute (tests/conftest.py's quickstart_run): greedy fills of
  blanked answers are right far more often than by chance (an untrained model gets none; the README's 800 steps,
  about four in five). It depends on the prompt losing SentencePiece's lone space before each blank: without, none
  is right."""
  from glm_jax.data import facts

  trained, flags = quickstart_run.model_dir, quickstart_run.flags
  untrained = str(tmp_path / "untrained")  # num_steps=0: the initialized model, saved as step 0
  main.run(["train", "--gin_file=gin/pretrain/quickstart.gin", f"--model_dir={untrained}", *flags,
            "--gin.TrainConfig.num_steps=0"])  # fmt: skip
  quiz = facts.quiz(100)
  right = {}
  for name, run in (("trained", trained), ("untrained", untrained)):
    filled = main.run(["infer", f"--checkpoint={run}", "--batch_size=50", *(f"--text={s.masked()}" for s in quiz)])
    right[name] = sum(facts.fill_is_correct(f.spans[0], s) for f, s in zip(filled, quiz))
  assert right["trained"] >= 10 and right["untrained"] <= 1, right


@pytest.mark.slow
def test_the_quickstart_prints_progress_eval_lines_a_summary_and_the_sample(quickstart_run):
  """The README's first command (the session's shortened run, which conftest starts as a user does): library
  start-up and INFO logs stay out of it. Into a pipe, the progress bar's figures come as one line at each evaluation
  and checkpoint (on a terminal: the live bar)."""
  run, steps = quickstart_run.model_dir, quickstart_run.steps
  text = "The capital of France is [MASK]."
  status, infer_out, infer_err = _command_line("infer", f"--checkpoint={run}", f"--text={text}")
  assert status == 0, "\n".join(infer_err[-30:])
  train_out, train_err = quickstart_run.stdout, quickstart_run.stderr
  lines = train_out + train_err + infer_out + infer_err
  assert len(lines) <= 40, "\n".join(lines)
  assert not [line for line in lines if re.match(r"(INFO|I0000|W0000|E0000|WARNING: All log)", line)], "\n".join(lines)
  assert any(line.startswith(f"step {steps}/{steps}: loss ") for line in train_err)  # the bar, as lines into a pipe
  assert sum(line.startswith("step ") and "eval loss" in line for line in lines) == 2  # at steps/2 and steps
  assert any(line.startswith("data: ") and "skipped" in line for line in lines)  # what the pipeline skipped
  assert train_out[-1].startswith(f"trained to step {steps} in ") and run in train_out[-1]
  assert len(infer_out) == 1 and infer_out[0].startswith("The capital of France is ") and infer_out[0].endswith(".")
