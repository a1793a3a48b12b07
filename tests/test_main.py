import gin
import pytest

from glm_jax import main


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_misspelt_binding_fails_at_start_naming_it(tmp_path):
  with pytest.raises(ValueError, match="num_stepz"):
    main.main(["train", "--gin_file=gin/pretrain/quickstart.gin", "--gin.TrainConfig.num_stepz=3",
               f"--model_dir={tmp_path}"])


def test_unknown_configurable_fails_naming_it(tmp_path):
  with pytest.raises(ValueError, match="TrainConfg"):
    main.main(["train", "--gin_file=gin/pretrain/quickstart.gin", "--gin.TrainConfg.num_steps=3",
               f"--model_dir={tmp_path}"])


def test_gin_flags_become_bindings():
  bindings, rest = main._split_gin_args(["train", "--gin.TrainConfig.num_steps=3", "--model_dir=x"])
  assert bindings == ["TrainConfig.num_steps=3"] and rest == ["train", "--model_dir=x"]
  main.parse_gin(["gin/pretrain/quickstart.gin"], bindings, main.REPO_ROOT)
  assert main.experiment().train.num_steps == 3
