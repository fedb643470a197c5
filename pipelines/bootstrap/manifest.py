"""manifest.json: what was asked, what came out, with which models and software, how fast.

Counts come from the shards' done-markers, so a resumed run's manifest describes the whole
output, not only the part done in the last session.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections import Counter
from typing import Any, Iterable

from pipelines.bootstrap.schema import STATUSES
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.layout import MANIFEST, OutputLayout

STAGES = ("download", "caption", "filter")
TOP_ERRORS = 20

PACKAGES = ("capfilt", "ray", "torch", "transformers", "img2dataset", "pyarrow", "webdataset", "pydantic", "numpy",
            "fsspec", "s3fs", "gcsfs")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(
    settings: BootstrapSettings,
    input_rows: int,
    markers: Iterable[tuple[int, dict[str, Any]]],
    checkpoints: dict[str, str],
    wall_seconds: float,
    shards_this_run: int,
    checkpoint_sources: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The manifest from every committed shard's marker (see shard_output.shard_stats), read one at
    a time: the driver holds sums, not the markers."""
    status: Counter[str] = Counter({s: 0 for s in STATUSES})
    errors: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    stage_rows: Counter[str] = Counter()
    stage_seconds: Counter[str] = Counter()
    shards = 0
    for _, stats in markers:
        shards += 1
        status.update(stats["status"])
        errors.update(stats.get("status_dict", {}))
        if len(errors) > 10 * TOP_ERRORS:  # keep the driver's memory flat on a corpus of many distinct errors
            errors = Counter(dict(errors.most_common(TOP_ERRORS)))
        for key in ("rows", "kept_web", "kept_synthetic", "synthetic_captions", "images_in_webdataset",
                    "samples_in_webdataset"):
            totals[key] += stats.get(key, 0)
        stage_rows.update(stats["stage_rows"])
        stage_seconds.update(stats["stage_seconds"])
    names = ("download",) if settings.download_only else STAGES
    stages = {
        name: {
            "images": stage_rows[name],
            "busy_seconds": round(stage_seconds[name], 3),
            # per worker: images over the seconds that worker spent in the stage
            "images_per_busy_second": round(stage_rows[name] / stage_seconds[name], 2) if stage_seconds[name] else None,
        }
        for name in names
    }
    return {
        "input_rows": input_rows,
        "output_rows": totals["rows"],
        "status": dict(status),
        "top_errors": dict(errors.most_common(TOP_ERRORS)),
        "kept": {"web": totals["kept_web"], "synthetic": totals["kept_synthetic"]},
        "synthetic_captions": totals["synthetic_captions"],
        "images_in_webdataset": totals["images_in_webdataset"],
        "samples_in_webdataset": totals["samples_in_webdataset"],
        "shards": {"total": shards, "this_run": shards_this_run},
        # storage options may hold credentials: never written down
        "settings": settings.model_dump(mode="json", exclude={"storage_options"}),
        "checkpoints": checkpoints,
        # what --captioner/--filter named and what that resolved to (a hub name's commit)
        "checkpoint_sources": checkpoint_sources or {},
        "versions": package_versions(),
        "wall_seconds": round(wall_seconds, 3),
        "images_per_second": round(totals["rows"] / wall_seconds, 2) if wall_seconds > 0 else None,
        "stages": stages,
    }


def write_manifest(layout: OutputLayout, manifest: dict[str, Any]) -> None:
    layout.storage.put(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def summary_table(manifest: dict[str, Any]) -> str:
    """The few lines a person reads when the job ends."""
    lines = [f"{'rows in':<22}{manifest['input_rows']:>10}", f"{'rows out':<22}{manifest['output_rows']:>10}"]
    lines += [f"  {name:<20}{count:>10}" for name, count in manifest["status"].items()]
    lines += [
        f"{'kept web captions':<22}{manifest['kept']['web']:>10}",
        f"{'kept synthetic':<22}{manifest['kept']['synthetic']:>10}",
        f"{'images in webdataset':<22}{manifest['images_in_webdataset']:>10}",
        f"{'samples in webdataset':<22}{manifest['samples_in_webdataset']:>10}",
        f"{'wall seconds':<22}{manifest['wall_seconds']:>10}",
    ]
    for name, stage in manifest["stages"].items():
        rate = stage["images_per_busy_second"]
        lines.append(f"{name + ' img/s/worker':<22}{('-' if rate is None else rate):>10}")
    return "\n".join(lines)
