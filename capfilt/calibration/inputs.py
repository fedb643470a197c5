"""Reading a bootstrap output folder's scores and a labels file, and joining them on key.

Scores: the committed shards of a bootstrap output folder (a local path or an fsspec URL such as
s3://bucket/x), as `pipelines/bootstrap` writes them (layout.py): only the files that a marker in
`_work/done/` lists are read, so a killed run's leftovers never count. Scores come from the
Parquet files (one row per input row, no images); an example's image from the shard's WebDataset
tar (any sample of the row holds it), or from the Parquet `image` column where the run wrote one
(--parquet-images).
Labels: a table with `key` and either `noise` (the toy world's web_labels: "correct" is clean,
any other kind is noise) or `clean` (bool); Parquet, CSV or JSON lines, or a toy world folder
(its web_labels.parquet). Every row that cannot take part is counted with its reason.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.json as pajson
import pyarrow.parquet as pq

from capfilt.calibration.curve import CalibrationError
from pipelines.bootstrap.layout import DONE, MANIFEST, PARQUET, WORK, OutputLayout
from pipelines.bootstrap.schema import OK
from pipelines.bootstrap.shard_output import wds_key
from pipelines.bootstrap.storage import Storage

CLEAN_NOISE_KINDS = frozenset({"correct", "clean"})
WORLD_LABELS = "web_labels.parquet"
# What a report or a calibration needs of each row; the image bytes are read apart, for few rows.
SCORE_COLUMNS = ("key", "status", "error", "web_caption", "web_itm", "web_kept",
                 "synthetic_captions", "synthetic_itm", "synthetic_kept")
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
PAIR_SUFFIX = re.compile(r"_(web|syn\d+)$")  # sample `k_web`, `k_syn0` of row `k` (shard_output.py)


def _storage(scores_dir: str | Path) -> Storage:
    storage = Storage(str(scores_dir))
    try:
        found = storage.fs.isdir(storage.root)
    except Exception as exc:  # noqa: BLE001 - s3fs, gcsfs... raise their own types (no credentials, no bucket)
        raise CalibrationError(f"{scores_dir}: cannot read: {exc}") from None
    if not found:
        raise CalibrationError(f"{scores_dir}: no such folder (expected a bootstrap output folder)")
    return storage


def committed_shards(scores_dir: str | Path) -> tuple[Storage, list[dict[str, str]]]:
    """The folder's storage and the files (by kind, root-relative) of each committed shard with a
    Parquet file, in shard order."""
    storage = _storage(scores_dir)
    shards = [m.get("files", {}) for _, m in OutputLayout(storage).markers()]
    shards = [files for files in shards if "parquet" in files]
    if not shards:
        if storage.exists(WORK) or storage.list(PARQUET):
            raise CalibrationError(f"{scores_dir}: no committed shard yet: no parquet/*.parquet files listed by a "
                                   f"marker in {DONE}/ (a run that has not committed a shard, or an output "
                                   f"written before markers)")
        raise CalibrationError(f"{scores_dir}: no parquet/*.parquet files (is it a bootstrap output folder?)")
    return storage, shards


def _arrow_fs(storage: Storage) -> Any:
    return None if storage.local else storage.fs  # pyarrow wraps an fsspec filesystem itself


def read_scores(scores_dir: str | Path, columns: tuple[str, ...] = SCORE_COLUMNS) -> pa.Table:
    """The bootstrap rows of the committed shards (without images), sorted by key."""
    storage, shards = committed_shards(scores_dir)
    dataset = pads.dataset([storage.path(f["parquet"]) for f in shards], format="parquet",
                           filesystem=_arrow_fs(storage))
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise CalibrationError(f"{scores_dir}: parquet files lack column(s) {', '.join(missing)}")
    table = dataset.to_table(columns=list(columns))
    return table.sort_by("key")


def _tar_images(storage: Storage, rel: str, keys: set[str]) -> dict[str, bytes]:
    """key -> image of the rows of `keys` that have a sample in the tar `rel`.

    A sample is matched by name (`wds_key(key)`, alone or with `_web`/`_synN`) and confirmed by
    its .json's "key" when it has one: key `a_web`'s sample and key `a`'s web pair share a name."""
    names = {wds_key(k): k for k in keys}
    found: dict[str, bytes] = {}
    base, image, meta_key = None, None, None

    def flush() -> None:
        if base is None or image is None:
            return
        key = meta_key if meta_key is not None else names.get(base) or names.get(PAIR_SUFFIX.sub("", base))
        if key in keys:
            found.setdefault(key, image)

    try:
        with storage.open(rel, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:  # seekable: only the headers and the wanted members are read
                if not member.isfile():
                    continue
                name_base, _, suffix = posixpath.basename(member.name).partition(".")
                if name_base != base:
                    flush()
                    if len(found) == len(keys):
                        return found
                    base, image, meta_key = name_base, None, None
                if name_base not in names and PAIR_SUFFIX.sub("", name_base) not in names:
                    continue
                if suffix.lower() in IMAGE_SUFFIXES:
                    image = tar.extractfile(member).read()
                elif suffix == "json":
                    try:
                        meta = json.loads(tar.extractfile(member).read())
                    except ValueError:
                        meta = {}
                    meta_key = meta.get("key") if isinstance(meta, dict) else None
            flush()
    except (tarfile.ReadError, FileNotFoundError):  # an unreadable tar: its rows show without an image
        pass
    return found


def read_images(scores_dir: str | Path, keys: list[str]) -> dict[str, bytes]:
    """key -> image bytes for the rows of `keys` whose image the output holds: from the tar of
    the shard that has the row (a row without a kept pair has no sample there), else from the
    Parquet `image` column when the run wrote one. Only the shards that hold a wanted row are opened."""
    wanted = set(keys)
    if not wanted:
        return {}
    storage, shards = committed_shards(scores_dir)
    filesystem = _arrow_fs(storage)
    found: dict[str, bytes] = {}
    for files in shards:
        missing = wanted - found.keys()
        if not missing:
            break
        path = storage.path(files["parquet"])
        here = set(pq.read_table(path, columns=["key"], filters=pads.field("key").isin(sorted(missing)),
                                 filesystem=filesystem).column("key").to_pylist())
        if not here:
            continue
        if "webdataset" in files:
            found.update(_tar_images(storage, files["webdataset"], here))
        rest = here - found.keys()
        if rest and "image" in pq.read_schema(path, filesystem=filesystem).names:
            table = pq.read_table(path, columns=["key", "image"], filters=pads.field("key").isin(sorted(rest)),
                                  filesystem=filesystem)
            found.update({k: v for k, v in zip(table.column("key").to_pylist(), table.column("image").to_pylist())
                          if v})
    return found


def read_manifest(scores_dir: str | Path) -> dict[str, Any]:
    storage = Storage(str(scores_dir))
    return json.loads(storage.get(MANIFEST)) if storage.exists(MANIFEST) else {}


def _read_table(path: Path) -> pa.Table:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pads.dataset(str(path), format="parquet").to_table()
        if suffix in (".csv", ".tsv"):
            parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            # keys like "00012" must stay text
            convert = pacsv.ConvertOptions(column_types={"key": pa.string(), "noise": pa.string()})
            return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
        if suffix in (".jsonl", ".json", ".ndjson"):
            return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CalibrationError(f"{path}: cannot read labels: {exc}".replace("\n", " ")) from None
    raise CalibrationError(f"{path}: labels must be .parquet, .csv, .tsv or .jsonl, or a toy world folder")


@dataclass(frozen=True)
class Labels:
    """key -> (clean, noise kind)."""

    clean: dict[str, bool]
    noise: dict[str, str]

    def __len__(self) -> int:
        return len(self.clean)


def read_labels(path: Path) -> Labels:
    path = Path(path)
    if path.is_dir():
        if not (path / WORLD_LABELS).is_file():
            raise CalibrationError(f"{path}: a folder given as labels must be a toy world (holding {WORLD_LABELS})")
        path = path / WORLD_LABELS
    elif not path.is_file():
        raise CalibrationError(f"{path}: labels file not found")
    table = _read_table(path)
    names = table.column_names
    if "key" not in names or not ({"noise", "clean"} & set(names)):
        raise CalibrationError(f"{path}: labels need a 'key' column and a 'noise' or 'clean' column; "
                               f"it has {', '.join(names) or 'none'}")
    keys = [None if k is None else str(k) for k in table.column("key").to_pylist()]
    if "clean" in names:
        clean_values = table.column("clean").to_pylist()
        if not all(isinstance(v, bool) for v in clean_values):
            raise CalibrationError(f"{path}: the 'clean' column must hold true/false in every row")
        noise_values = (table.column("noise").to_pylist() if "noise" in names
                        else ["clean" if v else "noisy" for v in clean_values])
    else:
        noise_values = table.column("noise").to_pylist()
        if any(v is None for v in noise_values):
            raise CalibrationError(f"{path}: {sum(v is None for v in noise_values)} labels have no noise kind")
        clean_values = [v in CLEAN_NOISE_KINDS for v in noise_values]
    duplicates = [k for k, n in Counter(keys).items() if n > 1]
    if None in keys or duplicates:
        raise CalibrationError(f"{path}: every label needs one unique key "
                               f"({keys.count(None)} empty, {len(duplicates)} repeated, e.g. {duplicates[:3]})")
    return Labels(clean=dict(zip(keys, clean_values)), noise=dict(zip(keys, map(str, noise_values))))


@dataclass(frozen=True)
class LabelledScores:
    """Web caption scores joined to labels, and what was left out and why."""

    keys: list[str]
    scores: np.ndarray  # (N,) web ITM probability
    clean: np.ndarray  # (N,) bool
    noise: list[str]  # (N,) noise kind
    rows: int  # bootstrap rows read
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    not_ok: dict[str, int] = field(default_factory=dict)  # status -> rows
    labels_without_row: int = 0

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "used": len(self.keys), "clean": int(self.clean.sum()),
                "noisy": int((~self.clean).sum()), "skipped": self.skipped, "not_ok_status": self.not_ok,
                "labels_without_row": self.labels_without_row}


