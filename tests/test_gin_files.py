import glob
import os

import gin
import pytest

from glm_jax import gin_config
from glm_jax.model import GLMConfig

GIN_FILES = sorted(glob.glob(os.path.join(gin_config.REPO_ROOT, "gin", "**", "*.gin"), recursive=True))


pytestmark = pytest.mark.usefixtures("empty_gin_config")


def test_gin_files_exist():
  names = {os.path.relpath(p, gin_config.REPO_ROOT) for p in GIN_FILES}
  assert {f"gin/models/{m}.gin" for m in ("tiny", "base", "large", "410m", "515m", "2b", "10b")} <= names
  assert {"gin/pretrain/quickstart.gin", "gin/pretrain/base.gin", "gin/pretrain/large.gin"} <= names


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: os.path.relpath(p, gin_config.REPO_ROOT))
def test_gin_file_parses_and_builds_its_config(path):
  gin_config.parse_gin([path], [])
  if "/data/" in path:  # data fragments: included by experiments, they bind no model.
    assert "TokenObjective.mask_ratio" in gin.config_str() or "text_files_config" in gin.config_str()
    return
  model = gin.query_parameter("experiment.model").scoped_configurable_fn()
  assert isinstance(model, GLMConfig)
  if "/pretrain/" in path:
    exp = gin_config.experiment()
    assert exp.model == model
    assert exp.train.length <= exp.model.max_length
    assert exp.train.batch_size % exp.train.accumulation_steps == 0
