"""Orbax checkpoints of a training run: everything needed to continue it bit for bit, verified.

A checkpoint (one directory per step, written by ``orbax.checkpoint.CheckpointManager``) holds

    state     the TrainState as arrays: params, optimizer state, step (Orbax's array format)
    rng       the run's PRNG keys as raw uint32 key data (init, train, shuffle, eval)
    loop      JSON: the data-order state (epoch, position in the epoch), the epoch's running
              metric sums, the NaN guard's counters and the history of finished epochs
    config    JSON: the TrainConfig of the run (``to_dict``: one object per section; older
              checkpoints hold the flat form, which resume still reads)
    checksum  JSON: the SHA-256 of each of the four items above (see ``content_digests``)

No pickle. Orbax writes each checkpoint into a temporary directory and renames it when it is
complete, so the checksum is committed together with the content it describes, and a process
killed during a save leaves the previous checkpoints readable.

Every save is read back and checked against its checksum before older checkpoints are rotated
away; a save that fails the check is moved aside to ``<step>.corrupt`` and the older ones are
kept. Restoring verifies the checksum too; a checkpoint that is unreadable or whose content
changed on disk is skipped and, by the writing process, moved aside (``<step>.corrupt``, never
deleted); the newest checkpoint that verifies is restored instead, with a warning that names
both. So the newest checkpoint in the
directory is always one that verified, and rotation (which deletes the oldest beyond ``keep``)
never deletes the last verified one. A checkpoint without a checksum is restored unverified,
with a warning that says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxvae.training import step as train

# Config fields a resumed run may change: they do not alter the model or the trajectory.
RESUMABLE_CHANGES = frozenset({"epochs", "eval_batch_size", "checkpoint_every",
                               "keep_checkpoints", "max_skipped_steps"})

CONTENT_ITEMS = ("state", "rng", "loop", "config")  # what the checksum covers, in this order
CHECKSUM_FORMAT = "jaxvae-checkpoint-sha256-v1"
CORRUPT_SUFFIX = ".corrupt"


class _Final(Exception):
    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class _Corrupt(Exception):
    """A checkpoint that reads but whose content differs from its checksum."""


class Restored(NamedTuple):
    step: int  # the checkpoint's step (updates applied, skipped ones included)
    state: train.TrainState
    keys: dict[str, jax.Array]  # name -> typed PRNG key
    loop: dict  # the JSON loop state (see the module docstring)
    config: dict  # the saved config as a dict
    path: Path  # the checkpoint directory restored
    verified: bool = True  # False: it has no checksum, so its content was not checked


def _to_host(tree: Any) -> Any:
    """Numpy copies of every leaf (replicated global arrays included)."""
    def leaf(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            a = a.addressable_data(0)  # fully replicated: every process holds all of it
        return np.array(a)
    return jax.tree.map(leaf, tree)


def _path_name(path) -> str:
    """``params/encoder/Dense_0/kernel`` for a tree path (dict keys, attributes, indices alike,
    so a NamedTuple and the dict Orbax may hand back name their leaves the same)."""
    parts = []
    for k in path:
        for attr in ("name", "key", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _update(h, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two sequences collide
    h.update(data)


def _arrays_digest(tree: Any) -> str:
    """SHA-256 over every leaf sorted by path: path, dtype, shape, then its little-endian bytes."""
    h = hashlib.sha256()
    leaves = [(_path_name(p), np.asarray(x))
              for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
    for name, a in sorted(leaves, key=lambda item: item[0]):
        if a.dtype.byteorder == ">":
            a = a.byteswap().view(a.dtype.newbyteorder("<"))
        _update(h, json.dumps([name, a.dtype.name, list(a.shape)]).encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _json_digest(obj: Any) -> str:
    """SHA-256 of the canonical JSON text (sorted keys, no spaces; tuples and lists alike)."""
    text = json.dumps(json.loads(json.dumps(obj)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def content_digests(state: Any, key_data: dict, loop: dict, config: dict) -> dict[str, str]:
    """The SHA-256 (hex) of each item of a checkpoint, as stored in its ``checksum`` item.

    ``state`` is the tree ``{"step", "params", "opt_state"}`` of numpy arrays, ``key_data`` the
    raw key data by name, ``loop`` the loop JSON as saved (with ``key_impl``), ``config`` the
    config JSON. Arrays are hashed with their paths, dtypes and shapes, so a changed value,
    dtype, shape or a swapped leaf all change the digest.
    """
    return {"state": _arrays_digest(state), "rng": _arrays_digest(key_data),
            "loop": _json_digest(loop), "config": _json_digest(config)}


def _mismatch(recorded: Any, actual: dict[str, str]) -> str | None:
    """Why ``actual`` does not match the ``checksum`` item ``recorded``; None when it does."""
    if not isinstance(recorded, dict) or recorded.get("format") != CHECKSUM_FORMAT:
        return "its checksum record is not readable"
    sha = recorded.get("sha256")
    bad = [item for item in CONTENT_ITEMS
           if not isinstance(sha, dict) or sha.get(item) != actual[item]]
    if bad:
        return (f"the SHA-256 of its {', '.join(bad)} differs from the one recorded when it "
                "was saved")
    return None


def _one_line(e: Exception) -> str:
    """The exception's type and first line, TensorStore's long chains cut to the innermost file
    and its error (``DATA_LOSS: local file ".../d/5ca3": Error decoding b-tree node: ...``)."""
    text = str(e).splitlines()[0] if str(e) else ""
    text = text.split(" [tensorstore_spec")[0]
    if 'local file "' in text:
        code = text.split(":")[0]
        text = text[text.rindex('local file "'):]
        if code.isupper():  # an absl status code such as DATA_LOSS or NOT_FOUND
            text = f"{code}: {text}"
    return f"{type(e).__name__}: {text[:240]}"


def _ignore_orphaned_tensorstore_callbacks() -> None:
    """Keeps a failed restore from printing tracebacks after its error.

    When one array of an Orbax restore fails to read, Orbax closes its event loop while
    TensorStore still reads the other arrays; their completion callbacks then hit the closed
    loop and Python prints a "RuntimeError: Event loop is closed" traceback for each (hundreds
    of lines for a large model). Those exceptions carry no information (the failure itself is
    reported), so a process-wide ``sys.unraisablehook`` filter drops exactly them and passes
    every other unraisable exception on. Installed once, on the first failed read.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop_callbacks", False):
        return

    def hook(unraisable):
        if (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            return
        previous(unraisable)

    hook._drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


def config_differences(saved: dict, current: dict,
                       allowed: frozenset[str] = RESUMABLE_CHANGES,
                       defaults: dict | None = None) -> list[str]:
    """``"field: saved -> current"`` for every field that differs and may not change on resume.

    A field missing from ``saved`` (a checkpoint written before the field existed) is no
    difference when its current value is its default in ``defaults``: the saved run had the
    behaviour of that default.
    """
    current = json.loads(json.dumps(current))  # tuples -> lists, as saved
    defaults = json.loads(json.dumps(defaults or {}))
    diffs = []
    for name in sorted(set(saved) | set(current)):
        if name in allowed:
            continue
        if name not in saved and name in defaults and current.get(name) == defaults[name]:
            continue
        old, new = saved.get(name, "<absent>"), current.get(name, "<absent>")
        if old != new:
            diffs.append(f"{name}: {old!r} -> {new!r}")
    return diffs


def check_resumable_epochs(restored: Restored, epochs: int) -> None:
    """Refuses to resume a run with fewer epochs than its checkpoint has already finished.

    Raises:
      ValueError: ``epochs`` is below the number of finished epochs in ``restored``.
    """
    done = len(restored.loop["history"])
    if epochs < done:
        raise ValueError(f"cannot resume from {restored.path} with epochs={epochs} (--epochs): "
                         f"that run has already finished {done} epochs; resume with --epochs "
                         f"{done} or more, or start a new run in another directory")


class CheckpointManager:
    """Saves, verifies and restores training checkpoints under ``directory`` (see the module
    docstring).

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
        self.keep = keep
        self.writer = writer
        me = jax.process_index()
        if writer:
            self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            # Rotation is ours (``save``): only after the new checkpoint was read back and verified.
            max_to_keep=None, save_interval_steps=1 if writer else 0,
            create=False, read_only=not writer,
            cleanup_tmp_directories=writer, enable_async_checkpointing=False,
            # Each process runs its own manager: no barriers with processes that never save.
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}))
        if not writer and not self.directory.exists():
            self._manager = None
            return
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=CONTENT_ITEMS + ("checksum",))

    def all_steps(self) -> list[int]:
        return [] if self._manager is None else sorted(self._manager.all_steps())

    def save(self, state: train.TrainState, keys: dict[str, jax.Array], loop: dict,
             config: dict) -> Path | None:
        """Writes the checkpoint of ``state.step`` with its checksum, reads it back, verifies it,
        and only then deletes the oldest checkpoints beyond ``keep``.

        Returns:
          The directory of the newest verified checkpoint: this one, or, when reading it back
          failed (a UserWarning says why; it is moved to ``<step>.corrupt``), the previous one
          (None if there is none).
        """
        if not self.writer:
            raise RuntimeError("this process does not write checkpoints (writer=False)")
        tree = _to_host({"step": state.step, "params": state.params,
                         "opt_state": state.opt_state})
        step = int(tree["step"])
        key_data = {name: np.asarray(jax.random.key_data(k)) for name, k in keys.items()}
        loop = {**loop, "key_impl": {name: str(jax.random.key_impl(k))
                                     for name, k in keys.items()}}
        digests = content_digests(tree, key_data, loop, config)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree),
            rng=ocp.args.StandardSave(key_data),
            loop=ocp.args.JsonSave(loop),
            config=ocp.args.JsonSave(config),
            checksum=ocp.args.JsonSave({"format": CHECKSUM_FORMAT, "sha256": digests})),
            force=True)
        self._manager.wait_until_finished()
        path = self.directory / str(step)
        problem = self._read_back(step, tree, key_data, digests)
        if problem is not None:
            aside = self._move_aside(step)
            self._manager.reload()
            steps = self.all_steps()
            kept = self.directory / str(steps[-1]) if steps else None
            warnings.warn(f"checkpoint {path} {problem} when read back right after it was "
                          f"written (moved to {aside.name}); the older checkpoints are kept, "
                          f"the newest is {kept}. Check the disk the run writes to.",
                          stacklevel=2)
            return kept
        for old in self.all_steps()[:-self.keep]:
            self._manager.delete(old)
        return path

    def _read_back(self, step: int, tree: Any, key_data: dict, digests: dict) -> str | None:
        """Why the checkpoint just written does not verify; None when it does."""
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(tree), rng=ocp.args.StandardRestore(key_data),
                loop=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(),
                checksum=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - any failure to read it back means it is bad
            _ignore_orphaned_tensorstore_callbacks()
            return f"is unreadable ({_one_line(e)})"
        actual = content_digests(out.state, dict(out.rng), dict(out.loop), dict(out.config))
        problem = _mismatch(out.checksum, actual)
        if problem is None and actual != digests:
            problem = "its content differs from the state that was saved"
        return None if problem is None else f"failed verification ({problem})"

    def _move_aside(self, step: int) -> Path:
        """Renames a bad checkpoint to ``<step>.corrupt`` (kept for inspection, out of Orbax's
        way, so the step can be written again)."""
        target = self.directory / f"{step}{CORRUPT_SUFFIX}"
        n = 1
        while target.exists():
            target = self.directory / f"{step}{CORRUPT_SUFFIX}-{n}"
            n += 1
        (self.directory / str(step)).rename(target)
        return target

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
        verified = (self.directory / str(step) / "checksum").is_dir()
        items = dict(state=ocp.args.StandardRestore(tree),
                     rng=ocp.args.StandardRestore(key_template),
                     loop=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
        if verified:
            items["checksum"] = ocp.args.JsonRestore()
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        loop = dict(out.loop)
        if verified:
            problem = _mismatch(out.checksum, content_digests(
                out.state, dict(out["rng"]), loop, dict(out.config)))
            if problem is not None:
                raise _Corrupt(problem)
        impl = loop.pop("key_impl")
        keys = {name: jax.random.wrap_key_data(np.asarray(out["rng"][name]), impl=impl[name])
                for name in key_names}
        state = train.TrainState(step=np.asarray(out.state["step"]), params=out.state["params"],
                                 opt_state=out.state["opt_state"])
        return Restored(step, state, keys, loop, dict(out.config), self.directory / str(step),
                        verified)

    def restore_latest(self, template: train.TrainState, key_names: tuple[str, ...],
                       check_config=None) -> Restored:
        """The newest checkpoint that verifies, as numpy arrays with the structure of ``template``.

        ``check_config(saved_config_dict)`` runs before the arrays are read; what it raises
        propagates (a config mismatch is not a corrupt checkpoint). Newer checkpoints that are
        unreadable or fail their checksum are skipped and (``writer``) moved to
        ``<step>.corrupt``; a UserWarning names them and the one restored. A checkpoint without
        a checksum is restored with a UserWarning that it could not be verified.

        Raises:
          FileNotFoundError: no checkpoint in the directory.
          ValueError: none of them can be restored (one line naming each and why).
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
            except _Corrupt as e:
                failures.append((step, f"failed verification: {e}"))
                continue
            except Exception as e:  # noqa: BLE001 - any unreadable file means try an older one
                _ignore_orphaned_tensorstore_callbacks()
                failures.append((step, f"is unreadable ({_one_line(e)})"))
                continue
            unverified = ("" if restored.verified else
                          " (it has no checksum, so its content cannot be verified)")
            if failures:
                moved = ""
                if self.writer:  # out of the way of the resumed run's saves, not deleted
                    names = [self._move_aside(bad).name for bad, _ in failures]
                    self._manager.reload()
                    moved = ("; the bad checkpoint was moved to " if len(names) == 1 else
                             "; the bad checkpoints were moved to ") + ", ".join(names)
                bad = "; ".join(f"checkpoint {self.directory / str(s)} {why}"
                                for s, why in failures)
                which = "readable checkpoint" if unverified else "checkpoint that verifies"
                warnings.warn(f"{bad}; resuming from {restored.path}, the newest {which}"
                              f"{unverified}{moved}", stacklevel=2)
            elif unverified:
                warnings.warn(f"resuming from checkpoint {restored.path}{unverified}",
                              stacklevel=2)
            return restored
        raise ValueError(
            f"cannot resume from {self.directory}: none of its checkpoints can be restored ("
            + "; ".join(f"step {s} {why}" for s, why in failures)
            + "); start a new run without --resume in another directory")

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()


def config_dict(config: Any) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def saved_steps(directory: str | Path) -> list[int]:
    """The steps of the finished checkpoints under ``directory`` (cheap: names only).

    Orbax renames a checkpoint's temporary directory to its step number only when the save is
    complete, so a save cut short by a kill is not listed (nor one moved to ``<step>.corrupt``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
