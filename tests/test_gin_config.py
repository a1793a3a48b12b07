"""gin at the edge: `--gin.` flags become bindings, files are found under the search paths or named."""

import pytest

from glm_jax import gin_config

pytestmark = pytest.mark.usefixtures("empty_gin_config")


def test_gin_flags_become_bindings():
  bindings, rest = gin_config.split_gin_args(["train", "--gin.TrainConfig.num_steps=3", "--model_dir=x"])
  assert bindings == ["TrainConfig.num_steps=3"] and rest == ["train", "--model_dir=x"]
  gin_config.parse_gin(["gin/pretrain/quickstart.gin"], bindings)
  assert gin_config.experiment().train.num_steps == 3
  assert "TrainConfig.num_steps = 3" in gin_config.operative_config()
  with pytest.raises(ValueError, match="--gin.TrainConfig: expected --gin.NAME=VALUE"):
    gin_config.split_gin_args(["--gin.TrainConfig"])


def test_a_missing_gin_file_is_named_with_where_it_was_looked_for():
  with pytest.raises(FileNotFoundError, match="--gin_file=gin/pretrain/nope.gin: no such file .* under "):
    gin_config.parse_gin(["gin/pretrain/nope.gin"], [])


def test_a_gin_import_outside_glm_jax_and_tasks_is_refused_before_it_runs(tmp_path, monkeypatch):
  marker = tmp_path / "ran"
  (tmp_path / "planted_gin_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  gin_file = tmp_path / "model.gin"  # e.g. a checkpoint's model.gin, edited by someone else
  gin_file.write_text("import tasks\nimport planted_gin_module\n")
  with pytest.raises(ValueError, match=r"model.gin:2: gin `import planted_gin_module` would run .* --gin_allow_import"):
    gin_config.parse_gin([str(gin_file)], [])
  assert not marker.exists()
  gin_config.parse_gin([str(gin_file)], [], allow_imports=("planted_gin_module",))
  assert marker.exists()