SKIP_NOT_OK = "status not ok"
SKIP_NO_LABEL = "no label"
SKIP_NO_SCORE = "no web score"


def join_labels(table: pa.Table, labels: Labels) -> LabelledScores:
    """The rows of `table` (bootstrap rows) that are ok, labelled and scored, with skip counts."""
    keys = table.column("key").to_pylist()
    if not set(keys) & set(labels.clean):
        raise CalibrationError(f"labels and scores share no keys: {len(keys)} scored rows (e.g. {keys[:2]}), "
                               f"{len(labels)} labels (e.g. {list(labels.clean)[:2]})")
    skipped: Counter[str] = Counter({SKIP_NOT_OK: 0, SKIP_NO_LABEL: 0, SKIP_NO_SCORE: 0})
    not_ok: Counter[str] = Counter()
    used_keys, scores, clean, noise = [], [], [], []
    for key, status, itm in zip(keys, table.column("status").to_pylist(), table.column("web_itm").to_pylist()):
        if status != OK:
            skipped[SKIP_NOT_OK] += 1
            not_ok[str(status)] += 1
        elif key not in labels.clean:
            skipped[SKIP_NO_LABEL] += 1
        elif itm is None or itm != itm:  # an ok row without a web caption has nothing scored
            skipped[SKIP_NO_SCORE] += 1
        else:
            used_keys.append(key)
            scores.append(itm)
            clean.append(labels.clean[key])
            noise.append(labels.noise[key])
    return LabelledScores(keys=used_keys, scores=np.asarray(scores, dtype=np.float64),
                          clean=np.asarray(clean, dtype=bool), noise=noise, rows=len(keys),
                          skipped=dict(skipped), not_ok=dict(sorted(not_ok.items())),
                          labels_without_row=len(set(labels.clean) - set(keys)))
