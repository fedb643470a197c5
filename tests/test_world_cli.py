"""`capfilt world make | serve | urls` from the command line; bad values exit 2 with one line."""

import subprocess
import sys
import urllib.request

import pyarrow.parquet as pq
import pytest

from capfilt.cli import main
from capfilt.world import World

TINY = ["--size", "20", "--human-size", "2", "--val-size", "1", "--test-size", "1", "--nlvr2-pairs", "2",
        "--clips", "1", "--workers", "1"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "w"
    assert main(["world", "make", str(out), *TINY, "--seed", "9", "--web-noise", "0.25", "--no-relations"]) == 0
    return out


def test_make_from_flags(made):
    world = World.load(made)
    assert world.settings.seed == 9 and world.settings.web_noise == 0.25 and world.settings.relations is False
    assert world.manifest["web_noise"]["correct"] == 15


def test_make_from_yaml_flags_win(tmp_path):
    cfg = tmp_path / "world.yaml"
    cfg.write_text("size: 10\nhuman-size: 1\nval_size: 1\ntest_size: 1\nnlvr2_pairs: 0\nclips: 0\n"
                   "image_size: 32\nseed: 2\n")
    assert main(["world", "make", str(tmp_path / "w"), "--config", str(cfg), "--seed", "5"]) == 0
    world = World.load(tmp_path / "w")
    assert world.settings.image_size == 32 and world.settings.seed == 5 and world.settings.size == 10


@pytest.mark.parametrize("args, key", [
    (["--web-noise", "1.5"], "web_noise"),
    (["--web-noise", "-0.1"], "web_noise"),
    (["--size", "0"], "size"),
    (["--size", "many"], "size"),
    (["--image-size", "8"], "image_size"),
    (["--max-objects", "4"], "max_objects"),
    (["--single-object-share", "2"], "single_object_share"),
    (["--broken-share", "0.9"], "broken_share"),
    (["--broken-kinds", "teapot"], "broken_kinds"),
    (["--base-url", "ftp://x"], "base_url"),
    (["--noise-other-image", "0", "--noise-wrong-attribute", "0", "--noise-junk", "0", "--noise-empty", "0"],
     "noise_empty"),
])
def test_bad_make_values_exit_2_with_one_line_naming_the_key(tmp_path, capsys, args, key):
    out = tmp_path / "w"
    assert main(["world", "make", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert key in err
    assert not out.exists(), "no work may start on bad settings"


def test_bad_yaml_key_exits_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("web_nosie: 0.3\n")
    assert main(["world", "make", str(tmp_path / "w"), "--config", str(cfg)]) == 2
    assert "unknown setting 'web_nosie'" in capsys.readouterr().err


@pytest.mark.parametrize("args, key", [
    (["world", "serve", "/nonexistent/world"], "out"),
    (["world", "serve", "{made}", "--port", "70000"], "port"),
    (["world", "serve", "{made}", "--slow-seconds", "-1"], "slow_seconds"),
    (["world", "urls", "{made}", "--base-url", "nope", "--output", "u.txt"], "base_url"),
    (["world", "urls", "{made}", "--output", "u.txt"], "base_url"),
])
def test_bad_serve_and_urls_values_exit_2(made, capsys, args, key):
    assert main([a.format(made=made) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err


def test_make_refuses_a_world_that_exists(made, capsys):
    assert main(["world", "make", str(made), *TINY]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_urls_command(made, tmp_path):
    out = tmp_path / "urls.parquet"
    assert main(["world", "urls", str(made), "--base-url", "http://127.0.0.1:9999", "--output", str(out)]) == 0
    table = pq.read_table(out)
    assert table.column_names == ["key", "url", "caption"]
    assert all(u.startswith("http://127.0.0.1:9999/web/") for u in table["url"].to_pylist())


def test_serve_command_serves_until_stopped(made):
    proc = subprocess.Popen([sys.executable, "-m", "capfilt", "world", "serve", str(made), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("capfilt toy world at http://127.0.0.1:"), first + proc.stderr.read()
        base = first.split(" at ")[1].strip()
        world = World.load(made)
        key = next(k for k, v in world.web_labels.items() if v["fetch"] == "ok")
        url = world.urls(base).to_pydict()["url"][int(key[1:])]
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read() == world.image_path(key).read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_world_in_help():
    assert main(["--help"]) == 0
    assert main(["world", "make", "--help"]) == 0
