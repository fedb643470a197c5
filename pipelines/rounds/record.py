"""What the loop records: step markers, input fingerprints, rounds.json and the metrics table.

Plain functions over files, testable without Ray or a model. A step is done when its marker
(`round_<r>/<step>.done.json`) exists; the marker is written last, atomically, so a step stopped
part-way has none and runs again (its job resumes from what it left: Ray Train's checkpoints,
bootstrap's finished shards).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from model.atomic_write import replace_file
from pipelines.bootstrap.schema import OK

ROUNDS_FILE = "rounds.json"
RUN_FILE = "run.json"  # settings and input fingerprints of the first start, for --resume
HEADLINE = ("tr@1", "ir@1", "tr@5", "ir@5", "bleu4", "cider")


def write_json(path: Path, value: Any) -> None:
    """Atomically: a reader (or a resumed run) never sees half a file."""
    replace_file(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: str) -> dict[str, Any]:
    """sha256 of a local file, or over (relative name, sha256) of every file under a folder; a
    remote URL is recorded as given (its bootstrap checks its own plan on resume)."""
    p = Path(path)
    if not p.exists():
        return {"path": path, "sha256": None}
    if p.is_file():
        return {"path": path, "sha256": _file_digest(p), "files": 1}
    outer = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in
                                                                     f.relative_to(p).parts))
    for f in files:
        outer.update(f"{f.relative_to(p).as_posix()}\0{_file_digest(f)}\n".encode())
    return {"path": path, "sha256": outer.hexdigest(), "files": len(files)}


def marker_path(root: Path, r: int, step: str) -> Path:
    return root / f"round_{r}" / f"{step}.done.json"


def read_marker(root: Path, r: int, step: str) -> dict[str, Any] | None:
    path = marker_path(root, r, step)
    return json.loads(path.read_text()) if path.is_file() else None


def round_metrics(steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The numbers of one round, flat, as the report plots them."""
    metrics: dict[str, Any] = {}
    ev = steps.get("eval", {}).get("metrics", {})
    for k, v in ev.get("retrieval", {}).items():
        if k != "k_test":
            metrics[k] = v
    for k in ("bleu4", "cider"):
        if k in ev.get("caption", {}):
            metrics[k] = ev["caption"][k]
    boot = steps.get("bootstrap", {}).get("counts")
    if boot:
        ok = boot["status"].get(OK, 0)
        metrics["bootstrap_ok_images"] = ok
        metrics["bootstrap_kept_web_share"] = boot["kept"]["web"] / ok if ok else None
        metrics["bootstrap_kept_synthetic_share"] = (boot["kept"]["synthetic"] / boot["synthetic_captions"]
                                                     if boot["synthetic_captions"] else None)
    return metrics


def build_rounds(root: Path, rounds: int, steps_of: Iterable[tuple[int, tuple[str, ...]]],
                 run: dict[str, Any]) -> dict[str, Any]:
    """rounds.json from the markers on disk: one entry per round with what each step read and
    made (paths relative to the output folder, checkpoint hashes) and the round's metrics."""
    entries = []
    for r, steps in steps_of:
        done = {s: m["record"] for s in steps if (m := read_marker(root, r, s)) is not None}
        if not done:
            continue
        entries.append({"round": r, "steps": done, "metrics": round_metrics(done),
                        "complete": len(done) == len(steps)})
    return {"rounds": entries, "planned_rounds": rounds, "inputs": run.get("inputs", {}),
            "settings": run.get("settings", {})}


def metrics_table(rounds_file: dict[str, Any], names: Iterable[str] = HEADLINE) -> str:
    """Markdown table: one row per metric, one column per round (round 0: pre-trained on human +
    the web as it is; round r > 0: on human + the web bootstrapped r times)."""
    entries = rounds_file["rounds"]
    head = ["metric", *[f"round {e['round']}" + (" (raw web)" if e["round"] == 0 else " (bootstrapped)")
                        for e in entries]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        values = [e["metrics"].get(name) for e in entries]
        if all(v is None for v in values):
            continue
        cells = [f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v)) for v in values]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)
