"""The row contract between stages and of the output Parquet, and the status vocabulary."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

# Statuses a row can leave with. "pending" only lives between the reader and the download stage.
OK = "ok"
DOWNLOAD_ERROR = "download_error"
DECODE_ERROR = "decode_error"
TOO_LARGE = "too_large"
BLOCKED_URL = "blocked_url"
BAD_ROW = "bad_row"
STAGE_ERROR = "stage_error"  # a stage raised on the row's batch (after its retries); the job went on
PENDING = "pending"
STATUSES = (OK, DOWNLOAD_ERROR, DECODE_ERROR, TOO_LARGE, BLOCKED_URL, BAD_ROW, STAGE_ERROR)

# What the reader hands the download stage. `image` is set when the input already holds the
# image (img2dataset output), and the download is then skipped.
WORK_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("url", pa.string()),
    ("web_caption", pa.string()),
    ("shard", pa.int64()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("image", pa.binary()),
    # --save-additional-columns: the row's carried input columns as one JSON object, so that
    # columns of any name and type cross the stages without Ray Data inferring their type per batch
    ("_extra", pa.string()),
])

# The output contract (one Parquet row per input row), before the carried columns; the image
# bytes are in the tars, and in the Parquet files too with --parquet-images (shard_output.py).
OUTPUT_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("url", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("web_caption", pa.string()),
    ("web_itm", pa.float64()),
    ("web_itc", pa.float64()),
    ("web_kept", pa.bool_()),
    ("synthetic_captions", pa.list_(pa.string())),
    ("synthetic_itm", pa.list_(pa.float64())),
    ("synthetic_itc", pa.list_(pa.float64())),
    ("synthetic_kept", pa.list_(pa.bool_())),
    ("width", pa.int32()),
    ("height", pa.int32()),
])


# Every column a row carries between stages. Stages return Arrow tables in this schema rather than
# numpy dicts: Ray Data infers a type from numpy values, and turns a column that happens to be all
# None in one batch (no image downloaded) into float NaN, which the next batch cannot join.
STAGE_SCHEMA = pa.schema(
    list(WORK_SCHEMA)
    + [f for f in OUTPUT_SCHEMA if f.name not in WORK_SCHEMA.names]
    + [pa.field(f"_seconds_{stage}", pa.float64()) for stage in ("download", "caption", "filter")]
    # The image as fetched (or as the input held it), for the model stages to prepare at their own
    # size (BootstrapSettings.model_image); the filter stage drops it, it is never written.
    + [pa.field("_source_image", pa.binary())]
)


def _clean(value: Any) -> Any:
    """A value from a Ray numpy batch back to plain Python: NaN -> None (Ray reads a null int as
    NaN), numpy scalars and arrays -> Python scalars and lists."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def as_table(columns: dict[str, Any]) -> pa.Table:
    """The stage's output columns (those of STAGE_SCHEMA present) as a typed Arrow table."""
    fields = [f for f in STAGE_SCHEMA if f.name in columns]
    arrays = []
    for f in fields:
        values = [_clean(v) for v in columns[f.name]]
        if pa.types.is_integer(f.type):
            values = [None if v is None else int(v) for v in values]
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def object_column(values: list[Any]) -> np.ndarray:
    """A 1-D object array holding `values` as they are (lists stay lists, None stays None).

    np.array() would turn equal-length lists into a 2-D array, which Ray Data then stores as a
    tensor column instead of a list column."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def batch_len(batch: dict[str, np.ndarray]) -> int:
    return len(next(iter(batch.values()))) if batch else 0
