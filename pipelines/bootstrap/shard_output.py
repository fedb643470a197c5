"""One whole shard's rows -> its Parquet table, its WebDataset tar and its stats (pure functions).

The tar is what OpenCLIP (or any WebDataset reader) trains on as it is:
  - bootstrap: one sample per *kept pair*. Row `k` whose web caption and first synthetic caption
    were kept gives samples `k_web` and `k_syn0`: each `.jpg` (the image), `.txt` (that one
    caption) and `.json` (the row: web caption, synthetic captions, their ITM/ITC scores and kept
    flags, size, carried columns, and which caption this sample is). An image with two kept
    captions is stored twice, once per pair, as a pair is a training sample;
  - --download-only: one sample per downloaded image, `k.jpg`, `k.txt` (the web caption), `k.json`:
    img2dataset's layout, which a later bootstrap reads as its input.
Sample keys are WebDataset-safe: a row key's characters other than [A-Za-z0-9_-] are written as
%XX (the key `a.b/c` becomes `a%2Eb%2Fc`), one to one, so no two rows share a sample key and the
first '.' of a member name is the one before its extension.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from typing import Any

import pyarrow as pa

from pipelines.bootstrap.schema import OK, OUTPUT_SCHEMA, STATUSES

IMAGE_FIELD = pa.field("image", pa.binary())
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def wds_key(key: str) -> str:
    """The row key as a WebDataset sample key (see the module's docstring)."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), key)


def extra_columns(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["_extra"]) if row.get("_extra") else {}


def kept_pairs(row: dict[str, Any]) -> list[tuple[str, str, int | None, float | None]]:
    """(sample suffix, caption, synthetic index, ITM) of every kept caption of an ok row."""
    if row["status"] != OK:
        return []
    pairs: list[tuple[str, str, int | None, float | None]] = []
    if row.get("web_kept") and row.get("web_caption") is not None:
        pairs.append(("_web", row["web_caption"], None, row.get("web_itm")))
    flags = row.get("synthetic_kept") or []
    scores = row.get("synthetic_itm") or []
    for j, caption in enumerate(row.get("synthetic_captions") or []):
        if j < len(flags) and flags[j]:
            pairs.append((f"_syn{j}", caption, j, scores[j] if j < len(scores) else None))
    return pairs


def sample_meta(row: dict[str, Any]) -> dict[str, Any]:
    meta = {k: row.get(k) for k in OUTPUT_SCHEMA.names}
    meta.update(extra_columns(row))
    return meta


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: the same bytes every run
    tar.addfile(info, io.BytesIO(data))


def tar_bytes(rows: list[dict[str, Any]], download_only: bool) -> tuple[bytes, int, int]:
    """(the shard's tar, samples in it, images in it); rows sorted by key."""
    buf = io.BytesIO()
    samples = images = 0
    # PAX: member names longer than USTAR's 100 characters (long keys) stay whole.
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for row in rows:
            if row["status"] != OK or row.get("image") is None:
                continue
            base = wds_key(row["key"])
            meta = sample_meta(row)
            if download_only:
                entries = [(base, row.get("web_caption") or "", {"caption_source": "web"})]
            else:
                entries = [(base + suffix, caption,
                            {"caption_source": "web" if index is None else "synthetic", "synthetic_index": index,
                             "itm": itm})
                           for suffix, caption, index, itm in kept_pairs(row)]
            for name, caption, which in entries:
                _add(tar, f"{name}.jpg", row["image"])
                _add(tar, f"{name}.json", json.dumps({**meta, **which}, sort_keys=True, default=str).encode())
                _add(tar, f"{name}.txt", caption.encode("utf-8"))
                samples += 1
            images += bool(entries)
    return buf.getvalue(), samples, images


def output_table(rows: list[dict[str, Any]], extra_schema: pa.Schema, parquet_images: bool) -> pa.Table:
    """The Parquet side: one row per input row, the carried columns after the contract's."""
    fields = list(OUTPUT_SCHEMA) + ([IMAGE_FIELD] if parquet_images else [])
    columns = {f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in fields}
    extras = [extra_columns(r) for r in rows]
    for f in extra_schema:
        if f.name in columns:
            continue  # a carried column may not shadow a column of the contract
        values = [e.get(f.name) for e in extras]
        try:
            columns[f.name] = pa.array(values, type=f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[f.name] = pa.array([None if v is None else json.dumps(v, default=str) if not isinstance(v, str)
                                        else v for v in values], type=pa.string())
    return pa.table(columns)


def shard_stats(shard: int, rows: list[dict[str, Any]], samples: int, images: int) -> dict[str, Any]:
    """img2dataset's `_stats.json` fields, and CapFilt's counts."""
    statuses = Counter(r["status"] for r in rows)
    errors = Counter(r["error"] for r in rows if r.get("error"))
    seconds = {stage: float(sum(r.get(f"_seconds_{stage}") or 0.0 for r in rows))
               for stage in ("download", "caption", "filter")}
    return {
        "shard": shard,
        "count": len(rows),
        "rows": len(rows),
        "successes": statuses.get(OK, 0),
        "status": {s: statuses.get(s, 0) for s in STATUSES if statuses.get(s)},
        "status_dict": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "kept_web": sum(1 for r in rows if r["status"] == OK and r.get("web_kept")),
        "kept_synthetic": sum(sum(bool(k) for k in (r.get("synthetic_kept") or [])) for r in rows),
        "synthetic_captions": sum(len(r.get("synthetic_captions") or []) for r in rows),
        "samples_in_webdataset": samples,
        "images_in_webdataset": images,
        "stage_rows": {
            "download": sum(1 for r in rows if r.get("_seconds_download")),
            "caption": sum(1 for r in rows if r.get("_seconds_caption")),
            "filter": sum(1 for r in rows if r.get("_seconds_filter")),
        },
        "stage_seconds": seconds,
    }
