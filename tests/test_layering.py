"""Imports run one way: ops -> model -> data -> train -> {infer, convert} -> eval -> the command line.

Every import of every module of glm_jax counts, deferred ones inside functions included (read from the source, so a
module that would only import another on some path is caught too).
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "glm_jax"
# The layer of each part of glm_jax; a module may import its own part and the parts of lower layers.
LAYERS = {
  "deviceless": 0,
  "ops": 0,
  "model": 1,
  "data": 2,
  "train": 3,
  "infer": 4,
  "convert": 4,
  "eval": 5,
  "gin_config": 6,
  "console": 6,
  "main": 7,
}
# Narrower than the layers: inference needs the model and the data layout, never the training step.
ALLOWED = {"infer": {"ops", "model", "data", "infer"}}


def _part(module: str) -> str | None:
  """`glm_jax.train.loop` -> "train"; None for anything outside glm_jax."""
  names = module.split(".")
  return names[1] if names[0] == "glm_jax" and len(names) > 1 else None


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, imported module) of every import in the file, at any depth; `from glm_jax import x` gives glm_jax.x."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
  return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_run_one_way(path):
  part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
  if part == "__init__":
    return
  assert part in LAYERS, f"{part} has no layer: add it to LAYERS (and to docs/design.md)"
  wrong = []
  for line, module in _imports(path):
    if module == "tasks" or module.startswith("tasks."):
      if part != "main":
        wrong.append(f"line {line}: {module} (only the command line imports the Task registrations)")
      continue
    target = _part(module)
    if target is None:
      continue
    allowed = ALLOWED.get(part)
    if (allowed is not None and target not in allowed) or LAYERS[target] > LAYERS[part]:
      wrong.append(f"line {line}: {module}")
    elif LAYERS[target] == LAYERS[part] and target != part and part not in ("console", "gin_config"):
      wrong.append(f"line {line}: {module} (a part of the same layer)")
  assert not wrong, f"{path.relative_to(PACKAGE.parent)} imports against the layers: {wrong}"


def test_the_check_sees_deferred_imports(tmp_path):
  source = tmp_path / "m.py"
  source.write_text("def f():\n  from glm_jax.train import step\n  import tasks\n")
  assert _imports(source) == [(2, "glm_jax.train.step"), (3, "tasks")]
