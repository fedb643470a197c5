"""The world's web over real HTTP on loopback: it serves what it says and breaks what it says."""

import io
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from capfilt.world import World, WorldMakeSettings, WorldServer, make_world

SLOW_SECONDS = 1.5
TIMEOUT = 0.4  # well under SLOW_SECONDS: a downloader with this timeout gives up on slow rows


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "w"
    make_world(WorldMakeSettings(out=out, size=200, human_size=4, val_size=2, test_size=2, nlvr2_pairs=0, clips=0,
                                 broken_share=0.2, seed=5, workers=1))
    world = World.load(out)
    with WorldServer(out, port=0, slow_seconds=SLOW_SECONDS) as server:
        yield world, server


def get(url: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except OSError:
        return False


def rows_by_fetch(world: World, base_url: str) -> dict[str, list[dict]]:
    labels = world.web_labels
    out: dict[str, list[dict]] = {}
    for row in world.urls(base_url).to_pylist():
        out.setdefault(labels[row["key"]]["fetch"], []).append(row)
    return out


def test_the_stated_fraction_is_broken_evenly(served):
    world, server = served
    rows = rows_by_fetch(world, server.base_url)
    assert {k: len(v) for k, v in rows.items()} == {"ok": 160, "not_found": 10, "truncated": 10, "not_image": 10,
                                                   "slow": 10}


def test_ok_urls_serve_the_image_on_disk(served):
    world, server = served
    for row in rows_by_fetch(world, server.base_url)["ok"][:20]:
        status, ctype, data = get(row["url"])
        assert status == 200 and ctype in ("image/jpeg", "image/png")
        assert data == world.image_path(row["key"]).read_bytes()
        assert decodes(data)


def test_broken_urls_break_as_labelled(served):
    world, server = served
    rows = rows_by_fetch(world, server.base_url)
    for row in rows["not_found"]:
        assert get(row["url"])[0] == 404
    for row in rows["truncated"]:
        status, ctype, data = get(row["url"])
        full = world.image_path(row["key"]).read_bytes()
        assert status == 200 and ctype.startswith("image/")
        assert 0 < len(data) < len(full) and full.startswith(data)
        assert not decodes(data)
    for row in rows["not_image"]:
        status, ctype, data = get(row["url"])
        assert status == 200 and ctype.startswith("text/html") and b"<html>" in data
        assert not decodes(data)


def test_slow_urls_outlast_a_timeout_and_then_answer(served):
    world, server = served
    row = rows_by_fetch(world, server.base_url)["slow"][0]
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        get(row["url"], timeout=TIMEOUT)
    assert time.monotonic() - started < SLOW_SECONDS
    started = time.monotonic()
    status, _, data = get(row["url"], timeout=SLOW_SECONDS * 4)
    assert status == 200 and decodes(data)
    assert time.monotonic() - started >= SLOW_SECONDS * 0.9


def test_many_concurrent_downloads_all_succeed(served):
    # a downloader opens many connections at once; none of the rows meant to work may fail
    from concurrent.futures import ThreadPoolExecutor

    world, server = served
    urls = [r["url"] for r in rows_by_fetch(world, server.base_url)["ok"]]
    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(lambda u: get(u, timeout=5)[0], urls))
    assert statuses == [200] * len(urls)


def test_key_from_url(served):
    from capfilt.world.layout import key_from_url

    world, server = served
    assert [key_from_url(u) for u in world.urls(server.base_url)["url"].to_pylist()] == \
        world.table("web")["key"].to_pylist()


def test_unknown_paths_and_wrong_extensions_are_404(served):
    world, server = served
    key = "w0000000"
    fmt = world.web_labels[key]["format"]
    other = "png" if fmt == "jpg" else "jpg"
    assert get(f"{server.base_url}/web/{key}.{other}")[0] == 404
    assert get(f"{server.base_url}/web/nope.jpg")[0] == 404
    assert get(f"{server.base_url}/images/web/{key}.{fmt}")[0] == 404  # web images only through /web/
    assert get(f"{server.base_url}/images/../settings.json")[0] == 404


def test_clean_images_and_index(served):
    world, server = served
    status, ctype, data = get(f"{server.base_url}/images/human/h0000000.png")
    assert status == 200 and data == world.image_path("h0000000").read_bytes()
    status, _, data = get(server.base_url + "/")
    assert status == 200 and b"web images: 200" in data


def test_two_servers_on_ephemeral_ports(served):
    world, server = served
    with WorldServer(world.root, port=0) as second:
        assert second.port != server.port
        row = rows_by_fetch(world, second.base_url)["ok"][0]
        assert get(row["url"])[0] == 200
