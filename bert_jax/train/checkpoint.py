"""Checkpoints: small functions around orbax's CheckpointManager.

Layout of a run's checkpoint directory:
    <directory>/<step>/                 one per saved step (orbax default naming)
        state/      train-state pytree (params, opt_state, step, rng), sharded arrays via StandardSave
        data_iter/  data-iterator state (JSON)      config/    resolved config (JSON)
        manifest/   data manifest (JSON)            commit_success.txt   written last: the commit marker
        checksums.json   sha256 of each file above, written right before the marker (bert_jax/train/commit.py)
    <directory>/<step>.orbax-checkpoint-tmp        a save in progress (renamed to <step> when done)
    <directory>/quarantine/<name>.<unix time>      incomplete or corrupt saves set aside on resume

Completeness: a step is complete when its directory carries the commit marker, every file matches checksums.json
and it restores. A save in progress, one a crash interrupted, or one whose files are damaged (truncated, or a bit
flipped that leaves them readable) is never read as complete:
`restore_latest` skips it with a warning naming it and falls back to the previous one. Skipped steps
(and stale tmp directories) are *moved* to quarantine/, never deleted, so a resumed run can save that
step again and the evidence stays for inspection; the only deletions are orbax's keep-last-N/best-N
of steps this run's manager saved or found complete.

Saves are asynchronous: `save_checkpoint` returns once arrays are copied off the devices; call
`wait_for_saves` before exiting. A failed save (e.g. disk full) raises CheckpointSaveError from
`wait_for_saves` or from the next `save_checkpoint`; the previous complete step is untouched.

Multi-host: every process calls every function (orbax synchronises); quarantine moves are done by
process 0 only.

What makes a step complete, and reading a finished checkpoint's params outside a run (fine-tuning, export,
`train.init_from`, a distillation teacher), live in `bert_jax.weights`, below train/ and objectives/.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from bert_jax import interrupts
from bert_jax.outputs import is_disk_full
from bert_jax.train.commit import last_verified_step, temporary_path_class, unusable_reason  # noqa: F401
# The layout's read side (which steps are complete) sits below train/, with the weight loader that reads it;
# COMMIT_MARKER and ITEM_NAMES are re-exported for those who write or inspect the layout here.
from bert_jax.weights import (COMMIT_MARKER, ITEM_NAMES, complete_steps, incomplete_reason,  # noqa: F401
                              list_children, step_directories, storage_path)

log = logging.getLogger(__name__)

TMP_SUFFIX = ".orbax-checkpoint-tmp"
QUARANTINE_DIR = "quarantine"


class IncompatibleCheckpointError(ValueError):
    """The checkpoint cannot be restored into what this run asks for; the message lists what differs."""


class CorruptCheckpointError(ValueError):
    """Checkpoints exist but none is complete and readable; the message names them."""


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed; the message says why and which complete step remains."""


# ------------------------------------------------------------------------------------------ manager


