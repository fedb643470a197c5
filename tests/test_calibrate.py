"""calibrate(): the smallest ITM threshold whose kept web captions reach a precision target, on
scores whose labels and right answer are known by construction; and `capfilt calibrate`."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from capfilt.calibration import (
    CalibrationError,
    PrecisionUnreachable,
    calibrate,
    precision_recall_curve,
)
from capfilt.cli import main
from pipelines.bootstrap.layout import OutputLayout, shard_files
from pipelines.bootstrap.shard_output import output_table, shard_stats, tar_bytes
from pipelines.bootstrap.storage import Storage

# ------------------------------------------------------------ a bootstrap output folder, by hand

def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def bootstrap_row(key: str, status: str = "ok", web: str | None = "a red circle", itm: float | None = 0.5,
                  synthetic: list[tuple[str, float]] = (), threshold: float = 0.5, image: bytes | None = None,
                  **over: Any) -> dict[str, Any]:
    """One output row as pipelines/bootstrap writes it; kept flags follow the threshold."""
    ok = status == "ok"
    row = {
        "key": key, "url": f"http://example.invalid/{key}.jpg", "status": status,
        "error": None if ok else f"{status} for {key}",
        "web_caption": web, "web_itm": itm if ok else None, "web_itc": (itm - 0.5) if ok and itm is not None else None,
        "web_kept": bool(ok and itm is not None and itm >= threshold),
        "synthetic_captions": [c for c, _ in synthetic] if ok else [],
        "synthetic_itm": [s for _, s in synthetic] if ok else [],
        "synthetic_itc": [s - 0.5 for _, s in synthetic] if ok else [],
        "synthetic_kept": [s >= threshold for _, s in synthetic] if ok else [],
        "width": 48 if ok else None, "height": 32 if ok else None,
        "image": (image if image is not None else jpeg((200, 30, 30))) if ok else None,
    }
    row.update(over)
    return row


def write_bootstrap_dir(root: Path | str, rows: list[dict[str, Any]], threshold: float = 0.5, shards: int = 2,
                        parquet_images: bool = False, commit: bool = True) -> Path | str:
    """DIR as pipelines/bootstrap writes it (rows split over `shards` shards): per shard
    parquet/0000k.parquet (no images unless `parquet_images`), webdataset/0000k.tar (the kept pairs)
    and stats, then its marker in _work/done/ (none when not `commit`); and manifest.json.
    `root` may be an fsspec URL (s3://...)."""
    storage = Storage(str(root))
    layout = OutputLayout(storage)
    storage.put("_work/run.json", b"{}")
    for k in range(shards):
        part = sorted(rows[k::shards], key=lambda r: r["key"])
        files = shard_files(k)
        buf = io.BytesIO()
        pq.write_table(output_table(part, pa.schema([]), parquet_images), buf)
        storage.put(files["parquet"], buf.getvalue())
        tar, samples, images = tar_bytes(part, download_only=False)
        storage.put(files["webdataset"], tar)
        storage.put(files["stats"], json.dumps(shard_stats(k, part, samples, images)).encode())
        if commit:
            layout.write_marker(k, {"shard": k, "files": files})
    storage.put("manifest.json", json.dumps({"settings": {"threshold": threshold}, "output_rows": len(rows)}).encode())
    return root


def write_labels(path: Path, noise: dict[str, str]) -> Path:
    table = pa.table({"key": list(noise), "noise": list(noise.values())})
    if path.suffix == ".csv":
        path.write_text("key,noise\n" + "".join(f"{k},{v}\n" for k, v in noise.items()))
    else:
        pq.write_table(table, path)
    return path


# ------------------------------------------------------------ the library, on known labels

def brute_force(scores: np.ndarray, clean: np.ndarray, target: float) -> tuple[float, float, float] | None:
    """Reference: try every distinct score as a threshold, smallest first."""
    for t in sorted(set(scores.tolist())):
        kept = scores >= t
        precision = clean[kept].mean()
        if precision >= target - 1e-12:
            return t, float(precision), float(clean[kept].sum() / clean.sum())
    return None


def test_separable_distributions():
    rng = np.random.default_rng(0)
    clean_s = rng.uniform(0.6, 1.0, 100)
    noisy_s = rng.uniform(0.0, 0.4, 60)
    scores = np.r_[clean_s, noisy_s]
    clean = np.r_[np.ones(100, bool), np.zeros(60, bool)]
    exact = calibrate(scores, clean, 1.0)
    assert exact.threshold == clean_s.min() and exact.precision == 1.0 and exact.recall == 1.0
    assert exact.kept == 100
    # 100 clean and 11 noisy make 0.9009 >= 0.9; 12 noisy would make 0.8929: the 11th highest noisy score
    loose = calibrate(scores, clean, 0.9)
    assert loose.threshold == np.sort(noisy_s)[::-1][10]
    assert loose.kept == 111 and loose.recall == 1.0 and loose.precision == pytest.approx(100 / 111)


def test_overlapping_tiers_known_by_construction():
    # 0.9: 50 clean; 0.6: 30 clean + 20 noisy; 0.3: 20 clean + 80 noisy
    scores = np.r_[np.full(50, 0.9), np.full(50, 0.6), np.full(100, 0.3)]
    clean = np.r_[np.ones(50, bool), np.ones(30, bool), np.zeros(20, bool), np.ones(20, bool), np.zeros(80, bool)]
    r = calibrate(scores, clean, 0.8)  # exactly 80/100: a decimal target counts as reached
    assert (r.threshold, r.precision, r.recall, r.kept) == (0.6, 0.8, 0.8, 100)
    r = calibrate(scores, clean, 0.81)
    assert (r.threshold, r.precision, r.recall, r.kept) == (0.9, 1.0, 0.5, 50)
    r = calibrate(scores, clean, 0.4)  # every threshold reaches it: the smallest, all kept
    assert (r.threshold, r.precision, r.recall) == (0.3, 0.5, 1.0)
    curve = r.curve
    assert curve.thresholds.tolist() == [0.3, 0.6, 0.9]
    assert curve.precision.tolist() == [0.5, 0.8, 1.0] and curve.recall.tolist() == [1.0, 0.8, 0.5]
    assert curve.at(0.5) == {"threshold": 0.5, "precision": 0.8, "recall": 0.8, "kept": 100}
    assert curve.at(0.95)["kept"] == 0


def test_smallest_threshold_where_precision_is_not_monotone():
    # precision from the top: 1/1, 1/2, 2/3, 3/4, 3/5 -> 0.7 is first reached again at 0.7
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    clean = np.array([True, False, True, True, False])
    r = calibrate(scores, clean, 0.7)
    assert r.threshold == 0.7 and r.precision == 0.75 and r.recall == 1.0
    assert calibrate(scores, clean, 0.76).threshold == 0.95


def test_ties_are_one_cut():
    scores = np.array([0.5, 0.5, 0.5, 0.2])
    clean = np.array([True, False, True, True])
    curve = precision_recall_curve(scores, clean)
    assert curve.thresholds.tolist() == [0.2, 0.5] and curve.kept.tolist() == [4, 3]
    with pytest.raises(PrecisionUnreachable):  # 0.5 cannot keep 2 of the 3 tied captions
        calibrate(scores, clean, 0.8)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_brute_force_on_overlapping_gaussians(seed):
    rng = np.random.default_rng(seed)
    clean = rng.random(400) < 0.6
    scores = np.clip(np.where(clean, rng.normal(0.65, 0.15, 400), rng.normal(0.4, 0.15, 400)), 0, 1).round(2)
    for target in (0.6, 0.75, 0.9, 0.97):
        expected = brute_force(scores, clean, target)
        if expected is None:
            with pytest.raises(PrecisionUnreachable):
                calibrate(scores, clean, target)
            continue
        r = calibrate(scores, clean, target)
        assert (r.threshold, r.precision, r.recall) == pytest.approx(expected)


def test_unreachable_precision_says_the_best():
    scores = np.array([0.9, 0.8, 0.7])
    clean = np.array([False, True, False])
    with pytest.raises(PrecisionUnreachable) as info:
        calibrate(scores, clean, 0.6)
    assert info.value.best_precision == 0.5 and info.value.best_threshold == 0.8
    assert "unreachable" in str(info.value) and "0.5000" in str(info.value)
    with pytest.raises(PrecisionUnreachable):  # nothing clean at all
        calibrate(scores, np.zeros(3, bool), 0.1)


@pytest.mark.parametrize("scores, clean, target, message", [
    ([], [], 0.9, "no scored captions"),
    ([0.1, 0.2], [True], 0.9, "differ in length"),
    ([0.1, 0.2], [1, 0], 0.9, "bool"),
    ([0.1, float("nan")], [True, False], 0.9, "NaN"),
    ([0.1, 0.2], [True, False], 0.0, "(0, 1]"),
    ([0.1, 0.2], [True, False], 1.5, "(0, 1]"),
])
def test_bad_inputs(scores, clean, target, message):
    with pytest.raises(CalibrationError, match=re.escape(message)):
        calibrate(np.asarray(scores, dtype=float), np.asarray(clean), target)


# ------------------------------------------------------------ reading a bootstrap output folder

RED, GREEN, BLUE, GREY = (200, 30, 30), (30, 200, 30), (30, 30, 200), (90, 90, 90)


def reader_rows() -> list[dict[str, Any]]:
    """Keys that WebDataset names must escape, one whose sample name another row's web pair shares
    (`a_web`: row `a`'s web pair is sample `a_web`), one kept only by a synthetic caption, one rejected."""
    return [bootstrap_row("a", itm=0.9, image=jpeg(RED)),
            bootstrap_row("a_web", itm=0.9, image=jpeg(GREEN, (40, 40))),
            bootstrap_row("x.y/z", itm=0.1, image=jpeg(BLUE, (20, 30)), synthetic=[("a blue thing", 0.8)]),
            bootstrap_row("rejected", itm=0.1, image=jpeg(GREY, (10, 10))),
            bootstrap_row("failed", status="download_error")]


def write_leftover(root: Path, shard: int, rows: list[dict[str, Any]]) -> None:
    """A shard's files as a killed run leaves them: written, never committed."""
    storage = Storage(str(root))
    files = shard_files(shard)
    buf = io.BytesIO()
    pq.write_table(output_table(rows, pa.schema([]), True), buf)
    storage.put(files["parquet"], buf.getvalue())
    storage.put(files["webdataset"], tar_bytes(rows, download_only=False)[0])


def test_scores_and_images_come_from_committed_shards_only(tmp_path):
    from capfilt.calibration.inputs import read_images, read_scores

    rows = reader_rows()
    out = write_bootstrap_dir(tmp_path / "boot", rows, shards=1)
    write_leftover(out, 1, [bootstrap_row("leftover", itm=0.9, image=jpeg(RED))])
    assert read_scores(out).column("key").to_pylist() == sorted(r["key"] for r in rows)
    by_key = {r["key"]: r["image"] for r in rows}
    images = read_images(out, [r["key"] for r in rows] + ["leftover", "nowhere"])
    # the rejected row has no pair in the tar, and no image column to fall back on
    assert images == {k: by_key[k] for k in ("a", "a_web", "x.y/z")}
    assert read_images(out, ["a_web"]) == {"a_web": by_key["a_web"]}  # not row a's sample `a_web`
    assert read_images(out, []) == {}


def test_images_fall_back_on_the_parquet_image_column(tmp_path):
    from capfilt.calibration.inputs import read_images

    rows = reader_rows()
    out = write_bootstrap_dir(tmp_path / "boot", rows, parquet_images=True)
    assert read_images(out, ["rejected", "a", "failed"]) == {"rejected": rows[3]["image"], "a": rows[0]["image"]}


def test_a_run_without_a_committed_shard_is_said(tmp_path):
    from capfilt.calibration.inputs import read_scores

    out = write_bootstrap_dir(tmp_path / "boot", reader_rows(), commit=False)
    with pytest.raises(CalibrationError, match="no committed shard yet: no parquet/\\*.parquet"):
        read_scores(out)


def test_scores_and_images_from_object_storage():
    from s3_server import s3_server

    from capfilt.calibration.inputs import read_images, read_manifest, read_scores

    rows = reader_rows()
    with s3_server():
        out = write_bootstrap_dir("s3://capfilt/boot", rows)
        Storage("s3://capfilt/boot").put("_work/done/00007.json", b"{}")  # a marker without files lists nothing
        assert read_scores(out).column("key").to_pylist() == sorted(r["key"] for r in rows)
        assert read_images(out, ["x.y/z", "rejected"]) == {"x.y/z": rows[2]["image"]}
        assert read_manifest(out)["settings"]["threshold"] == 0.5
        with pytest.raises(CalibrationError, match="no such folder"):
            read_scores("s3://capfilt/nowhere")


# ------------------------------------------------------------ `capfilt calibrate`

@pytest.fixture()
def scored(tmp_path):
    """12 ok rows with known scores and labels, 2 failed downloads, 1 unlabelled, 1 without a web caption."""
    rows, noise = [], {}
    for i, (itm, kind) in enumerate([(0.95, "correct"), (0.9, "correct"), (0.85, "junk"), (0.8, "correct"),
                                     (0.7, "correct"), (0.65, "other_image"), (0.6, "correct"),
                                     (0.5, "wrong_attribute"), (0.4, "correct"), (0.3, "empty"),
                                     (0.2, "junk"), (0.1, "other_image")]):
        rows.append(bootstrap_row(f"w{i:03d}", itm=itm))
        noise[f"w{i:03d}"] = kind
    rows += [bootstrap_row("w100", status="download_error"), bootstrap_row("w101", status="decode_error"),
             bootstrap_row("w102", itm=0.99), bootstrap_row("w103", web=None, itm=None)]
    noise.update({"w100": "correct", "w101": "junk", "w103": "correct", "w999": "correct"})
    out = write_bootstrap_dir(tmp_path / "boot", rows)
    return out, write_labels(tmp_path / "labels.parquet", noise)


def test_cli_finds_threshold_and_counts_skips(scored, tmp_path, capsys):
    out, labels = scored
    result = tmp_path / "cal" / "calibration.json"
    code = main(["calibrate", "--scores", str(out), "--labels", str(labels), "--precision", "0.75",
                 "--output", str(result)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    # from the top: 1, 1, 2/3, 3/4 (0.8), 4/5 (0.7), 4/6, 5/7 (0.6), 5/8, 6/9 ... -> smallest reaching 0.75: 0.7
    doc = json.loads(result.read_text())
    assert doc["threshold"] == 0.7 and doc["precision"] == 0.8 and doc["recall"] == pytest.approx(4 / 6)
    assert doc["sample"]["skipped"] == {"status not ok": 2, "no label": 1, "no web score": 1}
    assert doc["sample"]["not_ok_status"] == {"decode_error": 1, "download_error": 1}
    assert doc["sample"]["labels_without_row"] == 1 and doc["sample"]["used"] == 12
    assert len(doc["curve"]["thresholds"]) == 12 and doc["curve"]["thresholds"] == sorted(doc["curve"]["thresholds"])
    assert doc["bootstrap_threshold"] == {"threshold": 0.5, "precision": 0.625, "recall": pytest.approx(5 / 6), "kept": 8}
    assert "0.700000" in printed.out and "download_error 1" in printed.out and "1 no label" in printed.out


def test_cli_reads_csv_labels(scored, tmp_path, capsys):
    out, labels = scored
    table = pq.read_table(labels).to_pylist()
    csv = write_labels(tmp_path / "labels.csv", {r["key"]: r["noise"] for r in table})
    assert main(["calibrate", "--scores", str(out), "--labels", str(csv), "--precision", "1"]) == 0
    assert "0.900000" in capsys.readouterr().out


def test_cli_unreachable_precision(scored, capsys):
    out, labels = scored
    noise = {r["key"]: r["noise"] for r in pq.read_table(labels).to_pylist()}
    write_labels(labels, {**noise, "w000": "junk"})  # the top score now noisy: 0/1, 1/2, 1/3, 2/4, 3/5, ...
    assert main(["calibrate", "--scores", str(out), "--labels", str(labels), "--precision", "0.95"]) == 1
    assert ("precision 0.95 is unreachable: the best any threshold gives is 0.6000 (at threshold 0.7)"
            in capsys.readouterr().err)


@pytest.mark.parametrize("args, message", [
    (["--precision", "1.5"], "precision: '1.5' is not allowed; allowed range (0, 1]"),
    (["--precision", "0"], "allowed range (0, 1]"),
    ([], "precision: required (--precision)"),
])
def test_cli_bad_settings_exit_2(scored, capsys, args, message):
    out, labels = scored
    assert main(["calibrate", "--scores", str(out), "--labels", str(labels), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_labels_and_scores_share_no_keys(scored, tmp_path, capsys):
    out, _ = scored
    other = write_labels(tmp_path / "other.parquet", {"x1": "correct", "x2": "junk"})
    assert main(["calibrate", "--scores", str(out), "--labels", str(other), "--precision", "0.5"]) == 1
    assert "share no keys" in capsys.readouterr().err


def test_cli_no_usable_rows(tmp_path, capsys):
    out = write_bootstrap_dir(tmp_path / "boot", [bootstrap_row("a", status="download_error"),
                                                  bootstrap_row("b", web=None, itm=None)])
    labels = write_labels(tmp_path / "l.parquet", {"a": "correct", "b": "correct"})
    assert main(["calibrate", "--scores", str(out), "--labels", str(labels), "--precision", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "no row is both ok, labelled and scored" in err and "1 status not ok (download_error 1)" in err
    assert "1 no web score" in err


@pytest.mark.parametrize("break_it, message", [
    (lambda out, labels: out / "missing", "no such folder"),
    (lambda out, labels: out.parent, "no parquet/*.parquet"),
])
def test_cli_bad_scores_dir(scored, capsys, break_it, message):
    out, labels = scored
    assert main(["calibrate", "--scores", str(break_it(out, labels)), "--labels", str(labels),
                 "--precision", "0.5"]) == 1
    assert message in capsys.readouterr().err


def test_cli_bad_labels(scored, tmp_path, capsys):
    out, _ = scored
    (tmp_path / "l.csv").write_text("key,colour\nw000,red\n")
    assert main(["calibrate", "--scores", str(out), "--labels", str(tmp_path / "l.csv"), "--precision", "0.5"]) == 1
    assert "'noise' or 'clean' column" in capsys.readouterr().err
    (tmp_path / "d.csv").write_text("key,noise\nw000,correct\nw000,junk\n")
    assert main(["calibrate", "--scores", str(out), "--labels", str(tmp_path / "d.csv"), "--precision", "0.5"]) == 1
    assert "1 repeated" in capsys.readouterr().err


def test_cli_toy_world_folder_as_labels(tmp_path, capsys):
    """The world's own labels file joins bootstrap rows on key; 'correct' is clean."""
    from capfilt.world.make import make_world
    from capfilt.world.settings import WorldMakeSettings
    from capfilt.world.store import World

    world_dir = tmp_path / "world"
    make_world(WorldMakeSettings(out=world_dir, size=20, human_size=0, val_size=0, test_size=0, nlvr2_pairs=0,
                                 clips=0, vqa_per_image=0, broken_share=0.0, web_noise=0.4, workers=1))
    labels = World.load(world_dir).web_labels
    # a filter that sees the truth, blurred: clean captions score high, noisy low, one noisy in between
    rows = [bootstrap_row(k, itm=(0.8 if r["noise"] == "correct" else 0.2) + i * 1e-3) for i, (k, r) in
            enumerate(sorted(labels.items()))]
    out = write_bootstrap_dir(tmp_path / "boot", rows)
    code = main(["calibrate", "--scores", str(out), "--labels", str(world_dir), "--precision", "1",
                 "--output", str(tmp_path / "c.json")])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["recall"] == 1.0 and doc["kept"] == 12 and doc["clean_total"] == 12  # 40 % of 20 noisy
