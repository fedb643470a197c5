"""Images per second of the bootstrap graph against a naive loop, same checkpoints, same machine.

The naive loop is what one would write first: for each row, download it, caption it, score it,
append the result; one image at a time, in one process. The graph is `run_bootstrap` on a Ray
instance started once beforehand (as a cluster would be). Both see the same served toy world
(no broken URLs, so both do the same work) and the same tiny checkpoint; each is timed from
loading the checkpoint to the last row, several times, and the medians compared.

The first repeat is the cold one: Ray starts the worker processes that later repeats reuse, as a
running cluster would. Both figures are in the JSON ("all"). With few rows the graph's start-up
(actors loading the checkpoints) dominates: 256 rows gave 1.4x where 2048 give 3.6x (2 cores).

    python benchmarks/bootstrap_throughput.py --rows 2048 --repeats 3 --output bench.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' world helpers
from bootstrap_world import bootstrap_settings, make_checkpoint, make_small_world  # noqa: E402

from benchmarks.machine import machine  # noqa: E402
from capfilt.world.server import WorldServer  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from model.generation import generate_captions  # noqa: E402
from model.preprocess import images_to_tensor  # noqa: E402
from model.scoring import score_captions  # noqa: E402
from pipelines.bootstrap.caption_stage import generation_settings  # noqa: E402
from pipelines.bootstrap.download_stage import DownloadStage  # noqa: E402
from pipelines.bootstrap.model_stage import key_seed  # noqa: E402
from pipelines.bootstrap.run import run_bootstrap  # noqa: E402
from pipelines.bootstrap.settings import BootstrapSettings  # noqa: E402


def naive_loop(settings: BootstrapSettings, rows: list[dict]) -> float:
    """Seconds for the one-image-at-a-time loop over `rows`.

    One torch thread, as each Ray actor gets: on 2 shared cores, 2 threads made this loop about
    35x slower (threads spinning against each other and the machine's other load), which would
    flatter the graph."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    download = DownloadStage(settings)
    captioner = load_checkpoint(settings.captioner)
    scorer = load_checkpoint(settings.filter)
    generation = generation_settings(settings)
    results = []
    with torch.inference_mode():
        for row in rows:
            status, error, jpeg, _, _ = download.process_row(row["url"], None)
            if status != "ok":
                results.append((row["key"], status))
                continue
            image = Image.open(io.BytesIO(jpeg)).convert("RGB")
            pixels = images_to_tensor([image], captioner.config)
            captions = generate_captions(captioner.med, captioner.tokenizer, pixels,
                                         [key_seed(settings.seed, row["key"])], generation)[0]
            texts = [row["caption"], *captions] if row["caption"] is not None else captions
            scores = score_captions(scorer.med, scorer.tokenizer, images_to_tensor([image], scorer.config), [texts])
            results.append((row["key"], status, captions, scores.itm[0]))
    assert len(results) == len(rows)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-captions", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=Path("bootstrap_throughput.json"))
    args = parser.parse_args(argv)

    import ray

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        world = make_small_world(tmp / "world", args.rows, broken_share=0.0)
        checkpoint = make_checkpoint(tmp / "ckpt")
        with WorldServer(world.root, port=0) as server:
            urls = world.write_urls(tmp / "web.parquet", server.base_url)
            rows = world.urls(server.base_url).to_pylist()
            ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
            graph_s, loop_s = [], []
            for r in range(args.repeats):
                settings = bootstrap_settings(urls, tmp / f"out{r}", checkpoint, num_captions=args.num_captions,
                                              batch_size=args.batch_size, shard_size=64, download_batch_size=64,
                                              download_threads=8)
                t0 = time.perf_counter()
                manifest = run_bootstrap(settings, verbose=False)
                graph_s.append(time.perf_counter() - t0)
                assert manifest["output_rows"] == args.rows
                loop_s.append(naive_loop(settings, rows))
                print(f"repeat {r}: graph {graph_s[-1]:.1f}s, loop {loop_s[-1]:.1f}s", flush=True)
            ray.shutdown()
    graph_ips = [args.rows / s for s in graph_s]
    loop_ips = [args.rows / s for s in loop_s]
    result = {
        "benchmark": "bootstrap_throughput",
        "rows": args.rows, "repeats": args.repeats, "num_captions": args.num_captions,
        "batch_size": args.batch_size, "model": "tiny (random init)",
        "graph_images_per_s": {"median": statistics.median(graph_ips), "all": graph_ips},
        "loop_images_per_s": {"median": statistics.median(loop_ips), "all": loop_ips},
        "ratio_median": statistics.median(graph_ips) / statistics.median(loop_ips),
        "timing": "wall clock from loading checkpoints to the last row written; graph on a Ray instance "
                  "started beforehand (its actors start inside the timing)",
        "machine": {**machine(), "torch_threads": torch.get_num_threads()},
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("graph_images_per_s", "loop_images_per_s", "ratio_median")}))
    return result


if __name__ == "__main__":
    main()