def open_manager(directory: str, *, keep_last: int = 3, keep_best: int = 0, best_metric: str | None = None,
                 best_mode: str = "min", async_save: bool = True) -> ocp.CheckpointManager:
    """Manager keeping the `keep_last` newest steps, plus the `keep_best` best by `metrics[best_metric]`.

    Steps are saved only when `save_checkpoint` is called (decide with `should_save`); stale tmp
    directories are left alone here (`restore_latest` quarantines them).
    """
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last} must be >= 1 so the latest checkpoint is never deleted")
    if keep_best and not best_metric:
        raise ValueError(f"keep_best={keep_best} needs best_metric=<name of a metric passed to save_checkpoint>")
    if best_mode not in ("min", "max"):
        raise ValueError(f"best_mode={best_mode!r} must be 'min' or 'max'")
    policies = [ocp.checkpoint_managers.LatestN(n=keep_last)]
    best_fn = None
    if keep_best:
        best_fn = lambda metrics: float(metrics[best_metric])  # noqa: E731
        policies.append(ocp.checkpoint_managers.BestN(
            get_metric_fn=best_fn, reverse=best_mode == "min", n=keep_best,
            keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        # best_fn only makes orbax record metrics; which steps survive is the preservation policy.
        best_fn=best_fn, best_mode=best_mode,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=False, create=True,
        temporary_path_class=temporary_path_class(directory))  # checksums.json is committed with the marker
    # Handlers named up front so a fresh manager can read metadata before anything was saved.
    handlers = {"state": ocp.StandardCheckpointHandler(), "data_iter": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(), "manifest": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(storage_path(directory), item_handlers=handlers, options=options)


def should_save(step: int, *, every: int, total_steps: int, preempted: bool = False) -> bool:
    """Save after `step` completed updates: every `every` steps (0 = never), at the end, on preemption."""
    if preempted or step == total_steps:
        return True
    return every > 0 and step > 0 and step % every == 0


def save_checkpoint(manager: ocp.CheckpointManager, step: int, *, state: Any, data_iter: Mapping,
                    config: Any, manifest: Mapping | None, metrics: Mapping[str, float] | None = None) -> None:
    """Start an asynchronous save of all four items at `step` (waits for the previous save first)."""
    items = {"data_iter": _plain(data_iter), "config": _plain(config), "manifest": _plain(manifest)}
    for name, value in {**items, "metrics": metrics}.items():
        _check_json(value, name)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              **{name: ocp.args.JsonSave(value) for name, value in items.items()})
    try:
        manager.save(step, args=args, metrics=None if metrics is None else dict(metrics), force=True)
    except Exception as e:  # noqa: BLE001 -- re-raised with context below
        raise _save_error(manager, e, step) from e


def wait_for_saves(manager: ocp.CheckpointManager) -> None:
    """Block until the pending save is committed; raises CheckpointSaveError if it failed."""
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
        raise _save_error(manager, e, None) from e


def _plain(value: Any) -> Any:
    """ConfigDicts (anything with to_dict) become plain dicts."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def _check_json(value: Any, name: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint item {name!r} is not JSON-serialisable ({e}); pass plain "
                         f"dicts/lists/str/numbers") from None


def _save_error(manager: ocp.CheckpointManager, error: BaseException, step: int | None) -> CheckpointSaveError:
    directory = str(manager.directory)
    # Other writers of the failed save may still be running; let them end before anyone touches the
    # directory (e.g. a resume quarantining the incomplete step). The manager is unusable afterwards.
    try:
        manager.close()
    except Exception:  # noqa: BLE001 -- the same failure again; the first one is being reported
        pass
    if is_disk_full(error):
        reason = "no space left on device"
    else:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    # The failure may belong to the previous (asynchronous) save rather than to `step`.
    pending = [p.name for p in list_children(directory) if TMP_SUFFIX in p.name]
    failed = [name.split(".")[0] for name in pending] or ([str(step)] if step is not None else [])
    what = "step " + ", ".join(failed) if failed else "the pending save"
    left = f" (incomplete directory {', '.join(pending)} is skipped on resume)" if pending else ""
    complete = complete_steps(directory)
    kept = (f"the last complete checkpoint, step {complete[-1]}, is intact" if complete
            else "no complete checkpoint exists yet")
    return CheckpointSaveError(f"saving checkpoint {what} in {directory} failed: {reason}{left}; {kept}; "
                               f"free space or fix the cause, then resume")


# ------------------------------------------------------------------------------------------ restore


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
    step: int
    path: str
    state: Any
    data_iter: Any
    config: Any
    manifest: Any


def abstract_target(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings`.

    `shardings` is one Sharding for every leaf or a pytree of them matching `tree`; restored arrays
    land with exactly these shardings, whatever mesh the checkpoint was written from.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, target: Any) -> RestoredCheckpoint:
    """Restore `step` into `target` (pytree of jax.ShapeDtypeStruct with shardings, see abstract_target)."""
    path = str(storage_path(manager.directory) / str(step))
    check_restore_target(manager.item_metadata(step)["state"], target, path)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data_iter=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore(), manifest=ocp.args.JsonRestore()))
    return RestoredCheckpoint(step=step, path=path, state=restored["state"], data_iter=restored["data_iter"],
                              config=restored["config"], manifest=restored["manifest"])


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> RestoredCheckpoint | None:
    """Restore the newest complete checkpoint; None when the directory holds no checkpoint at all.

    Call it before the run's first save (it treats any tmp directory as left by a dead process).
    Newer steps that are incomplete or unreadable are skipped with a warning naming them and moved to
    quarantine/ (as are stale tmp directories), so the resumed run can write those steps again.
    An incompatible target raises IncompatibleCheckpointError (that is the run's fault, not the
    checkpoint's); if every checkpoint is unreadable, CorruptCheckpointError.
    """
    directory = str(manager.directory)
    _quarantine_stale_tmp_directories(directory)
    _wait_for_quarantine("stale tmp directories")
    candidates = step_directories(directory)
    skipped = []
    for step, path in reversed(candidates):
        reason = unusable_reason(path)
        if reason is None:
            try:
                restored = restore_checkpoint(manager, step, target)
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 -- any read failure means this step is unusable
                reason = f"unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            else:
                manager.reload()
                return restored
        log.warning("skipping checkpoint %s (%s); trying the previous one", path, reason)
        skipped.append(f"{path} ({reason})")
        _quarantine(path)
        _wait_for_quarantine(path)
        manager.reload()
    if skipped:
        raise CorruptCheckpointError(f"no complete checkpoint in {directory}; skipped: {'; '.join(skipped)}. "
                                     f"They were moved to {storage_path(directory) / QUARANTINE_DIR}")
    return None


def _quarantine(path: str) -> str | None:
    if jax.process_index() != 0:
        return None
    source = storage_path(path)
    parent = source.parent / QUARANTINE_DIR
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / f"{source.name}.{time.time_ns()}"
    source.rename(target)
    log.warning("moved %s to %s (delete it by hand once inspected)", path, target)
    return str(target)


def _wait_for_quarantine(what: str) -> None:
    """Only process 0 moves directories to quarantine/; the others must not list or read the checkpoint directory
    while it renames (a listing that meets a half-moved step fails on one process and leaves the other waiting in
    the next collective: a hang seen in CI), so everyone waits here until the move is done."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"bert_jax checkpoint quarantine: {what}")


def _quarantine_stale_tmp_directories(directory: str) -> None:
    # Only called before a run starts saving, so any tmp directory belongs to a dead process.
    for path in list_children(directory):
        if TMP_SUFFIX in path.name:
            log.warning("incomplete checkpoint %s (a save that never finished) is skipped", path)
            _quarantine(str(path))


# ------------------------------------------------------------------------------------------ checks


def _path_str(path: tuple) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _leaf_shape(leaf: Any) -> tuple:
    shape = tuple(getattr(leaf, "shape", ()))
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        # Typed PRNG keys are stored as their raw uint32 data, one trailing axis longer.
        shape = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype)).shape
    return shape


