"""Every code cell of the notebooks runs, in order, in one namespace (papermill style: the cell tagged
`parameters` is replaced by the test's values; IPython `!`/`%` lines, Colab-only, are skipped)."""

import glob
import json
import os
import shutil

import gin
import matplotlib
import pytest

from glm_jax import gin_config

matplotlib.use("Agg")
NOTEBOOKS = sorted(glob.glob(os.path.join(gin_config.REPO_ROOT, "notebooks", "*.ipynb")))


def code_cells(path: str, parameters: str) -> list[str]:
  with open(path) as f:
    notebook = json.load(f)
  cells = []
  for cell in notebook["cells"]:
    if cell["cell_type"] != "code":
      continue
    source = "".join(cell["source"])
    if "parameters" in cell["metadata"].get("tags", []):
      source = parameters
    cells.append("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("!", "%"))))
  return cells


def test_there_are_the_quickstart_generation_and_fine_tuning_notebooks():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {"quickstart.ipynb", "generate.ipynb", "finetune_cloze.ipynb"} <= names


def _quickstart_parameters(tmp_path, request) -> str:
  # The session's shortened quickstart run (tests/conftest.py), copied: the notebook's train cell resumes it, finished,
  # so the notebook trains no further and its cells after it see a trained model.
  trained = request.getfixturevalue("quickstart_run")
  shutil.copytree(trained.model_dir, tmp_path / "run")
  return f"NUM_STEPS = {trained.steps}\nMODEL_DIR = {str(tmp_path / 'run')!r}\nTRAIN_FLAGS = {list(trained.flags)!r}"


def _check_quickstart(namespace: dict, tmp_path) -> None:
  # The README's first command in short: a real seqio mixture, checkpoints, metrics, a loss curve, filled blanks.
  summary, filled, model_dir = namespace["summary"], namespace["filled"], tmp_path / "run"
  steps = namespace["NUM_STEPS"]
  assert summary["steps"] == steps and summary["first_loss"] is None  # resumed at its last step: nothing to train
  for name in ("metrics.jsonl", "loss_curve.png", "operative_config.gin", "model_config.json", "tensorboard"):
    assert (model_dir / name).exists(), name
  assert str(steps) in {p.name for p in model_dir.iterdir()}
  evals = [r for r in namespace["records"] if r["split"] == "eval"]  # the loss curve's points, as trained
  assert [r["step"] for r in evals] == [steps // 2, steps] and 0 < evals[-1]["loss"] < namespace["records"][0]["loss"]
  capital, day, continued = filled  # two texts with a blank each, and a text continued
  assert capital.output.startswith("The capital of France is ") and capital.output.endswith(".")
  assert day.output.startswith("After Monday comes ") and "[MASK]" not in capital.output + day.output
  assert continued.output.startswith("The opposite of hot is") and len(continued.spans) == 1
  # The quiz: 100 blanked answers graded; the trained model gets many right (an untrained one: at most 1, as
  # tests/test_main.py checks).
  assert len(namespace["fills"]) == 100 and namespace["accuracy"] >= 0.1, namespace["accuracy"]


def _check_generate(namespace: dict, tmp_path) -> None:
  # A random GLM written in THUDM's format, converted, given a tokenizer, then decoded three ways in one batch.
  assert namespace["config"].num_layers == 2 and (tmp_path / "work" / "pytorch" / "pytorch_model.bin").exists()
  texts, results = namespace["TEXTS"], namespace["results"]
  assert set(results) == {"greedy", "sample", "beam"}
  for rows in results.values():
    assert [r.text for r in rows] == texts and [len(r.spans) for r in rows] == [1, 2, 1, 1]
    assert all("[MASK]" not in r.output and len(r.scores) == len(r.spans) for r in rows)
  assert rows[3].output.startswith(texts[3])  # the text without a blank, continued


def _check_finetune_cloze(namespace: dict, tmp_path) -> None:
  # The toy RTE fine-tuned from scratch as cloze questions: the loss falls, and the fine-tuned model answers most
  # validation questions right where the untrained one is near chance (50%).
  assert len(namespace["train"]) == 400 and len(namespace["validation"]) == 40
  evals = namespace["evals"]
  assert [r["step"] for r in evals] == [20, 40, 60, 80] and all("cloze_accuracy" in r for r in evals)
  accuracy = namespace["accuracy"]
  assert accuracy["fine-tuned"]["cloze_num_examples"] == 40
  assert accuracy["fine-tuned"]["cloze_accuracy"] >= 0.9, accuracy
  assert accuracy["untrained"]["cloze_accuracy"] <= 0.8, accuracy
  assert accuracy["fine-tuned"]["loss"] < accuracy["untrained"]["loss"]
  # The final evaluation of the training run and `eval` of its checkpoint agree.
  assert evals[-1]["cloze_accuracy"] == accuracy["fine-tuned"]["cloze_accuracy"]
  assert [len(s) for s in namespace["scores"]] == [2] * 8


NOTEBOOK_CASES = {
  "quickstart.ipynb": (_quickstart_parameters, _check_quickstart),
  "generate.ipynb": (lambda tmp, _: f"PYTORCH_CHECKPOINT = None\nVOCAB_FILES = []\nWORK_DIR = {str(tmp / 'work')!r}",
                     _check_generate),
  "finetune_cloze.ipynb": (lambda tmp, _: f"DATA_DIR = None\nMODEL_GIN = None\nNUM_STEPS = 80\nMODEL_DIR = "
                           f"{str(tmp / 'run')!r}", _check_finetune_cloze),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch, request):
  parameters, check = NOTEBOOK_CASES[os.path.basename(path)]  # every notebook has its small settings and checks
  monkeypatch.chdir(gin_config.REPO_ROOT)
  namespace: dict = {}
  for i, source in enumerate(code_cells(path, parameters(tmp_path, request))):
    try:
      exec(compile(source, f"{os.path.basename(path)}[cell {i}]", "exec"), namespace)  # noqa: S102
    finally:
      gin.clear_config()
  check(namespace, tmp_path)
