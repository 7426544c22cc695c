"""Orbax checkpoints of a training run: everything needed to continue it bit for bit.

A checkpoint (one directory per step, written by ``orbax.checkpoint.CheckpointManager``) holds

    state   the TrainState as arrays: params, optimizer state, step (Orbax's array format)
    rng     the run's PRNG keys as raw uint32 key data (init, train, shuffle, eval)
    loop    JSON: the data-order state (epoch, position in the epoch), the epoch's running metric
            sums, the NaN guard's counters and the history of finished epochs
    config  JSON: the TrainConfig of the run

No pickle. Orbax writes each checkpoint into a temporary directory and renames it when it is
complete, so a process killed during a save leaves the previous checkpoints readable; an
unreadable latest checkpoint (truncated, corrupted) is skipped with a warning that names it and
the one restored instead. Only the last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxvae import train

# Config fields a resumed run may change: they do not alter the model or the trajectory.
RESUMABLE_CHANGES = frozenset({"epochs", "eval_batch_size", "checkpoint_every",
                               "keep_checkpoints", "max_skipped_steps"})


class _Final(Exception):
    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class Restored(NamedTuple):
    step: int  # the checkpoint's step (updates applied, skipped ones included)
    state: train.TrainState
    keys: dict[str, jax.Array]  # name -> typed PRNG key
    loop: dict  # the JSON loop state (see the module docstring)
    config: dict  # the saved config as a dict
    path: Path  # the checkpoint directory restored


def _to_host(tree: Any) -> Any:
    """Numpy copies of every leaf (replicated global arrays included)."""
    def leaf(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            a = a.addressable_data(0)  # fully replicated: every process holds all of it
        return np.array(a)
    return jax.tree.map(leaf, tree)


def config_differences(saved: dict, current: dict,
                       allowed: frozenset[str] = RESUMABLE_CHANGES) -> list[str]:
    """``"field: saved -> current"`` for every field that differs and may not change on resume."""
    current = json.loads(json.dumps(current))  # tuples -> lists, as saved
    diffs = []
    for name in sorted(set(saved) | set(current)):
        if name in allowed:
            continue
        old, new = saved.get(name, "<absent>"), current.get(name, "<absent>")
        if old != new:
            diffs.append(f"{name}: {old!r} -> {new!r}")
    return diffs


class CheckpointManager:
    """Saves and restores training checkpoints under ``directory`` (see the module docstring).

    Args:
      directory: where the step directories go (created if missing).
      keep: how many of the latest checkpoints to keep, >= 1.
      writer: whether this process writes. In a multi-process run only process 0 writes; the
        others may still restore (a directory every process can read, e.g. a shared filesystem).
    """

    def __init__(self, directory: str | Path, keep: int = 3, writer: bool = True):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep (--keep-checkpoints) must be an int >= 1, got {keep!r}")
        self.directory = Path(directory).absolute()
        self.writer = writer
        me = jax.process_index()
        if writer:
            self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if writer else None, save_interval_steps=1 if writer else 0,
            create=False, read_only=not writer,
            cleanup_tmp_directories=writer, enable_async_checkpointing=False,
            # Each process runs its own manager: no barriers with processes that never save.
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}))
        if not writer and not self.directory.exists():
            self._manager = None
            return
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "rng", "loop", "config"))

    def all_steps(self) -> list[int]:
        return [] if self._manager is None else sorted(self._manager.all_steps())

    def save(self, state: train.TrainState, keys: dict[str, jax.Array], loop: dict,
             config: dict) -> Path:
        """Writes the checkpoint of ``state.step`` (synchronously); returns its directory."""
        if not self.writer:
            raise RuntimeError("this process does not write checkpoints (writer=False)")
        tree = _to_host({"step": state.step, "params": state.params,
                         "opt_state": state.opt_state})
        step = int(tree["step"])
        key_data = {name: np.asarray(jax.random.key_data(k)) for name, k in keys.items()}
        impl = {name: str(jax.random.key_impl(k)) for name, k in keys.items()}
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree),
            rng=ocp.args.StandardSave(key_data),
            loop=ocp.args.JsonSave({**loop, "key_impl": impl}),
            config=ocp.args.JsonSave(config)), force=True)
        self._manager.wait_until_finished()
        return self.directory / str(step)

    def _restore(self, step: int, template: train.TrainState, key_names: tuple[str, ...],
                 check_config=None) -> Restored:
        if check_config is not None:
            saved = self._manager.restore(step, args=ocp.args.Composite(
                config=ocp.args.JsonRestore()))
            try:
                check_config(dict(saved.config))
            except Exception as e:  # the caller's verdict is final: no older checkpoint helps
                raise _Final(e) from None
        tree = _to_host({"step": template.step, "params": template.params,
                         "opt_state": template.opt_state})
        key_template = {name: np.zeros((2,), np.uint32) for name in key_names}
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(tree), rng=ocp.args.StandardRestore(key_template),
            loop=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
        loop = dict(out.loop)
        impl = loop.pop("key_impl")
        keys = {name: jax.random.wrap_key_data(np.asarray(out["rng"][name]), impl=impl[name])
                for name in key_names}
        state = train.TrainState(step=np.asarray(out.state["step"]), params=out.state["params"],
                                 opt_state=out.state["opt_state"])
        return Restored(step, state, keys, loop, dict(out.config), self.directory / str(step))

    def restore_latest(self, template: train.TrainState, key_names: tuple[str, ...],
                       check_config=None) -> Restored:
        """The newest readable checkpoint, as numpy arrays with the structure of ``template``.

        ``check_config(saved_config_dict)`` runs before the arrays are read; what it raises
        propagates (a config mismatch is not an unreadable checkpoint). Warns (UserWarning) naming the unreadable newer checkpoints and the one restored.

        Raises:
          FileNotFoundError: no checkpoint in the directory.
          ValueError: none of them can be read (each one's error is listed).
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        failures = []
        for step in reversed(steps):
            try:
                restored = self._restore(step, template, key_names, check_config)
            except _Final as e:
                raise e.error from None
            except Exception as e:  # noqa: BLE001 - any unreadable file means try an older one
                failures.append(f"{self.directory / str(step)} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})")
                continue
            if failures:
                moved = ""
                if self.writer:  # out of the way of the resumed run's saves, not deleted
                    for bad in steps[steps.index(step) + 1:]:
                        (self.directory / str(bad)).rename(self.directory / f"{bad}.unreadable")
                    self._manager.reload()
                    moved = " (moved to <step>.unreadable)"
                warnings.warn(f"checkpoint {failures[0]} is unreadable"
                              + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
                              + f"; resuming from the previous one, {restored.path}{moved}",
                              stacklevel=2)
            return restored
        raise ValueError("no readable checkpoint in " + str(self.directory) + ": "
                         + "; ".join(failures))

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()


def config_dict(config: Any) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def saved_steps(directory: str | Path) -> list[int]:
    """The steps of the finished checkpoints under ``directory`` (cheap: names only).

    Orbax renames a checkpoint's temporary directory to its step number only when the save is
    complete, so a save cut short by a kill is not listed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