def _shapes_by_path(tree: Any) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(path): _leaf_shape(leaf) for path, leaf in leaves}


def check_restore_target(saved_metadata: Any, target: Any, checkpoint: str) -> None:
    """Raise IncompatibleCheckpointError listing every path whose presence or shape differs.

    Dtypes may differ (orbax casts to the target's dtype), tree node types may differ (a dataclass
    field and a dict key with the same name are the same path).
    """
    saved = _shapes_by_path(getattr(saved_metadata, "tree", saved_metadata))
    wanted = _shapes_by_path(target)
    lines = []
    for path in sorted(set(saved) | set(wanted)):
        if path not in wanted:
            lines.append(f"  {path}: in checkpoint {saved[path]}, not in restore target")
        elif path not in saved:
            lines.append(f"  {path}: in restore target {wanted[path]}, not in checkpoint")
        elif saved[path] != wanted[path]:
            lines.append(f"  {path}: checkpoint {saved[path]} vs restore target {wanted[path]}")
    if lines:
        raise IncompatibleCheckpointError(
            f"checkpoint {checkpoint} does not match the restore target; restore it with the config it was saved "
            f"with (its config item) or use a fresh directory ({len(lines)} differences):\n"
            + "\n".join(lines))


def check_compatible(saved_config: Any, config: Any, fields: Iterable[str]) -> None:
    """Raise IncompatibleCheckpointError naming each dotted field (e.g. 'model.vocab_size') that differs."""
    saved_config, config = _plain(saved_config), _plain(config)
    problems = []
    for field in fields:
        old, new = _lookup(saved_config, field), _lookup(config, field)
        # JSON turned tuples into lists; compare in that form.
        if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
            problems.append(f"{field} {_fmt(old)} (checkpoint) vs {_fmt(new)} (this run)")
    if problems:
        raise IncompatibleCheckpointError("checkpoint config is incompatible with this run: " + "; ".join(problems)
                                          + "; use a matching config or a fresh checkpoint directory")


_MISSING = object()


def _lookup(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not (isinstance(node, Mapping) or hasattr(node, "keys")) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _fmt(value: Any) -> str:
    return "<missing>" if value is _MISSING else repr(value)


# ------------------------------------------------------------------------------------------ preemption


@dataclasses.dataclass(frozen=True)
class PreemptionFlag:
    """Callable: `flag(step=None) -> bool`, True once a stop signal arrived (then save and exit 0).

    Single-process runs: SIGTERM or a first Ctrl-C (`bert_jax.interrupts`). Multi-host runs (jax.process_count()
    > 1) install no Python handler, which would replace the one of JAX's preemption sync service; there
    `flag(step)` asks orbax's `reached_preemption(step)`, which is True on every host at the same step (call it
    with the current step on every host), and `flag()` without a step is False.
    """
    _restore: Callable[[], None] = lambda: None  # noqa: E731

    def __call__(self, step: int | None = None) -> bool:
        if jax.process_count() > 1:
            return step is not None and bool(ocp.multihost.reached_preemption(step))
        return interrupts.requested()

    def uninstall(self) -> None:
        """Put back the handlers that were installed before, and forget a stop that was handled."""
        self._restore()
        interrupts.clear()


def install_preemption_handler(signals: Sequence[int] = interrupts.STOP_SIGNALS) -> PreemptionFlag:
    """Make SIGTERM and SIGINT stop requests that the train loop checks (it saves and exits 0); a second SIGINT
    aborts at once. Multi-host: nothing is installed (see PreemptionFlag)."""
    if jax.process_count() > 1:
        return PreemptionFlag()
    return PreemptionFlag(_restore=interrupts.install(signals))
