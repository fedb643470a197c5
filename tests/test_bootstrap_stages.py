"""Bootstrap stages without Ray: reader, download, writer on hand-made inputs and a loopback server."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipelines.bootstrap.download_stage import DownloadStage
from pipelines.bootstrap.input_reader import InputError, plan_shards, read_shard
from pipelines.bootstrap.schema import OUTPUT_SCHEMA, PENDING, WORK_SCHEMA
from pipelines.bootstrap.settings import BootstrapSettings
from pipelines.bootstrap.shard_writer import OutputLayout, ShardWriter


def jpeg(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


GOOD = jpeg()
ROUTES = {
    "/good.jpg": (200, {"Content-Type": "image/jpeg"}, GOOD),
    "/truncated.jpg": (200, {"Content-Type": "image/jpeg"}, GOOD[: len(GOOD) // 2]),
    "/page.html": (200, {"Content-Type": "text/html"}, b"<html><body>not an image</body></html>"),
    "/big.jpg": (200, {"Content-Type": "image/jpeg"}, GOOD + b"\0" * 30_000),
    "/noai.jpg": (200, {"Content-Type": "image/jpeg", "X-Robots-Tag": "noai"}, GOOD),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/slow.jpg":
            time.sleep(3)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/good.jpg")
            self.end_headers()
            return
        code, headers, body = ROUTES.get(self.path, (404, {}, b"missing"))
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def settings(tmp_path: Path, **kw) -> BootstrapSettings:
    base = dict(input=str(tmp_path / "in.csv"), output=tmp_path / "out", captioner=tmp_path, filter=tmp_path,
                allow_private_hosts=True, timeout=1.0, max_image_bytes=20_000)
    base.update(kw)
    return BootstrapSettings(**base)


def work_batch(urls: list[str]) -> dict[str, np.ndarray]:
    n = len(urls)
    rows = {"key": [f"{i:03d}" for i in range(n)], "url": urls, "web_caption": ["a cap"] * n, "shard": [0] * n,
            "status": [PENDING] * n, "error": [None] * n, "image": [None] * n}
    return {k: np.array(v, dtype=object) for k, v in rows.items()}


def test_download_statuses(server, tmp_path):
    names = ["good.jpg", "missing.jpg", "truncated.jpg", "page.html", "big.jpg", "slow.jpg", "noai.jpg", "redirect"]
    out = DownloadStage(settings(tmp_path))(work_batch([f"{server}/{n}" for n in names])).to_pydict()
    got = dict(zip(names, out["status"]))
    assert got == {"good.jpg": "ok", "missing.jpg": "download_error", "truncated.jpg": "decode_error",
                   "page.html": "decode_error", "big.jpg": "too_large", "slow.jpg": "download_error",
                   "noai.jpg": "download_error", "redirect": "ok"}
    assert "X-Robots-Tag" in out["error"][6] and "404" in out["error"][1]
    assert out["image"][0][:2] == b"\xff\xd8" and out["width"][0] == 256 and out["height"][0] == 256
    assert out["image"][1] is None and out["width"][1] is None


def test_loopback_is_blocked_unless_allowed(server, tmp_path):
    out = DownloadStage(settings(tmp_path, allow_private_hosts=False))(work_batch([f"{server}/good.jpg"])).to_pydict()
    assert out["status"][0] == "blocked_url" and "127.0.0.1" in out["error"][0]


def test_opt_out_and_resize_knobs(server, tmp_path):
    stage = DownloadStage(settings(tmp_path, disallowed_header_directives=[], resize_mode="keep_ratio", image_size=60))
    out = stage(work_batch([f"{server}/noai.jpg"])).to_pydict()
    assert out["status"][0] == "ok" and (out["width"][0], out["height"][0]) == (80, 60)
    out = DownloadStage(settings(tmp_path, resize_mode="no"))(work_batch([f"{server}/good.jpg"])).to_pydict()
    assert (out["width"][0], out["height"][0]) == (40, 30)


def test_image_already_present_skips_fetch(tmp_path):
    batch = work_batch(["http://nowhere.invalid/x.jpg"])
    batch["image"][0] = GOOD
    out = DownloadStage(settings(tmp_path, allow_private_hosts=False))(batch).to_pydict()
    assert out["status"][0] == "ok"


def write_inputs(tmp_path: Path) -> None:
    rows = {"url": ["http://a/1.jpg", "http://a/2.jpg", None, "ftp://a/4.jpg", "http://a/5.jpg"],
            "caption": ["one", "two", "three", "four", None], "id": ["k1", "k2", "k2", None, "k5"]}
    pq.write_table(pa.table(rows), tmp_path / "in.parquet")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(dict(zip(rows, v))) + "\n" for v in zip(*rows.values())))
    (tmp_path / "in.tsv").write_text("url\tcaption\n" + "".join(f"{u or ''}\t{c or ''}\n" for u, c in
                                                                 zip(rows["url"], rows["caption"])))


@pytest.mark.parametrize("name", ["in.parquet", "in.jsonl", "in.tsv"])
def test_reader_accounts_for_every_row(tmp_path, name):
    write_inputs(tmp_path)
    s = settings(tmp_path, input=str(tmp_path / name), shard_size=2)
    shards = plan_shards(s)
    assert [(sh.start, sh.stop) for sh in shards] == [(0, 2), (2, 4), (4, 5)]
    table = pa.concat_tables([read_shard(sh, s) for sh in shards])
    assert table.schema == WORK_SCHEMA
    assert table.column("key").to_pylist() == [f"{i:010d}" for i in range(5)]
    assert table.column("status").to_pylist() == ["pending", "pending", "bad_row", "bad_row", "pending"]


def test_key_column_repeats_become_bad_rows_with_unique_keys(tmp_path):
    write_inputs(tmp_path)
    s = settings(tmp_path, input=str(tmp_path / "in.parquet"), key_col="id")
    table = pa.concat_tables([read_shard(sh, s) for sh in plan_shards(s)])
    keys = table.column("key").to_pylist()
    assert keys[:2] == ["k1", "k2"] and len(set(keys)) == 5
    assert table.column("error").to_pylist()[2] == "key missing or repeated"


def test_folder_and_glob_inputs_and_missing_column(tmp_path):
    write_inputs(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "in.parquet").rename(tmp_path / "sub" / "a.parquet")
    assert sum(sh.stop - sh.start for sh in plan_shards(settings(tmp_path, input=str(tmp_path / "sub")))) == 5
    assert len(plan_shards(settings(tmp_path, input=str(tmp_path / "*.jsonl")))) == 1
    with pytest.raises(InputError, match="no column 'link'"):
        plan_shards(settings(tmp_path, input=str(tmp_path / "in.jsonl"), url_col="link"))


def finished_rows(keys: list[str], shard: int, kept: bool) -> pa.Table:
    n = len(keys)
    return pa.table({
        "key": keys, "url": ["http://x"] * n, "status": ["ok"] * n, "error": [None] * n,
        "web_caption": ["web"] * n, "web_itm": [0.7] * n, "web_itc": [0.1] * n, "web_kept": [kept] * n,
        "synthetic_captions": [["syn a", "syn b"]] * n, "synthetic_itm": [[0.9, 0.2]] * n,
        "synthetic_itc": [[0.3, 0.1]] * n, "synthetic_kept": [[kept, False]] * n, "width": [8] * n,
        "height": [8] * n, "image": [jpeg((8, 8))] * n, "shard": [shard] * n, "_seconds_download": [0.01] * n,
    })


def test_writer_commits_whole_shards_readable_by_webdataset(tmp_path):
    layout = OutputLayout(tmp_path / "out")
    writer = ShardWriter(layout, {0: 3, 1: 1})
    writer.add(finished_rows(["b", "a"], 0, kept=True))
    assert not (layout.parquet / "00000.parquet").exists(), "half a shard must never be visible"
    writer.add(pa.concat_tables([finished_rows(["c"], 0, kept=True), finished_rows(["d"], 1, kept=False)]))
    assert writer.missing() == {}
    table = pq.read_table(layout.parquet / "00000.parquet")
    assert table.schema == OUTPUT_SCHEMA and table.column("key").to_pylist() == ["a", "b", "c"]
    samples = list(wds.WebDataset(str(layout.webdataset / "00000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["a", "b", "c"]
    assert samples[0]["txt"].decode() == "web\nsyn a"
    assert json.loads(samples[0]["json"])["kept_captions"] == ["web", "syn a"]
    assert not (layout.webdataset / "00001.tar").exists(), "a shard with no kept image writes no tar"
    assert set(layout.done_shards()) == {0, 1} and layout.done_shards()[0]["kept_synthetic"] == 3


def test_clear_uncommitted_removes_leftovers_of_a_killed_run(tmp_path):
    layout = OutputLayout(tmp_path / "out")
    ShardWriter(layout, {0: 1}).add(finished_rows(["a"], 0, kept=True))
    (layout.parquet / ".00001.parquet.tmp").write_bytes(b"half")
    (layout.parquet / "00002.parquet").write_bytes(b"no marker")
    layout.clear_uncommitted()
    assert sorted(p.name for p in layout.parquet.iterdir()) == ["00000.parquet"]


def test_keep_decisions():
    from pipelines.bootstrap.filter_stage import keep_decisions

    assert keep_decisions([0.2, 0.8, 0.9], 0.5, "all") == [False, True, True]
    assert keep_decisions([0.2, 0.8, 0.9], 0.5, "best") == [False, False, True]
    assert keep_decisions([0.2, 0.3], 0.5, "best") == [False, False]
    assert keep_decisions([0.2, 0.3], 1.0, "all") == [False, False]
