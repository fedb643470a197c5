"""Does the bootstrap job scale? Driver memory, input bytes read and rows/s at 1k, 10k and 100k rows.

Each run is the job as a user runs it: `python -m pipelines.bootstrap --config job.yaml` in a
subprocess that starts its own local Ray. Only that driver process is watched: its peak RSS
(VmHWM in /proc/<pid>/status, the kernel's own peak, so polling cannot miss it; Ray's other
processes are not counted), its CPU seconds, when Ray started and when planning was done (the
"shards planned" line), the rows/s after that, and the manifest's counts. Goals (issue 13):
driver RSS grows < 10 % from 10k to 100k rows; input bytes read <= 1.1x the input's size;
rows/s at 100k within 20 % of 10k's.

One loopback server, in a process of its own (its CPU is not the driver's), plays the web:
/img/<i>/<hash>.jpg answers with one of a few small pre-made JPEGs, so N distinct URLs cost
nothing to make; /data/<file> serves the input with HEAD and Range, as object storage does, and
counts every body byte it sends. That count is the input bytes read, exactly, whatever fsspec's
http:// filesystem asks for (a request the client abandons counts what was sent before it did).

    python benchmarks/bootstrap_scale.py            # 1k/10k/100k rows, download-only, tiny model, CSV
    python benchmarks/bootstrap_scale.py --quick    # a smoke run of a few minutes
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import multiprocessing as mp
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MARKS = {"ray_started": re.compile(r"Started a local Ray instance"),
         "planned": re.compile(r"bootstrap: \d+ shards planned")}
PROGRESS = re.compile(r"bootstrap: rows (\d+)/(\d+)")
CHUNK = 1 << 16


# -- the loopback web, in its own process ---------------------------------------------------


class _Web(ThreadingHTTPServer):
    request_queue_size = 4096  # a burst of download threads must not meet refused connections
    daemon_threads = True

    def __init__(self, data_dir: Path, jpegs: list[bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.data_dir, self.jpegs, self.lock = data_dir, jpegs, threading.Lock()
        self.counts = {"data_bytes": 0, "data_get": 0, "data_head": 0, "images": 0}

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n


class _Handler(BaseHTTPRequestHandler):
    server: _Web

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _headers(self, code: int, kind: str, length: int, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in {"Content-Type": kind, "Content-Length": str(length), **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()

    def _answer(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        body, kind = None, "application/json"
        if path.startswith("/img/"):
            self.server.count("images")
            index = int(re.match(r"/img/(\d*)", path)[1] or 0)
            body, kind = self.server.jpegs[index % len(self.server.jpegs)], "image/jpeg"
        elif path == "/_count":
            with self.server.lock:
                body = json.dumps(self.server.counts).encode()
        elif path.startswith("/data/") and (self.server.data_dir / path[6:]).is_file() and "/" not in path[6:]:
            return self._send_range(self.server.data_dir / path[6:], head)
        if body is None:
            body, kind = b"not found", "text/plain"
        self._headers(200 if kind != "text/plain" else 404, kind, len(body))
        if not head:
            self.wfile.write(body)

    def _send_range(self, file: Path, head: bool) -> None:
        self.server.count("data_head" if head else "data_get")
        size = file.stat().st_size
        start, stop, extra = 0, size, {"Accept-Ranges": "bytes"}
        found = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if found and (found[1] or found[2]):
            if found[1]:
                start, stop = int(found[1]), min(size, int(found[2]) + 1 if found[2] else size)
            else:  # bytes=-n: the last n bytes
                start = max(0, size - int(found[2]))
            extra["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        self._headers(206 if "Content-Range" in extra else 200, "application/octet-stream", stop - start, extra)
        if head:
            return
        with open(file, "rb") as f:
            f.seek(start)
            try:
                while start < stop:
                    chunk = f.read(min(CHUNK, stop - start))
                    self.wfile.write(chunk)
                    self.server.count("data_bytes", len(chunk))  # counted once the socket took it
                    start += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: what was sent counts


def _serve(data_dir: str, conn) -> None:
    import numpy as np
    from PIL import Image

    rng, jpegs = np.random.default_rng(0), []
    for _ in range(8):  # noisy 128 px JPEGs (~10 kB): decoding and resizing one costs what a thumbnail does
        buf = io.BytesIO()
        Image.fromarray(rng.normal(rng.uniform(40, 215, 3), 30, (128, 128, 3)).clip(0, 255).astype(np.uint8)).save(
            buf, "JPEG", quality=85)
        jpegs.append(buf.getvalue())
    server = _Web(Path(data_dir), jpegs)
    conn.send(server.server_address[1])
    server.serve_forever()


def fetch_counts(base: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base}/_count", timeout=30) as r:
        return json.loads(r.read())


# -- the input -------------------------------------------------------------------------------


def write_input(data_dir: Path, base: str, rows: int, row_group: int, fmt: str) -> Path:
    """url, caption, key. Web-like: a URL with a hash in it (~60 characters, as incompressible as a
    real one) and an alt-text of 4-12 words; a template URL and caption would compress to a few
    bytes a row and make the key column most of the file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(rows)
    words = np.array(["a", "the", "red", "green", "blue", "small", "large", "photo", "of", "on", "in", "with", "dog",
                      "cat", "car", "house", "tree", "sky", "sea", "city", "man", "woman", "street", "food", "old",
                      "new", "white", "black", "beautiful", "view", "night"])
    table = pa.table({
        "url": [f"{base}/img/{i}/{h:016x}.jpg" for i, h in enumerate(rng.integers(0, 2**63, rows))],
        "caption": [" ".join(rng.choice(words, n)) for n in rng.integers(4, 13, rows)],
        "key": [f"{i:09d}" for i in range(rows)],
    })
    path = data_dir / f"input_{rows}.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=row_group)
    else:
        pacsv.write_csv(table, path)
    return path


