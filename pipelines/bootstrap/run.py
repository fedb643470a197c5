"""run_bootstrap(settings): plan, skip what a previous run finished, stream the graph, write.

Ray: joins the cluster in RAY_ADDRESS when it is set (a `ray job submit` sets it), else starts a
local instance for the run and stops it afterwards. A Ray already initialised by the caller
(a test, a notebook) is used as it is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any

import ray

from model.checkpoint import checkpoint_hash
from pipelines.bootstrap.graph import build_graph
from pipelines.bootstrap.input_reader import plan_fingerprint, plan_shards
from pipelines.bootstrap.manifest import build_manifest, summary_table, write_manifest
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.shard_writer import OutputLayout, ShardWriter

# Settings that change how the work runs but not what it produces; a resumed run may change them.
OPERATIONAL = {"output", "resume", "overwrite", "captioner_actors", "filter_actors", "num_gpus_per_actor", "cpus_per_actor",
               "batch_size", "download_threads", "download_batch_size", "download_cpus"}


class BootstrapError(RuntimeError):
    """The job cannot start or did not account for every row."""


def _result_settings(settings: BootstrapSettings) -> dict[str, Any]:
    return settings.model_dump(mode="json", exclude=OPERATIONAL)


def prepare_output(settings: BootstrapSettings, layout: OutputLayout, fingerprint: str) -> None:
    """Refuse to mix runs: a non-empty folder needs --resume (same input, same settings) or
    --overwrite."""
    state = layout.work / "run.json"
    if settings.overwrite and layout.root.exists():
        shutil.rmtree(layout.root)
    if layout.root.exists() and any(layout.root.iterdir()):
        if not settings.resume:
            raise BootstrapError(f"output {layout.root} is not empty: pass --resume to finish it or --overwrite")
        if not state.exists():
            raise BootstrapError(f"output {layout.root} holds no bootstrap run to resume")
        previous = json.loads(state.read_text())
        if previous["plan"] != fingerprint:
            raise BootstrapError("--resume: the input is not the one the first run planned")
        changed = sorted(k for k, v in _result_settings(settings).items() if previous["settings"].get(k) != v)
        if changed:
            raise BootstrapError(f"--resume: settings that change the output differ from the first run: {changed}")
    layout.make()
    layout.clear_uncommitted()
    state.write_text(json.dumps({"plan": fingerprint, "settings": _result_settings(settings)}))


def _init_ray(settings: BootstrapSettings) -> bool:
    """Join or start Ray; True when this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    # A local instance gets at least the logical CPUs the graph asks for: each actor holds its
    # CPUs for its lifetime, and on a small machine the download tasks would otherwise never
    # find room and the graph would stall. ("local": never join a stray cluster.)
    wanted = (settings.captioner_actors + settings.filter_actors) * settings.cpus_per_actor + settings.download_cpus
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(wanted)), include_dashboard=False,
             log_to_driver=False)
    return True


def run_bootstrap(settings: BootstrapSettings, verbose: bool = True) -> dict[str, Any]:
    """Run (or finish, with --resume) the job; returns the manifest it wrote."""
    start = time.perf_counter()
    layout = OutputLayout(settings.output)
    shards = plan_shards(settings)
    prepare_output(settings, layout, plan_fingerprint(shards))
    done = layout.done_shards()
    pending = [s for s in shards if s.shard not in done]
    checkpoints = {"captioner": checkpoint_hash(settings.captioner), "filter": checkpoint_hash(settings.filter)}
    if pending:
        started = _init_ray(settings)
        try:
            writer = ShardWriter(layout, {s.shard: s.stop - s.start for s in pending})
            for batch in build_graph(pending, settings).iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.add(batch)
        finally:
            if started:
                ray.shutdown()
        if writer.missing():
            raise BootstrapError(f"rows never reached the writer (shard: rows): {writer.missing()}")
    input_rows = sum(s.stop - s.start for s in shards)
    manifest = build_manifest(settings, input_rows, layout.done_shards(), checkpoints,
                              time.perf_counter() - start, len(pending))
    if manifest["output_rows"] != input_rows:
        raise BootstrapError(f"{input_rows} rows in, {manifest['output_rows']} out")
    write_manifest(layout, manifest)
    if verbose:
        print(summary_table(manifest))
    return manifest
