"""The bootstrap job with the checkpoints a user of released BLIP weights has: hub names resolved
offline from a cache the test writes (HF_HUB_OFFLINE=1), and salesforce/BLIP `.pth` files."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from bootstrap_world import bootstrap_settings, make_small_world
from capfilt.world.server import WorldServer
from model.checkpoint import checkpoint_hash
from pipelines.bootstrap.run import run_bootstrap
from test_hub_checkpoints import CAP_SHA, ITM_SHA, make_hub_cache, make_pth_files

pytestmark = pytest.mark.slow
WORLD_ROWS = 12


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bootstrap_ckpt")
    world = make_small_world(root / "world", WORLD_ROWS, broken_share=0.0)
    server = WorldServer(world.root, port=0).start()
    urls = world.write_urls(root / "web.parquet", server.base_url)
    cache = root / "hub"
    hub = make_hub_cache(cache)
    pth = make_pth_files(root / "pth")
    # Set before Ray starts: its workers (the caption and filter actors) inherit the environment.
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield {"root": root, "urls": urls, "hub": hub, "pth": pth}
    ray.shutdown()
    mp.undo()
    server.stop()


def _captioned(out) -> list[dict]:
    rows = pq.read_table(Path(out) / "parquet").to_pylist()
    assert len(rows) == WORLD_ROWS
    return [r for r in rows if r["status"] == "ok"]


def test_hub_names_for_captioner_and_filter(env):
    settings = bootstrap_settings(env["urls"], env["root"] / "hub_out", None, captioner=Path("org/cap"),
                                  filter=Path(f"org/itm@{ITM_SHA}"), threshold=0.0)
    manifest = run_bootstrap(settings, verbose=False)
    ok = _captioned(settings.output)
    assert ok and all(len(r["synthetic_captions"]) == 1 and r["web_itm"] is not None for r in ok)
    sources = manifest["checkpoint_sources"]
    assert sources["captioner"]["pinned"] == f"org/cap@{CAP_SHA}" and sources["captioner"]["revision"] == CAP_SHA
    assert sources["filter"]["pinned"] == f"org/itm@{ITM_SHA}"
    assert manifest["checkpoints"] == {"captioner": checkpoint_hash(env["hub"]["org/cap"]),
                                       "filter": checkpoint_hash(env["hub"]["org/itm"])}
    assert manifest["settings"]["captioner"] == "org/cap", "the settings keep what the user wrote"


def test_released_preset_names_for_captioner_and_filter(env):
    """`--captioner blip-large --filter blip-itm-large`, their hub repos holding tiny stand-ins."""
    settings = bootstrap_settings(env["urls"], env["root"] / "preset_out", None, captioner=Path("blip-large"),
                                  filter=Path("blip-itm-large"), threshold=0.0)
    manifest = run_bootstrap(settings, verbose=False)
    assert _captioned(settings.output)
    sources = manifest["checkpoint_sources"]
    assert sources["captioner"]["preset"] == "blip-large"
    assert sources["captioner"]["pinned"] == "Salesforce/blip-image-captioning-large@" + "4" * 40
    assert sources["filter"]["pinned"] == "Salesforce/blip-itm-large-coco@" + "5" * 40
    assert manifest["checkpoints"]["filter"] == checkpoint_hash(env["hub"]["blip-itm-large"])


def test_pth_files_for_captioner_and_filter(env):
    settings = bootstrap_settings(env["urls"], env["root"] / "pth_out", None, captioner=env["pth"]["captioner"],
                                  filter=env["pth"]["filter"], threshold=0.0)
    manifest = run_bootstrap(settings, verbose=False)
    ok = _captioned(settings.output)
    assert ok and all(len(r["synthetic_captions"]) == 1 and r["web_itm"] is not None for r in ok)
    assert manifest["checkpoints"]["captioner"] == checkpoint_hash(env["pth"]["captioner"])


def test_unknown_hub_name_stops_the_job_before_any_work(env):
    settings = bootstrap_settings(env["urls"], env["root"] / "unknown_out", None, captioner=Path("org/nothing"),
                                  filter=Path("org/itm"))
    with pytest.raises(ValueError, match="'org/nothing'.*not in the hub cache"):
        run_bootstrap(settings, verbose=False)
    assert not (env["root"] / "unknown_out" / "parquet").exists()
