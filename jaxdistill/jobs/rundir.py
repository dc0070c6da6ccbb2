"""Run directories that never lie: a run directory belongs to one resolved config.

    run_dir/config.yaml   the resolved config the directory was made for (`jaxdistill config show`'s
                          format; `jaxdistill eval RUN_DIR` reads it)
    run_dir/run.json      its fingerprint (sha256 of the flattened config), the jaxdistill version,
                          and every accepted change (`--resume-changed`) with the keys it changed

Starting a run in a directory that holds another config's run is refused before any work, naming
every differing key with its old and new value (`RunDirError`, a usage error). Two switches, for the
cases a user wants: `on_change="resume"` (`--resume-changed`: continue from the checkpoints with the
new settings, e.g. more steps; the change is recorded in run.json) and `on_change="new"`
(`--force-new`: the old directory is moved aside to `RUN_DIR.replaced-<time>`, never deleted, and
the run starts afresh). Keys a newer jaxdistill added are no difference when the run uses their
default value; `run_dir` (a moved directory), `cache_dir` and `train.stop_at_step` (when to stop this
process) never are.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from jaxdistill.atomic_files import atomic_write, write_json
from jaxdistill.config import RunConfig, dump, load_yaml, to_dict
from jaxdistill.train.loop import flat_config

# where the run lives, where its caches are, when this process stops: not what the run computes
NOT_SETTINGS = ("run_dir", "cache_dir", "train.stop_at_step")
ON_CHANGE = ("refuse", "resume", "new")
OWN_MARKERS = ("RUNNING",)  # what a sweep puts in a point's directory before the run starts


def _own(name: str) -> bool:
    """A file jaxdistill writes before a run claims its directory: a sweep's marker, or the temporary
    of an atomic write (`.NAME.tmp-PID`) a kill left behind."""
    return name in OWN_MARKERS or (name.startswith(".") and ".tmp-" in name)


class RunDirError(ValueError):
    """A run directory that holds another run (a usage error: another run_dir, the same settings, or a
    switch)."""


def settings(run: RunConfig) -> dict[str, Any]:
    """The flattened config, without the keys that are not settings of the run."""
    return {k: v for k, v in flat_config(to_dict(run)).items() if k not in NOT_SETTINGS}


@functools.cache
def default_settings() -> dict[str, Any]:
    """The settings of the default config (what a key a newer version added is compared with)."""
    return settings(RunConfig())


def fingerprint(obj) -> str:
    """A short stable hash of JSON-able data (a run's settings, a cache key's parts)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def differences(saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any]) -> dict[str, tuple]:
    """{key: (old, new)} for every setting that differs; a key missing from `saved` (added by a newer
    version) differs only when `current` moves it off its default."""
    out = {}
    for key in sorted(set(saved) | set(current)):
        if key in NOT_SETTINGS:
            continue
        old, new = saved.get(key, defaults.get(key)), current.get(key)
        if key not in saved and key in defaults and new == defaults[key]:
            continue
        if old != new:
            out[key] = (saved.get(key, "<absent>"), current.get(key, "<absent>"))
    return out


def describe(changed: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())


def stored_settings(run_dir: Path) -> dict[str, Any] | None:
    """The settings a run directory was made for (None: no config.yaml, a fresh directory)."""
    file = run_dir / "config.yaml"
    if not file.is_file():
        return None
    try:
        tree = load_yaml(file.read_text())
    except Exception as err:  # noqa: BLE001 — any unreadable file: refuse, do not guess
        raise RunDirError(f"{file} cannot be read ({type(err).__name__}: {err}); move {run_dir} away or use "
                          "another run_dir") from err
    if not isinstance(tree, dict):
        raise RunDirError(f"{file} is not a run config; move {run_dir} away or use another run_dir")
    return {k: v for k, v in flat_config(tree).items() if k not in NOT_SETTINGS}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `check` decided: the keys a checkpoint's saved config may differ in (added by a newer
    version, or changed with --resume-changed, now or in an earlier run of this directory), and why
    the directory is to be moved aside first (--force-new; done by `claim`, after every check passed)."""

    accepted: tuple[str, ...] = ()
    move_aside: str | None = None


def check(run: RunConfig, *, on_change: str = "refuse", log=print) -> Plan:
    """Before any work: whether `run` may use its run_dir (read only: nothing is moved or written
    here). Raises `RunDirError` for a directory of another run."""
    if on_change not in ON_CHANGE:
        raise ValueError(f"on_change={on_change!r}; valid: {', '.join(ON_CHANGE)}")
    run_dir = Path(run.run_dir)
    saved = stored_settings(run_dir)
    if saved is None:
        foreign = [p.name for p in run_dir.iterdir() if not _own(p.name)] if run_dir.is_dir() else []
        if foreign and on_change == "new":
            return Plan(move_aside="held files of no run")
        if foreign:
            raise RunDirError(f"run_dir {run_dir} exists, is not empty and holds no run (no config.yaml): use another "
                              "run_dir, or --force-new to move it aside")
        return Plan()
    current = settings(run)
    before = tuple(_record(run_dir).get("accepted", ()))  # accepted by an earlier (maybe interrupted) run
    new_keys = tuple(k for k in current if k not in saved)
    changed = differences(saved, current, default_settings())
    if not changed:
        return Plan(accepted=tuple(dict.fromkeys((*before, *new_keys))))
    if on_change == "new":
        return Plan(move_aside="held a run with other settings")
    if on_change == "refuse":
        raise RunDirError(f"run_dir {run_dir} holds a run with other settings: {describe(changed)}. Use another "
                          "run_dir, the same settings to resume it, --resume-changed to continue it with the new "
                          "settings, or --force-new to move it aside and start afresh")
    log(f"{run_dir}: continuing with changed settings ({describe(changed)})")
    return Plan(accepted=tuple(dict.fromkeys((*before, *new_keys, *changed))))


def _record(run_dir: Path) -> dict:
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _move_aside(run_dir: Path, why: str, log) -> None:
    """--force-new: rename run_dir to RUN_DIR.replaced-<time> (never deleted)."""
    aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    for n in range(2, 1000):  # a second --force-new within the same second
        if not aside.exists():
            break
        aside = aside.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    run_dir.rename(aside)
    log(f"{run_dir}: {why}; moved to {aside}, starting afresh")


def claim(run: RunConfig, plan: Plan = Plan(), log=print) -> None:
    """After every check passed: move the old directory aside if the plan says so (--force-new), then
    create run_dir and record the config it belongs to (config.yaml, run.json), atomically; an
    accepted change is appended to run.json's history and its keys stay accepted for later resumes.
    Process 0 only (the caller's)."""
    from jaxdistill import __version__

    run_dir = Path(run.run_dir)
    if plan.move_aside:
        _move_aside(run_dir, plan.move_aside, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_file = run_dir / "run.json"
    record = _record(run_dir) or {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": []}
    record["accepted"] = sorted(set(record.get("accepted", ())) | set(plan.accepted))
    current = settings(run)
    old = stored_settings(run_dir)
    changed = differences(old, current, default_settings()) if old else {}
    if changed:
        record.setdefault("changes", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                 "changed": {k: [o, n] for k, (o, n) in changed.items()}})
    record.update(fingerprint=fingerprint(current), version=__version__)
    atomic_write(run_dir / "config.yaml", lambda tmp: tmp.write_text(dump(run)))
    write_json(record_file, record)
