"""Metrics of a training job: JSON lines appended to OUTPUT/metrics.jsonl and printed.

Append-only: a resumed job writes a {"event": "resume", "step": N} line and goes on from step
N + 1, so steps lost between the last checkpoint and a failure show twice, and finished steps
never do.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, output: Path, echo: bool = True):
        self.path = Path(output) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.echo = echo

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **{k: _clean(v) for k, v in record.items()}}
        line = json.dumps(record, sort_keys=False)
        with self.path.open("a") as fh:
            fh.write(line + "\n")
        if self.echo:
            print(line, flush=True)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else str(value)
    return value


def read_metrics(output: Path) -> list[dict[str, Any]]:
    path = Path(output) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Throughput:
    """Samples per second between two log points."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.samples = 0

    def add(self, n: int) -> None:
        self.samples += n

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        self.start, self.samples = time.perf_counter(), 0
        return rate
