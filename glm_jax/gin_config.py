"""gin at the edge: the configurables experiment files bind, and the parsing of gin files and `--gin.` flags.

The library under glm_jax/ takes dataclasses and never reads gin; this module registers those dataclasses
(`TrainConfig`, `LossConfig`, `OptimizerConfig`, `MeshConfig`, `DataConfig`) and the factories experiment files name
(`model_preset`, `model_from_checkpoint`, `experiment`) as configurables. The Tasks' own configurables
(`TokenObjective`, `task_vocabulary`, ...) are registered by `import tasks`. A misspelt binding fails at start with
gin's own error naming it. Gin files `include` each other by repo-relative paths (`--gin_search_paths`, default:
the repo root).
"""

from __future__ import annotations

import dataclasses
import os

import gin

from glm_jax.model import GLMConfig, preset
from glm_jax.train import checkpoints, inputs, loop, optimizer, partitioning, step
from glm_jax.train.experiment import Experiment

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

gin.external_configurable(loop.TrainConfig, module="glm_jax")
gin.external_configurable(step.LossConfig, module="glm_jax")
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


@gin.configurable(module="glm_jax")
def experiment(
  model: GLMConfig = gin.REQUIRED,
  train_config: loop.TrainConfig = gin.REQUIRED,
  optimizer_config: optimizer.OptimizerConfig = gin.REQUIRED,
  mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
  data: inputs.DataConfig = inputs.DataConfig(),
) -> Experiment:
  """The Experiment the parsed gin files describe."""
  return Experiment(model, train_config, optimizer_config, mesh_config, data)


def split_gin_args(argv: list[str]) -> tuple[list[str], list[str]]:
  """`--gin.NAME=VALUE` (T5X style) -> gin bindings `NAME=VALUE`; the rest is left for argparse."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      binding = arg[len("--gin.") :]
      if "=" not in binding:
        raise ValueError(f"--gin.{binding}: expected --gin.NAME=VALUE")
      bindings.append(binding)
    else:
      rest.append(arg)
  return bindings, rest


# The packages a gin file may import: a gin `import` runs that module's code, and gin files come from checkpoints
# (convert's model.gin) and other people. Anything else needs --gin_allow_import.
TRUSTED_IMPORTS = ("glm_jax", "tasks")


def parse_gin(
  gin_files: list[str], bindings: list[str], search_paths: str = REPO_ROOT, allow_imports: tuple[str, ...] = ()
) -> None:
  """Parses the files then the bindings into an emptied, then locked, gin config (so one process can run several
  commands: a notebook, a test). A file that does not exist is named with the search paths tried. A gin `import`
  (in a file, an included file or a binding) of a module outside TRUSTED_IMPORTS and `allow_imports` (top-level
  package names) is refused naming it, before that module is imported."""
  gin.clear_config()
  roots = [path for path in search_paths.split(",") if path]
  for path in roots:
    gin.add_config_file_search_path(path)
  for file in gin_files:
    if not any(os.path.exists(os.path.join(root, file)) for root in ["", *roots]):
      raise FileNotFoundError(f"--gin_file={file}: no such file (relative paths are tried under {', '.join(roots)})")
  allowed = {*TRUSTED_IMPORTS, *allow_imports}
  process_import = gin.config.ParseContext.process_import

  def guarded(context, statement):
    package = statement.module.split(".")[0]
    if package not in allowed and not statement.module.startswith("__gin__."):
      where = statement.location
      raise ValueError(
        f"{where.filename}:{where.line_num}: gin `import {statement.module}` would run that module's code; gin "
        f"files may import only {', '.join(TRUSTED_IMPORTS)} unless you pass --gin_allow_import={package}"
      )
    return process_import(context, statement)

  gin.config.ParseContext.process_import = guarded
  try:
    gin.parse_config_files_and_bindings(gin_files, bindings, finalize_config=True)
  finally:
    gin.config.ParseContext.process_import = process_import


def operative_config() -> str:
  """The bindings the run has used so far (gin's operative config), kept as the model_dir's operative_config.gin."""
  return gin.operative_config_str()