def column_bytes(path: Path) -> dict[str, int] | None:
    """Compressed bytes per column of a Parquet input: what a second read of one column costs."""
    import pyarrow.parquet as pq

    if path.suffix != ".parquet":
        return None
    meta, out = pq.ParquetFile(path).metadata, {}
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            out[chunk.path_in_schema] = out.get(chunk.path_in_schema, 0) + chunk.total_compressed_size
    return out


# -- one run of the job ----------------------------------------------------------------------


def _sample(pid: int) -> tuple[int, int, float] | None:
    """(VmHWM kB, VmRSS kB, user + system CPU seconds) of that one process; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kb = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.MULTILINE))
        return int(kb["VmHWM"]), int(kb["VmRSS"]), (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, KeyError, IndexError):  # exited (a zombie has no Vm* lines)
        return None


def run_job(name: str, config: dict, work: Path, base: str, server_pid: int) -> dict:
    """The job once, in a subprocess: its driver's memory and CPU, times, input bytes, counts."""
    run_dir = work / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.yaml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own, always
    env.update(PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    before, server_before = fetch_counts(base), _sample(server_pid)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.bootstrap", "--config", str(run_dir / "job.yaml")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []

    def read_log() -> None:
        with open(run_dir / "driver.log", "w") as log:
            for line in proc.stdout:  # type: ignore[union-attr]
                lines.append((time.monotonic() - start, line.rstrip()))
                log.write(line)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    peak, cpu, rss, loads = 0, 0.0, [], []  # rss: (seconds, kB) once a second
    while proc.poll() is None:
        if sample := _sample(proc.pid):
            peak, cpu = max(peak, sample[0]), sample[2]
            if not rss or time.monotonic() - start - rss[-1][0] >= 1.0:
                rss.append((round(time.monotonic() - start, 1), sample[1]))
                loads.append(os.getloadavg()[0])  # other people's work: the rates are as steady as this
        time.sleep(0.1)
    wall = time.monotonic() - start
    reader.join(timeout=30)
    after, server_after = fetch_counts(base), _sample(server_pid)
    marks = {mark: next((round(t, 2) for t, line in lines if pattern.search(line)), None)
             for mark, pattern in MARKS.items()}
    progress = [t for t, line in lines if PROGRESS.search(line)]
    path = Path(config["output"]) / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    rows = manifest.get("output_rows", 0)
    size = (work / "data" / config["input"].rsplit("/", 1)[1]).stat().st_size
    # processing: from "planned" to the last progress line (the last shard committed)
    processing = progress[-1] - marks["planned"] if progress and marks["planned"] else None
    result = {
        "returncode": proc.returncode, "input_rows": manifest.get("input_rows"), "output_rows": rows,
        "rows_in_equal_rows_out": bool(manifest) and manifest["input_rows"] == rows,
        "status": manifest.get("status"), "shards": manifest.get("shards", {}).get("total"),
        "driver_peak_rss_mib": round(peak / 1024, 1),
        "driver_rss_mib_samples": [(t, round(kb / 1024, 1)) for t, kb in rss[:: max(1, -(-len(rss) // 40))]],
        "driver_cpu_s": round(cpu, 2),
        "loopback_server_cpu_s": round(server_after[2] - server_before[2], 2),
        "load_average_1m_mean": round(sum(loads) / len(loads), 2) if loads else None,
        "wall_s": round(wall, 2), "ray_started_s": marks["ray_started"],
        "startup_s": marks["planned"],  # imports, Ray start, planning (footers, the repeated-keys pass)
        "processing_s": round(processing, 2) if processing else None,
        "rows_per_s": round(rows / processing, 1) if processing else None,
        "rows_per_s_end_to_end": round(rows / wall, 1),
        "input_bytes": size, "input_bytes_read": after["data_bytes"] - before["data_bytes"],
        "input_read_ratio": round((after["data_bytes"] - before["data_bytes"]) / size, 4),
        "input_requests": {m: after[f"data_{m.lower()}"] - before[f"data_{m.lower()}"] for m in ("GET", "HEAD")},
        "image_requests": after["images"] - before["images"],
    }
    if proc.returncode != 0:
        result["log_tail"] = [line for _, line in lines[-20:]]
    return result


# -- the benchmark ---------------------------------------------------------------------------


def machine_and_versions() -> dict:
    from pipelines.bootstrap.manifest import package_versions

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) // 1024
    git = [subprocess.run(["git", *a], check=False, cwd=REPO, capture_output=True, text=True).stdout
           for a in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])]
    return {"machine": {"cpu": cpu, "cores": os.cpu_count(), "memory_mib": memory, "platform": platform.platform()},
            # the working tree is measured as it is: what differs from the commit is named
            "versions": {**package_versions(), "aiohttp": importlib.metadata.version("aiohttp"),
                         "git_commit": git[0].strip(), "git_modified": [x[3:] for x in git[1].splitlines()]}}


def goals(runs: list[dict]) -> dict:
    """The issue's goals: input bytes over every run; RSS and rows/s from 10k to 100k rows."""
    ok, out = [r for r in runs if r["returncode"] == 0], {}
    for key_col in (True, False):
        if ratios := [r["input_read_ratio"] for r in ok if r["key_col"] is key_col]:
            out[f"input_read_ratio_max_{'with' if key_col else 'without'}_key_col"] = {
                "goal": "<= 1.1", "value": max(ratios), "met": max(ratios) <= 1.1}
    for mode in ("download_only", "tiny_model"):
        pair = [next((r for r in ok if (r["mode"], r["format"], r["key_col"], r["rows"]) == (mode, "parquet", True, n)),
                     None) for n in (10_000, 100_000)]
        if None in pair:
            continue
        growth = pair[1]["driver_peak_rss_mib"] / pair[0]["driver_peak_rss_mib"] - 1
        out[f"{mode}_driver_peak_rss_growth_10k_to_100k"] = {"goal": "< +10 %", "value": round(growth, 4),
                                                              "met": growth < 0.10}
        change = pair[1]["rows_per_s"] / pair[0]["rows_per_s"] - 1
        out[f"{mode}_rows_per_s_100k_vs_10k"] = {"goal": "within 20 %", "value": round(change, 4),
                                                  "met": change >= -0.20}  # faster is no failure
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="download-only runs")
    parser.add_argument("--model-sizes", type=int, nargs="*", default=[1_000, 10_000, 100_000],
                        help="tiny-model runs; the largest only if the rate before it says it fits --model-budget-min")
    parser.add_argument("--model-budget-min", type=float, default=20.0)
    parser.add_argument("--no-key-size", type=int, default=10_000,
                        help="a download-only run without --key-col (0: none); the others use --key-col key, "
                             "whose repeated-keys pass reads the key column once more")
    parser.add_argument("--no-csv", dest="csv", action="store_false", help="no CSV run at the largest size")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per image request")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 and 1000 rows, 100-row shards")
    parser.add_argument("--workdir", type=Path, help="keep inputs, outputs and driver logs here")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.model_sizes, args.no_key_size, args.shard_size = [300, 1000], [300], 300, 100
    output = args.output or RESULTS / ("bootstrap_scale_quick.json" if args.quick else "bootstrap_scale.json")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bootstrap_scale_"))
    (work / "data").mkdir(parents=True, exist_ok=True)
    row_group = max(1, args.shard_size // 2)  # several row groups per shard: the planner joins runs of them

    parent, child = mp.get_context("spawn").Pipe()
    server = mp.get_context("spawn").Process(target=_serve, args=(str(work / "data"), child), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{parent.recv()}"
    checkpoint = work / "tiny"
    if args.model_sizes:  # made afresh: the checkpoint format is the working tree's
        subprocess.run([str(Path(sys.executable).with_name("capfilt")), "model", "init", "--preset", "tiny",
                        "--output", str(checkpoint)], check=True, capture_output=True)
    common = {"shard_size": args.shard_size, "allow_private_hosts": True, "timeout": args.timeout, "retries": 0,
              "image_size": 64, "overwrite": True, "progress_seconds": 5}
    model = {"captioner": str(checkpoint), "filter": str(checkpoint), "num_captions": 1, "max_length": 12,
             "min_length": 3}
    plan = [("download_only", "parquet", n, True) for n in args.sizes]
    plan += [("download_only", "parquet", args.no_key_size, False)] if args.no_key_size else []
    plan += [("tiny_model", "parquet", n, True) for n in args.model_sizes]
    plan += [("download_only", "csv", max(args.sizes), True)] if args.csv else []
    report = {"benchmark": "bootstrap_scale", **machine_and_versions(),
              "settings": {**common, **model, "key_col": "key, unless a run says key_col false",
                           "parquet_row_group_rows": row_group, "input": "served over http:// on loopback",
                           "job": "python -m pipelines.bootstrap --config job.yaml, a local Ray of its own"},
              "runs": []}
    try:
        for mode, fmt, rows, key_col in plan:
            last = next((r for r in reversed(report["runs"]) if r["mode"] == mode and r["rows_per_s"]), None)
            if mode == "tiny_model" and rows == max(args.model_sizes) > min(args.model_sizes) and last:
                minutes = (rows / last["rows_per_s"] + last["startup_s"]) / 60
                if minutes > args.model_budget_min:  # the measured rate says it would not fit
                    report["skipped"] = f"{mode} {rows} rows: ~{minutes:.0f} min at {last['rows_per_s']} rows/s"
                    print("skip", report["skipped"], flush=True)
                    continue
            path = write_input(work / "data", base, rows, row_group, fmt)
            name = f"{mode}_{fmt}_{rows}" + ("" if key_col else "_no_key")
            config = {"input": f"{base}/data/{path.name}", "output": str(work / name / "out"), **common,
                      **({"key_col": "key"} if key_col else {}),
                      **({"download_only": True} if mode == "download_only" else model)}
            print(f"run {name} ...", flush=True)
            result = run_job(name, config, work, base, server.pid)
            report["runs"].append({"name": name, "mode": mode, "format": fmt, "rows": rows, "key_col": key_col,
                                   "input_column_bytes": column_bytes(path), **result})
            print(json.dumps({k: result[k] for k in ("returncode", "wall_s", "startup_s", "rows_per_s",
                                                     "driver_peak_rss_mib", "input_read_ratio")}), flush=True)
            report["goals"] = goals(report["runs"])
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(report, indent=2) + "\n")  # after every run: a long run keeps its figures
    finally:
        server.terminate()
    print(json.dumps(report.get("goals"), indent=2), f"\nwrote {output} (driver logs in {work})")
    return 0 if all(r["returncode"] == 0 and r["rows_in_equal_rows_out"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
