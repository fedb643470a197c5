"""run_bootstrap(settings): refuse to mix runs, plan, skip what is committed, stream the graph, commit.

The driver plans and commits; Ray workers read the input, download, caption, filter and write
(graph.py, part_writer.py, commit.py). Output goes to any fsspec filesystem, object storage too.

Ray: joins the cluster in RAY_ADDRESS when it is set (a `ray job submit` sets it), else starts a
local instance for the run and stops it afterwards. A Ray already initialised by the caller
(a test, a notebook) is used as it is.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import ray

from pipelines.bootstrap.commit import IO_TASK_CPUS, Committer, Progress
from pipelines.bootstrap.graph import build_graph
from pipelines.bootstrap.input_plan import input_fingerprint, plan_input
from pipelines.bootstrap.layout import RUN_FILE, OutputLayout
from pipelines.bootstrap.manifest import build_manifest, summary_table, write_manifest
from pipelines.bootstrap.settings import OPERATIONAL, BootstrapSettings
from pipelines.ray_session import start_or_join_ray
from pipelines.run_folder import check_run_folder, result_settings


class BootstrapError(RuntimeError):
    """The job cannot start or did not account for every row."""


def prepare_output(settings: BootstrapSettings, layout: OutputLayout, fingerprint: str) -> dict[str, Any]:
    """Refuse to mix runs: a non-empty folder needs --resume (same input, same settings) or
    --overwrite. Returns the run record (run.json)."""
    storage = layout.storage
    if settings.overwrite and not storage.is_empty():
        storage.remove_tree("")
    run = {"input": fingerprint, "settings": result_settings(settings, OPERATIONAL)}
    check_run_folder(storage, RUN_FILE, run, resume=settings.resume, job="bootstrap", error=BootstrapError,
                     not_empty="pass --resume to finish it or --overwrite")
    storage.make_root()
    layout.clear_uncommitted()
    storage.put(RUN_FILE, json.dumps(run, sort_keys=True).encode())
    return run


def _init_ray(settings: BootstrapSettings) -> bool:
    """Join or start Ray (pipelines/ray_session.py); True when this call started it (and must stop it)."""
    # the graph's actors, and room beside them for the download, write and assembly tasks
    actors = 0 if settings.download_only else (settings.captioner_actors + settings.filter_actors)
    return start_or_join_ray(actors * settings.cpus_per_actor + settings.download_cpus + 3 * IO_TASK_CPUS)


def _log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_bootstrap(settings: BootstrapSettings, verbose: bool = True, stages: dict[str, type] | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or finish, with --resume) the job; returns the manifest it wrote.

    `stages` replaces graph stages by name (graph.build_graph); `log` receives progress lines
    (default: stderr when verbose)."""
    start = time.perf_counter()
    log = log or (_log_to_stderr if verbose else (lambda line: None))
    layout = OutputLayout.at(settings.output, settings.storage_options)
    run = prepare_output(settings, layout, input_fingerprint(settings))  # refuse before Ray starts
    # The checkpoints' sha256 (for the manifest) reads every weight byte: ~2 s per GB. It runs
    # beside Ray's start-up and the job instead of before them; a folder that is missing is
    # reported here, one that cannot be read within moments, before any work is done.
    for role in () if settings.download_only else ("captioner", "filter"):
        if not os.path.exists(getattr(settings, role)):
            raise BootstrapError(f"{role} checkpoint {getattr(settings, role)}: no such file or folder")
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-hash")
    hashes = {} if settings.download_only else {
        role: hashing.submit(_checkpoint_hash, getattr(settings, role)) for role in ("captioner", "filter")}
    hashing.shutdown(wait=False)
    started = _init_ray(settings)
    try:
        for future in hashes.values():
            if future.done():
                future.result()  # raises a checkpoint that could not be read, before the graph starts
        plan = plan_input(settings, layout)
        if run.get("plan") not in (None, plan.fingerprint):
            raise BootstrapError("--resume: the input is not the one the first run planned")
        if run.get("plan") is None:
            layout.storage.put(RUN_FILE, json.dumps({**run, "plan": plan.fingerprint}, sort_keys=True).encode())
        done = layout.done_ids()
        pending = [s for s in plan.shards if s.shard not in done]
        if pending:
            progress = Progress(sum(s.rows for s in pending), len(pending), log, settings.progress_seconds)
            log(f"bootstrap: {len(plan.shards)} shards planned, {len(done)} already committed, "
                f"{len(pending)} to do ({progress.total_rows} rows)")
            committer = Committer(layout, {s.shard: s.rows for s in pending}, plan.extra_schema,
                                  settings.download_only, settings.parquet_images, progress)
            graph = build_graph(plan, pending, settings, stages)
            for batch in graph.iter_batches(batch_size=None, batch_format="pyarrow"):
                for record in batch.to_pylist():
                    committer.add(record)
                committer.harvest()
            committer.harvest(wait_all=True)
            progress.update(force=True)
            if committer.failed:
                raise BootstrapError(f"shards not written (run again with --resume): {committer.failed}")
            if committer.missing():
                raise BootstrapError(f"rows never reached the writer (shard: rows): {committer.missing()}")
    finally:
        if started:
            ray.shutdown()
    checkpoints = {role: future.result() for role, future in hashes.items()}
    input_rows = sum(s.rows for s in plan.shards)
    manifest = build_manifest(settings, input_rows, layout.markers(), checkpoints,
                              time.perf_counter() - start, len(pending))
    if manifest["output_rows"] != input_rows:
        raise BootstrapError(f"{input_rows} rows in, {manifest['output_rows']} out")
    write_manifest(layout, manifest)
    if verbose:
        print(summary_table(manifest))
    return manifest


def _checkpoint_hash(path: Any) -> str:
    from model.checkpoint import checkpoint_hash

    return checkpoint_hash(path)
