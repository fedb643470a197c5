"""A job's output folder holds one run: the one check the bootstrap and the rounds loop make
before any work, so that two runs never mix their outputs in one folder.

A non-empty folder is refused unless the job is told to resume, and a resume is refused unless the
folder's run record (written at the first start) has the same inputs and the same settings, apart
from those that change how the job runs but not what it makes (each job's OPERATIONAL set, kept
beside its settings model, nested sections included).
"""

from __future__ import annotations

import json
from typing import Any, Collection, Mapping, Protocol


class RunFolder(Protocol):
    """What the check needs of a folder (pipelines/bootstrap/storage.py's Storage has it)."""

    url: str

    def is_empty(self) -> bool: ...
    def exists(self, rel: str) -> bool: ...
    def get(self, rel: str) -> bytes: ...


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Dotted names of the leaves that differ (added, removed or changed)."""
    a, b = flatten(before), flatten(after)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def result_settings(settings: Any, operational: Mapping[str, Any] | Collection[str]) -> dict[str, Any]:
    """The settings that decide a job's output: its model dumped as JSON without `operational`
    (field names, or pydantic's nested exclude: {"bootstrap": {"batch_size", ...}})."""
    exclude = operational if isinstance(operational, Mapping) else set(operational)
    return settings.model_dump(mode="json", exclude=exclude)


def check_run_folder(folder: RunFolder, run_file: str, run: Mapping[str, Any], *, resume: bool, job: str,
                     error: type[Exception], not_empty: str, may_change: Collection[str] = ()) -> None:
    """Raise `error` when `folder` holds something that is not this run: a non-empty folder
    without `resume`, a folder with no run record, other inputs, or other `settings` (keys of
    `may_change` aside). `run` is this start's record: {"settings": ..., any input keys: ...}."""
    if folder.is_empty():
        return
    if not resume:
        raise error(f"output {folder.url} is not empty: {not_empty}")
    if not folder.exists(run_file):
        raise error(f"output {folder.url} holds no {job} run to resume ({run_file} is missing)")
    previous = json.loads(folder.get(run_file))
    for key in sorted(k for k in run if k != "settings"):
        changed = changed_keys({key: previous.get(key)}, {key: run[key]})
        if changed:
            raise error(f"--resume: {key} changed since the first run: {changed}")
    changed = [k for k in changed_keys(previous.get("settings", {}), run["settings"]) if k not in may_change]
    if changed:
        raise error(f"--resume: settings that change the output differ from the first run: {changed}")
