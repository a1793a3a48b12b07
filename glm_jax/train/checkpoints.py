"""The on-disk layout of glm-jax checkpoints, owned here alone: a run's (`train`) and an imported one's (`convert`).

Layout of a checkpoint directory DIR:
  DIR/<step>/state/         params, opt_state, step (orbax StandardSave, sharded arrays); params only for the
                            step-0 checkpoint of `save_params` (an imported checkpoint)
  DIR/<step>/model_config/  the GLMConfig as JSON, so a directory alone rebuilds the model
  DIR/<step>/data/          each process's input iterator position, `iterator-<process>-of-<count>.*` (a
                            tf.train.Checkpoint of the tf.data iterator, written by `DataIteratorHandler`); absent
                            when the run's iterator is not checkpointable (DataConfig.checkpoint_input=False, or a
                            plain Python iterator)
  DIR/tokenizer/            the vocabulary the checkpoint's token ids belong to (glm_jax.data.vocab.save: its files
                            and tokenizer.json), written by `save_vocabulary`. Every command that tokenizes reads
                            it (`load_vocabulary`, `check_vocabulary`) and refuses a checkpoint without one: a
                            checkpoint is never read with another vocabulary.

Saves are asynchronous (CheckpointManagerOptions.enable_async_checkpointing): `save` returns once the arrays
are copied off the devices and the iterator position is written, and the files are written in the background
while training goes on. A step becomes visible atomically: orbax writes DIR/<step>.orbax-checkpoint-tmp-*
and renames it when every item of every process is written, so a crash mid-save leaves no DIR/<step>.

`restore_latest` waits for saves in flight, then walks the steps newest -> oldest and restores the newest one
that reads back completely. A step that fails (files missing or truncated, a changed model) is logged with the
reason and, once an older step has restored, moved aside to DIR/<step>.unrestorable (never deleted), so the
run saves that step again. When no step restores, it raises and moves nothing. With several processes, a step
that fails on any one of them is skipped on all, so every host resumes the same step (the items are read by
their handlers, outside orbax's restore barrier, and the outcome is agreed with one collective per step).

The input position: a restored iterator yields exactly the batches the saved run would have drawn next, so a
resumed run trains on the same stream as an uninterrupted one. The saved positions belong to one process
count; restored with another count, the input stream restarts from its beginning, with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import types
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from glm_jax.data import vocab as vocab_lib
from glm_jax.model import GLM, GLMConfig, unstack_layers
from glm_jax.train import partitioning

log = logging.getLogger(__name__)

DATA_ITEM = "data"
TOKENIZER_DIR = "tokenizer"
PARAMS_STEP = 0  # the one step of an imported (params-only) checkpoint
UNRESTORABLE_SUFFIX = ".unrestorable"


@runtime_checkable
class CheckpointableIterator(Protocol):
  """An input iterator whose position can be saved (glm_jax.train.inputs.TFDataBatches).

  `save_position(prefix)` writes the position to files starting with `prefix`; `restore_position(prefix)`
  puts the iterator at that position, after which it yields what the saved iterator would have yielded next.
  """

  def __next__(self) -> Any: ...

  def save_position(self, prefix: str) -> None: ...

  def restore_position(self, prefix: str) -> None: ...


def _iterator_prefix(directory: epath.Path, process_index: int, process_count: int) -> epath.Path:
  return directory / f"iterator-{process_index:05d}-of-{process_count:05d}"


class DataIteratorHandler(ocp.CheckpointHandler):
  """orbax handler of the `data` item: every process saves its own iterator position (as T5X does).

  The save is synchronous (orbax runs it inside `CheckpointManager.save`), so the position saved is the one of
  the step being saved even while the arrays are still written in the background.
  """

  def save(self, directory: epath.Path, args: "DataIteratorSave") -> None:
    prefix = _iterator_prefix(directory, jax.process_index(), jax.process_count())
    args.iterator.save_position(os.fspath(prefix))

  def restore(self, directory: epath.Path, args: "DataIteratorRestore") -> bool:
    """Restores `args.iterator` in place; False (and a warning) if the position was saved by another number of
    processes, in which case the iterator is left at its start."""
    prefix = _iterator_prefix(directory, jax.process_index(), jax.process_count())
    if not epath.Path(f"{prefix}.index").exists():
      counts = sorted(
        {int(m.group(1)) for p in directory.glob("iterator-*.index") if (m := re.search(r"-of-(\d+)\.index$", p.name))}
      )
      if counts and jax.process_count() not in counts:
        log.warning(
          "the input position in %s was saved by %s processes and this run has %d: the saved "
          "positions do not apply, so the input stream restarts from its beginning",
          directory,
          " or ".join(map(str, counts)),
          jax.process_count(),
        )
        return False
      raise FileNotFoundError(
        f"no input position {prefix}.index for process {jax.process_index()} of {jax.process_count()} in {directory}"
      )
    args.iterator.restore_position(os.fspath(prefix))
    return True


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: CheckpointableIterator


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: CheckpointableIterator


def ensure_writable(directory: str) -> None:
  """Creates `directory` if needed and writes (then removes) a probe file there (any epath: local, gs://), so a
  run whose model_dir cannot hold checkpoints fails at start instead of at its first save. Raises
  PermissionError naming the directory."""
  path = epath.Path(directory)
  probe = path / f".write_probe.{jax.process_index()}.{os.getpid()}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("glm_jax\n")
    probe.unlink()
  except Exception as e:  # noqa: BLE001  (OSError locally, the storage client's own errors elsewhere)
    raise PermissionError(
      f"model_dir {directory!r} is not writable ({type(e).__name__}: {e}); checkpoints and "
      f"metrics go there, so pass a --model_dir this process can create and write"
    ) from e


def absolute(directory: str) -> str:
  """A local directory made absolute; a URL (gs://bucket/run, ...) as it is (os.path.abspath would mangle it)."""
  directory = os.fspath(directory)
  return directory if "://" in directory else os.path.abspath(directory)


def make_manager(directory: str, save_every: int = 1000, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
  """An asynchronous CheckpointManager saving every `save_every` steps and keeping the newest `max_to_keep`."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    save_interval_steps=save_every,
    create=True,
    enable_async_checkpointing=True,
    # A save killed mid-write leaves a full-size DIR/<step>.orbax-checkpoint-tmp-*; remove them at start, or
    # repeated preemptions fill the disk.
    cleanup_tmp_directories=True,
  )
  # Every item's handler is named, so a restore of some items does not warn about the others.
  return ocp.CheckpointManager(
    absolute(directory),
    options=options,
    item_handlers={
      "state": ocp.StandardCheckpointHandler(),
      "model_config": ocp.JsonCheckpointHandler(),
      DATA_ITEM: DataIteratorHandler(),
    },
  )


def save(
  manager: ocp.CheckpointManager,
  state,
  model_config: GLMConfig,
  *,
  data_iterator: CheckpointableIterator | None = None,
  step: int | None = None,
  force: bool = False,
) -> bool:
  """Starts saving `state` (and the position of `data_iterator`, if given) as `step` (default: `state.step`,
  which waits for the state to be computed) if the interval says so, or `force`; returns whether it saved.

  Asynchronous: it returns before the files are written; `manager.wait_until_finished()` waits for them."""
  step = int(jax.device_get(state.step)) if step is None else step
  items = {"state": ocp.args.StandardSave(state), "model_config": ocp.args.JsonSave(dataclasses.asdict(model_config))}
  if data_iterator is not None:
    items[DATA_ITEM] = DataIteratorSave(data_iterator)
  try:  # orbax raises an earlier background save's failure here
    return manager.save(step, args=ocp.args.Composite(**items), force=force)
  except Exception as e:  # noqa: BLE001
    raise _failed_save(manager, e) from e


def _failed_save(manager: ocp.CheckpointManager, error: Exception) -> OSError:
  """The one-line error of a failed save. The steps are listed again from the directory: orbax before 0.12.10 can
  drop earlier steps from its own list after a failed async save."""
  manager.reload()
  steps = manager.all_steps()
  newest = f"step {max(steps)}" if steps else "none"
  return OSError(
    f"saving a checkpoint under {manager.directory} failed ({_reason(error)}); the newest complete checkpoint is "
    f"{newest}: free space on (or fix) that filesystem and rerun the command to resume from it"
  )


def raise_failed_save(manager: ocp.CheckpointManager) -> None:
  """Raises (one line, naming the newest complete step) if a background save has failed; never waits."""
  try:
    manager.check_for_errors()
  except Exception as e:  # noqa: BLE001
    raise _failed_save(manager, e) from e


def wait_for_saves(manager: ocp.CheckpointManager) -> None:
  """Waits for the saves in flight; a failure is raised as `raise_failed_save` does."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    raise _failed_save(manager, e) from e


def _reason(e: Exception) -> str:
  """The exception's type and the first line of its message (orbax errors can run to pages)."""
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _all_processes_ok(ok: bool) -> bool:
  """Whether `ok` holds on every process (the processes must agree on the step they resume from)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _out_of_memory(e: Exception) -> bool:
  """Whether a restore failed for want of memory (host or device): a fault of this process, not of the checkpoint."""
  return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e)


def agreed_steps(steps) -> list[int]:
  """The steps every process walks, newest first: the union of the processes' listings (which can differ: NFS
  caching, per-host local directories). A step missing on some process fails to read there and is skipped by all
  (_read_everywhere), so every host restores the same step instead of its own newest."""
  local = sorted({int(s) for s in steps}, reverse=True)
  if jax.process_count() == 1:
    return local
  counts = multihost_utils.process_allgather(np.int32(len(local)))
  width = max(int(np.max(counts)), 1)
  padded = np.full((width,), -1, np.int64)
  padded[: len(local)] = local
  every = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1)
  return sorted({int(s) for s in every if s >= 0}, reverse=True)


def _is_abandoned_read_noise(unraisable) -> bool:
  """What a failed orbax read leaves behind: its other shards' TensorStore reads finish after orbax has closed
  the read's event loop ("Event loop is closed", from the loop's callbacks) or are collected unfinished (orbax's
  read coroutines). Each would print a traceback to stderr; the failure itself is reported once, by the caller."""
  if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
    return True
  code = getattr(unraisable.object, "cr_code", None)
  return isinstance(unraisable.object, types.CoroutineType) and "orbax" in (code.co_filename if code else "")


def _quiet_abandoned_reads() -> None:
  """Drops _is_abandoned_read_noise's messages from now on (installed once, after a failed read); every other
  unraisable exception still reaches the hook that was there."""
  previous = sys.unraisablehook
  if getattr(previous, "_glm_jax_quiet_reads", False):
    return

  def hook(unraisable):
    if not _is_abandoned_read_noise(unraisable):
      previous(unraisable)

  hook._glm_jax_quiet_reads = True
  sys.unraisablehook = hook


def _read_everywhere(read):
  """Runs `read()` on this process and agrees on the outcome with the others: (its result, None) when it
  succeeded on every process, else (None, the reason). Every process must call this the same number of times.

  `read` must contain no cross-process barrier: a process that fails before one would leave the others waiting
  there while it goes on to the next collective. So the restores below read each item with its orbax handler
  (whose restore reads this process's own shards and synchronizes nothing) rather than CheckpointManager.restore,
  which ends with a barrier.
  """
  fatal = None
  try:
    result, error = read(), None
  except Exception as e:  # noqa: BLE001  (any failure to read a step makes that step unusable)
    _quiet_abandoned_reads()
    result, error = None, _reason(e)
    fatal = e if _out_of_memory(e) else None
  # Out of memory is this run's fault, not the checkpoint's: it stops every process and moves nothing aside.
  if not _all_processes_ok(fatal is None):
    raise MemoryError(
      f"restoring a checkpoint ran out of memory ({error or 'on another process'}); the checkpoint is left as it "
      f"is: free memory (a smaller batch, more devices) and rerun"
    ) from fatal
  if _all_processes_ok(error is None):
    return result, None
  return None, error or "it failed on another process"


def _restore_item(manager: ocp.CheckpointManager, step: int, item: str, handler: ocp.CheckpointHandler, args):
  """One item of one step, read by its handler (see _read_everywhere)."""
  try:
    return handler.restore(manager.directory / str(step) / item, args=args)
  finally:
    handler.close()


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames DIR/<step> to DIR/<step>.unrestorable (process 0) so the manager no longer lists them."""
  if jax.process_index() == 0:
    for step in steps:
      path = manager.directory / str(step)
      target, n = manager.directory / f"{step}{UNRESTORABLE_SUFFIX}", 1
      while target.exists():
        target, n = manager.directory / f"{step}{UNRESTORABLE_SUFFIX}-{n}", n + 1
      path.rename(target)
      log.warning("moved the unrestorable checkpoint %s aside to %s", path, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("glm_jax.checkpoints.set_aside")
  manager.reload()


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iterator: CheckpointableIterator | None = None):
  """The newest complete saved state, placed like `abstract_state` (a tree of jax.ShapeDtypeStruct with
  shardings), or None when the directory holds no checkpoint. Restores `data_iterator` in place to the input
  position saved with that state (when there is one for this process count; else it stays at its start).

  Steps that fail to restore are skipped with a warning naming the step and the reason, and moved aside once
  an older step has restored (see the module docstring). Raises RuntimeError when steps exist but none restores.
  """
  manager.wait_until_finished()
  manager.reload()
  failures: list[tuple[int, str]] = []
  for step in agreed_steps(manager.all_steps()):
    has_data = (manager.directory / str(step) / DATA_ITEM).exists()

    def read(step=step, has_data=has_data):
      state = _restore_item(
        manager, step, "state", ocp.StandardCheckpointHandler(), ocp.args.StandardRestore(abstract_state)
      )
      saved_step = int(jax.device_get(state.step))
      if saved_step != step:
        raise ValueError(f"its state holds step {saved_step}")
      if data_iterator is not None and has_data:
        _restore_item(manager, step, DATA_ITEM, DataIteratorHandler(), DataIteratorRestore(data_iterator))
      return state

    state, error = _read_everywhere(read)
    if error is not None:
      log.warning(
        "checkpoint step %d under %s is incomplete or unreadable, skipping it: %s", step, manager.directory, error
      )
      failures.append((step, error))
      continue
    if failures:
      log.warning(
        "restored step %d, the newest complete checkpoint under %s (skipped %s)",
        step,
        manager.directory,
        ", ".join(str(s) for s, _ in failures),
      )
      _set_aside(manager, [s for s, _ in failures])
    if data_iterator is not None and not has_data:
      log.warning(
        "checkpoint step %d holds no input position (saved with input checkpointing off): the "
        "input stream restarts from its beginning",
        step,
      )
    return state
  if failures:
    reasons = "; ".join(f"step {s}: {e}" for s, e in failures)
    raise RuntimeError(
      f"no checkpoint under {manager.directory} restores ({reasons}); fix or move the step "
      f"directories, or train in a new --model_dir"
    )
  return None


def _reader(directory: str) -> ocp.CheckpointManager:
  """A manager that only reads `directory`, knowing the handlers of every item (so orbax does not warn)."""
  return ocp.CheckpointManager(
    absolute(directory),
    item_handlers={
      "state": ocp.PyTreeCheckpointHandler(),
      "model_config": ocp.JsonCheckpointHandler(),
      DATA_ITEM: DataIteratorHandler(),
    },
  )


def latest_step(directory: str) -> int | None:
  with _reader(directory) as manager:
    return manager.latest_step()


def _no_checkpoint(directory: str) -> str:
  return (
    f"no checkpoint under {directory!r} (train one with `python -m glm_jax.main train --model_dir={directory} ...`, "
    f"or import one with `python -m glm_jax.main convert --from_pytorch PATH --output_dir={directory}`)"
  )


def load_model_config(directory: str, step: int | None = None) -> GLMConfig:
  """The GLMConfig saved with the checkpoint at `step` (default: the newest) under `directory`."""
  with _reader(directory) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(_no_checkpoint(directory))
    restored = manager.restore(step, args=ocp.args.Composite(model_config=ocp.args.JsonRestore()))
  return GLMConfig(**restored.model_config)


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings`: a restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _flat_shapes(tree) -> dict[str, tuple[tuple[int, ...], Any]]:
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): (tuple(x.shape), x.dtype)
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def check_params_fit(directory: str, step: int, saved_params_metadata, abstract_params) -> None:
  """Raises ValueError naming every param whose name or shape differs between the checkpoint at `step` of
  `directory` and the model (`abstract_params`); dtypes may differ (the restore casts)."""
  saved, wanted = _flat_shapes(saved_params_metadata), _flat_shapes(abstract_params)
  problems = [f"{k}: missing from the checkpoint (the model has {wanted[k][0]})" for k in wanted if k not in saved]
  problems += [
    f"{k}: the checkpoint has {saved[k][0]}, the model {wanted[k][0]}"
    for k in wanted
    if k in saved and saved[k][0] != wanted[k][0]
  ]
  problems += [f"{k}: in the checkpoint ({saved[k][0]}) but not in the model" for k in saved if k not in wanted]
  if problems:
    shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    raise ValueError(
      f"the params of {directory} (step {step}) do not fit this model: {shown}. Build the model "
      f"from the checkpoint's own config (gin: experiment.model = @model_from_checkpoint(), "
      f"which the model.gin written by convert binds), e.g. the same scan_layers and vocabulary"
    )


def restore_params(directory: str, abstract_params, step: int | None = None):
  """Only the params of the checkpoint at `step` (default: the newest that reads back completely; newer torn or
  unreadable steps are skipped with a warning, and left in place), placed like `abstract_params`
  (ShapeDtypeStructs, e.g. from partitioning.abstract_boxed_params; on this process's first device unless they carry a
  sharding); the optimizer state is not read. Also reads the params-only checkpoints of glm_jax.convert.
  With several processes, all of them restore the same step (the newest that reads on every process).
  Raises FileNotFoundError when there is no checkpoint, ValueError (naming the params) when the checkpoint's
  params do not fit `abstract_params`, RuntimeError when no step restores."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract_params = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or device), abstract_params
  )
  # Shardings from the target, never from the checkpoint's own (its devices may be another host's).
  restore_args = {"params": ocp.checkpoint_utils.construct_restore_args(abstract_params)}
  with _reader(directory) as manager:
    steps = agreed_steps(manager.all_steps()) if step is None else [step]
    if not steps:
      raise FileNotFoundError(_no_checkpoint(directory))
    failures = []
    for candidate in steps:
      # Every process must read the same step: one that fails anywhere (a host's failed read of a torn copy) is
      # skipped everywhere, so no two hosts start from different params.
      metadata, error = _read_everywhere(lambda: manager.item_metadata(candidate)["state"].tree["params"])
      if error is None:
        check_params_fit(directory, candidate, metadata, abstract_params)
        restored, error = _read_everywhere(
          lambda: _restore_item(
            manager,
            candidate,
            "state",
            ocp.PyTreeCheckpointHandler(),
            ocp.args.PyTreeRestore(item={"params": abstract_params}, restore_args=restore_args, partial_restore=True),
          )
        )
      if error is not None:
        failures.append((candidate, error))
        continue
      if failures:
        log.warning(
          "restored the params of step %d under %s, skipping newer unreadable steps: %s",
          candidate,
          directory,
          "; ".join(f"step {s}: {r}" for s, r in failures),
        )
      return restored["params"]
  raise RuntimeError(f"no checkpoint under {directory!r} restores: " + "; ".join(f"step {s}: {r}" for s, r in failures))


def save_params(directory: str, config: GLMConfig, params) -> str:
  """Writes `params` (host arrays) and `config` as a params-only checkpoint at step PARAMS_STEP of `directory`, which
  must hold no checkpoint yet; returns the directory. `restore_params`, `load_params` and a run's
  `TrainConfig.init_checkpoint` read it."""
  directory = absolute(directory)
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True)) as manager:
    if manager.latest_step() is not None:
      raise FileExistsError(
        f"{directory} already holds a checkpoint (step {manager.latest_step()}); choose an empty output directory"
      )
    manager.save(
      PARAMS_STEP,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params}), model_config=ocp.args.JsonSave(dataclasses.asdict(config))
      ),
    )
    manager.wait_until_finished()
  return directory


def load_params(directory: str) -> tuple[GLMConfig, dict]:
  """(config, params as host numpy arrays) of the newest checkpoint under `directory`, read by the shapes the
  checkpoint itself records (no model needed)."""
  with _reader(directory) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(_no_checkpoint(directory))
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    params = manager.item_metadata(step)["state"].tree["params"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), params)
    restored = _restore_item(
      manager,
      step,
      "state",
      ocp.PyTreeCheckpointHandler(),
      ocp.args.PyTreeRestore(
        item={"params": target},
        restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}),
        partial_restore=True,
      ),
    )
  return load_model_config(directory, step), jax.tree.map(np.asarray, restored["params"])


def _tokenizer_dir(directory: str) -> str:
  return os.path.join(absolute(directory), TOKENIZER_DIR)


def save_vocabulary(directory: str, vocabulary) -> None:
  """Keeps `vocabulary` with the checkpoint directory (process 0 writes; local or gs://). A directory that already
  has one keeps it: it must be the same vocabulary (ValueError otherwise)."""
  if epath.Path(_tokenizer_dir(directory), vocab_lib.MANIFEST).exists():
    check_vocabulary(directory, vocabulary)
    return
  if jax.process_index() == 0:
    vocab_lib.save(vocabulary, _tokenizer_dir(directory))


def _no_tokenizer(directory: str) -> str:
  return (
    f"{directory} holds no tokenizer ({TOKENIZER_DIR}/{vocab_lib.MANIFEST}: it was converted without --vocab_files, "
    f"or written before checkpoints kept their tokenizer), so its token ids cannot be read; add the one it was "
    f"trained with: `python -m glm_jax.main vocab --checkpoint {directory} --family bert --files vocab.txt` (a "
    f"THUDM checkpoint's tokenizer files) or `... --checkpoint {directory} --corpus embedded` (a run on the default "
    f"vocabulary)"
  )


def load_vocabulary(directory: str):
  """The vocabulary saved with the checkpoint directory; raises FileNotFoundError naming the fix when there is
  none (never another vocabulary in its place)."""
  vocabulary = vocab_lib.load(_tokenizer_dir(directory))
  if vocabulary is None:
    raise FileNotFoundError(_no_tokenizer(directory))
  return vocabulary


def check_vocabulary(directory: str, vocabulary) -> None:
  """Raises unless `vocabulary` (e.g. a Task's) is the one saved with the checkpoint directory: FileNotFoundError
  when it has none, ValueError naming both when they differ."""
  saved = load_vocabulary(directory)
  if vocab_lib.fingerprint(saved) != vocab_lib.fingerprint(vocabulary):
    family, _, _ = vocab_lib.saved_form(vocabulary)
    saved_family, _, _ = vocab_lib.saved_form(saved)
    raise ValueError(
      f"the data is tokenized with another vocabulary ({family}, {vocabulary.vocab_size} ids) than {directory} "
      f"was trained with ({saved_family}, {saved.vocab_size} ids); tokenize with the checkpoint's own (for the glm_* "
      f"and cloze Tasks: task_vocabulary.checkpoint = {str(directory)!r}, which a converted checkpoint's model.gin "
      f"binds)"
    )


def attach_vocabulary(directory: str, vocabulary) -> None:
  """Gives a checkpoint that has no tokenizer the vocabulary it was trained with. Raises when it already has one
  or when the vocabulary has more ids than the model's embedding rows."""
  config = load_model_config(directory)
  if vocab_lib.load(_tokenizer_dir(directory)) is not None:
    raise FileExistsError(f"{directory} already has a tokenizer ({TOKENIZER_DIR}/); it is kept as it is")
  if vocabulary.vocab_size > config.vocab_size:
    raise ValueError(
      f"the vocabulary has {vocabulary.vocab_size} ids but the model of {directory} has {config.vocab_size}: it is "
      f"not the one the checkpoint was trained with"
    )
  vocab_lib.save(vocabulary, _tokenizer_dir(directory))


def load_for_inference(directory: str) -> tuple[GLM, dict, object]:
  """(model, params on this process's first device, vocabulary) of the newest readable checkpoint under
  `directory`: what `infer` and `score` run on. Raises when the checkpoint has no tokenizer, or one with more ids
  than the model."""
  model = GLM(load_model_config(directory))
  vocabulary = load_vocabulary(directory)
  if vocabulary.vocab_size > model.config.vocab_size:
    raise ValueError(
      f"the vocabulary of {directory!r} has {vocabulary.vocab_size} ids but the model has "
      f"{model.config.vocab_size}: the tokenizer in {TOKENIZER_DIR}/ is not the model's"
    )
  abstract = nn.unbox(partitioning.abstract_boxed_params(model, 8))
  params = jax.device_get(restore_params(directory, abstract))
  if model.config.scan_layers and jax.default_backend() == "cpu":
    # Decoding on XLA:CPU runs the layers unrolled (glm_jax/infer/decode.py); host arrays unstack as views, no copy.
    model = GLM(model.config.replace(scan_layers=False))
    params = unstack_layers(params, model.config.num_layers)
  return model, params, vocabulary
