"""run_bootstrap(settings): refuse to mix runs, plan, skip what is committed, stream the graph, commit.

The driver plans and commits; Ray workers read the input, download, caption, filter and write
(graph.py, part_writer.py, commit.py). Output goes to any fsspec filesystem, object storage too.

Ray: joins the cluster in RAY_ADDRESS when it is set (a `ray job submit` sets it), else starts a
local instance for the run and stops it afterwards. A Ray already initialised by the caller
(a test, a notebook) is used as it is.
"""

from __future__ import annotations

import json
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import ray

from model.checkpoint_error import CheckpointError
from model.checkpoint_files import checkpoint_hash, require_role_on_disk
from model.hub import resolve_checkpoint
from pipelines.bootstrap.commit import IO_TASK_CPUS, Committer
from pipelines.bootstrap.graph import build_graph
from pipelines.bootstrap.input_plan import input_fingerprint, plan_input
from pipelines.bootstrap.layout import RUN_FILE, OutputLayout
from pipelines.bootstrap.manifest import build_manifest, summary_table, write_manifest
from pipelines.bootstrap.settings import OPERATIONAL, BootstrapSettings
from pipelines.ray_session import start_or_join_ray
from pipelines.run_folder import check_run_folder, result_settings
from pipelines.progress import Progress


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
    if settings.resume and storage.exists(RUN_FILE):
        run = json.loads(storage.get(RUN_FILE))  # the first start's record: its plan and checkpoints too
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
    own_log = log
    log = log or (_log_to_stderr if verbose else (lambda line: None))
    layout = OutputLayout.at(settings.output, settings.storage_options)
    # An unknown checkpoint name stops the job before the output folder is touched.
    sources = {} if settings.download_only else {
        role: resolve_checkpoint(getattr(settings, role)) for role in ("captioner", "filter")}
    fingerprint = input_fingerprint(settings)
    try:
        run = prepare_output(settings, layout, fingerprint)  # refuse before Ray starts
    except OSError as exc:  # a file where a folder should be, no permission, a full or read-only disk
        raise BootstrapError(f"output {settings.output} cannot be written: {exc}") from None
    # The checkpoints' sha256 reads every weight byte (~2 s per GB): it runs in a thread beside
    # Ray's start-up and the first batches, not before them. The role check, first in the queue,
    # is waited for before the graph starts; the hashes before anything is committed (a resume
    # of a run that recorded them: before the graph starts).
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-hash")
    trained_as = [hashing.submit(_require_role, source.path, role) for role, source in sources.items()]
    hashes = {role: hashing.submit(checkpoint_hash, source.path) for role, source in sources.items()}
    hashing.shutdown(wait=False)
    # The actors load the pinned reference (a hub name at its resolved commit), so that every
    # worker, on any node, loads the weights the driver hashed.
    settings_for_graph = settings.model_copy(update={role: Path(source.pinned) for role, source in sources.items()})
    started = _init_ray(settings)
    try:
        for future in trained_as:
            future.result()  # a checkpoint not trained as its role stops the job here, before any work
        if run.get("checkpoints") is not None:
            run = _record_checkpoints(layout, run, hashes)
        plan = plan_input(settings, layout)
        if run.get("plan") not in (None, plan.fingerprint):
            raise BootstrapError("--resume: the input is not the one the first run planned")
        if run.get("plan") is None:
            run = {**run, "plan": plan.fingerprint}
            layout.storage.put(RUN_FILE, json.dumps(run, sort_keys=True).encode())
        done = layout.done_ids()
        pending = [s for s in plan.shards if s.shard not in done]
        if pending:
            # Without a caller's `log`, progress goes to stderr itself: rewritten in place on a
            # terminal, a plain line every progress_seconds elsewhere.
            progress = Progress("bootstrap", sum(s.rows for s in pending), "rows", every=settings.progress_seconds,
                                log=None if own_log is None and verbose else log,
                                suffix=lambda: f"shards committed {committer.shards_committed}/{len(pending)}")
            log(f"bootstrap: {len(plan.shards)} shards planned, {len(done)} already committed, "
                f"{len(pending)} to do ({progress.total} rows)")
            committer = Committer(layout, {s.shard: s.rows for s in pending}, plan.extra_schema,
                                  settings.download_only, settings.parquet_images, progress)
            graph = build_graph(plan, pending, settings_for_graph, stages)
            try:
                for batch in graph.iter_batches(batch_size=None, batch_format="pyarrow"):
                    if sources and run.get("checkpoints") is None:  # at the first rows (hashes usually done by then)
                        run = _record_checkpoints(layout, run, hashes)
                    for record in batch.to_pylist():
                        committer.add(record)
                    committer.harvest()
            except Exception as exc:  # noqa: BLE001 - re-raised unless the output could not be written
                written = _output_error(exc)
                if written is None:
                    raise
                # a part that cannot be written (a full disk): what finished is committed, the
                # rest is named with the reason in one line, not Ray's traceback per task
                committer.harvest(wait_all=True)
                committer.failed.update({shard: written for shard in committer.planned if shard not in committer.failed})
            committer.harvest(wait_all=True)
            progress.close()
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
                              time.perf_counter() - start, len(pending),
                              {role: source.record() for role, source in sources.items()})
    if manifest["output_rows"] != input_rows:
        raise BootstrapError(f"{input_rows} rows in, {manifest['output_rows']} out")
    # Every shard is committed, so a part still under _work/parts is a copy of one already
    # assembled: a task's first attempt, on a node that died, can land its part after Ray ran the
    # task again elsewhere and the shard was assembled and its parts removed.
    layout.clear_uncommitted()
    write_manifest(layout, manifest)
    if verbose:
        print(summary_table(manifest))
    return manifest


def _record_checkpoints(layout: OutputLayout, run: dict[str, Any], hashes: dict[str, Future]) -> dict[str, Any]:
    """Wait for the checkpoints' hashes; refuse a resume whose weights are not the first run's,
    else record them in run.json (before the first shard is committed)."""
    checkpoints = {role: future.result() for role, future in hashes.items()}
    if run.get("checkpoints") not in (None, checkpoints):
        raise BootstrapError("--resume: the captioner or filter weights are not the first run's "
                             f"(first {run['checkpoints']}, now {checkpoints})")
    run = {**run, "checkpoints": checkpoints}
    layout.storage.put(RUN_FILE, json.dumps(run, sort_keys=True).encode())
    return run


def _require_role(path: Any, role: str) -> None:
    """Refuse a checkpoint not trained as `role`: an NLVR2 or VQA model as the captioner or the
    filter is refused before the graph starts, not loaded because its shapes fit."""
    try:
        require_role_on_disk(path, role)
    except CheckpointError as exc:
        raise BootstrapError(str(exc)) from None


def _output_error(exc: BaseException) -> str | None:
    """"OSError: [Errno 28] No space left on device" when `exc` (a Ray task's failure, however
    wrapped) comes from an OSError of the task's own; None for any other failure."""
    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return f"{type(current).__name__}: {current}"[:500]
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    found = re.search(r"(OSError: \[Errno \d+\][^\n]*)", str(exc))  # Ray pickles the text, not the chain
    return found.group(1)[:500] if found else None
