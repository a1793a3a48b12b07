"""Tests for the inspect command (glm_jax.data.inspect, `python -m glm_jax.main inspect`)."""

from __future__ import annotations

import os

import gin
import numpy as np
import pytest

from glm_jax import main
from glm_jax.data import feature_converter


@pytest.fixture(autouse=True)
def setup(tmp_path_factory):
  os.environ["GLM_JAX_CACHE"] = str(tmp_path_factory.getbasetemp() / "glm_jax_cache")
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_prints_examples_and_saves_design_features(tmp_path, capsys, pack):
  out = tmp_path / "features.npz"
  argv = [
    "--mixture",
    "glm_embedded",
    "--num_examples",
    "3",
    "--length",
    "40",
    "--out",
    str(out),
    "--gin.TokenObjective.mask_ratio=0.3",
  ]
  if pack:  # examples of at most 16 tokens: at least two fit in each row of 40
    argv += ["--pack"] + [f"--gin.{o}Objective.max_length=16" for o in ("Token", "Sentence", "Document")]
  main.run(["inspect", *argv])
  printed = capsys.readouterr().out
  assert printed.count("example ") == 3 and "Part A" in printed and "span at A[" in printed
  assert "[CLS]" in printed and "counters:" in printed and "token/documents=" in printed
  saved = np.load(out)
  assert set(saved.files) == set(feature_converter.GLMFeatureConverter.MODEL_FEATURES)
  for name in saved.files:
    assert saved[name].shape == (3, 40)
    assert saved[name].dtype == (np.float32 if name == "loss_mask" else np.int32)
  segments = saved["segment_ids"].max(axis=1)
  assert np.all(segments >= 1) and (np.any(segments > 1) == pack)


def test_bad_gin_binding_names_the_parameter():
  with pytest.raises(ValueError, match="TokenObjective.*mask_rate"):
    main.run(["inspect", "--mixture", "glm_embedded", "--gin.TokenObjective.mask_rate=0.3"])
  with pytest.raises(ValueError, match="NoSuchThing"):
    main.run(["inspect", "--mixture", "glm_embedded", "--gin.NoSuchThing.x=1"])


@pytest.mark.slow
def test_command_line(tmp_path):
  import subprocess
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  command = [
    sys.executable,
    "-m",
    "glm_jax.main",
    "inspect",
    "--mixture",
    "glm_embedded",
    "--num_examples",
    "2",
    "--length",
    "32",
  ]
  done = subprocess.run(
    command + ["--out", str(tmp_path / "x.npz")], cwd=repo, capture_output=True, text=True, timeout=300, check=False
  )
  assert done.returncode == 0, done.stderr
  assert np.load(tmp_path / "x.npz")["input_ids"].shape == (2, 32)
  # A bad binding from the command line (one line, exit status 2) is tests/test_main.py's; in process, above.


def test_a_superglue_task_prints_its_candidates_and_saves_their_rows(tmp_path, capsys):
  import pathlib

  from glm_jax.data import superglue, superglue_sources

  fixtures = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "superglue"
  out = tmp_path / "copa.npz"
  bindings = [f"--gin.superglue_config.data_dir='{fixtures}'", "--gin.superglue_config.loss='cross_entropy'"]
  argv = [
    "--mixture",
    "glm_copa_superglue",
    "--split",
    "train",
    "--num_examples",
    "2",
    "--length",
    "64",
    "--out",
    str(out),
  ]
  main.run(["inspect", *argv, "--candidates", "2", *bindings])
  printed = capsys.readouterr().out
  assert printed.count("candidate 0") == 2 and printed.count("candidate 1") == 2 and "(the right one)" in printed
  saved = np.load(out)
  assert saved["input_ids"].shape == (4, 64)
  assert saved["example_index"].tolist() == [0, 0, 1, 1] and saved["candidate_index"].tolist() == [0, 1, 0, 1]
  examples = superglue_sources.read_examples("copa", str(fixtures), "train")
  for e, ex in enumerate(examples[:2]):
    assert np.all(saved["cloze_label"][2 * e : 2 * e + 2] == superglue.cloze("copa", ex, 0).label)
