"""`python -m capfilt.demo --output DIR`: what `make demo` runs.

Make a small toy world, serve it on loopback, fetch a few of its web URLs (one of each failure kind
included) to show the web it imitates, then run one whole round of CapFilt on it (`capfilt rounds
--rounds 1`: pre-train on human + the raw web, fine-tune captioner and filter, bootstrap the web,
pre-train again on human + the bootstrapped web, evaluate both) and print the metrics before and
after bootstrapping, the noise of the web pairs each pre-training saw (the world's checker knows
the truth), and the path of the report. Before the round, the tiny ViT is warmed up on labelled
pictures (`capfilt model pretrain-vision`), as BLIP's starts from ImageNet weights. Its budget
(warm-up 5000 steps, captioner 600, filter 300) is the one at which the bootstrapped web comes out
cleaner than the raw one; it took 39 minutes on 2 CPU cores (README);
`--full` (make demo-full) runs two rounds on a bigger world with longer training.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from capfilt.settings_cli import run_app, settings_command
from capfilt.world import World, WorldMakeSettings, WorldServer, make_world
from pipelines.bootstrap.schema import OK


class DemoSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    output: Path = Field(description="Directory for everything the demo makes.")
    full: bool = Field(False, description="The longer run (make demo-full): bigger world, two rounds, longer training.")
    size: int | None = Field(None, ge=1, description="Rows of the toy world's web split (default 600; full 4000).")
    human_size: int | None = Field(None, ge=8, description="Images of the human split (default 300; full 1000).")
    rounds: int | None = Field(None, ge=1, le=10, description="Bootstrapping rounds (default 1; full 2).")
    pretrain_steps: int | None = Field(None, ge=1, description="Steps of each pre-training (default 300; full 600).")
    finetune_steps: int | None = Field(None, ge=1, description="Steps of the filter's fine-tune (default 300; full 300).")
    captioner_steps: int | None = Field(None, ge=1, description="Steps of each captioner fine-tune (default 600; "
                                        "full 600).")
    vision_steps: int | None = Field(None, ge=0, description="Steps of the ViT's warm-up on labelled pictures before "
                                     "the first pre-training (default 5000; full 5000); 0: every pre-training "
                                     "starts from scratch.")
    seed: int = Field(0, ge=0)
    fetch_timeout: float = Field(1.0, gt=0, description="Seconds before a download counts as timed out.")

    def pick(self, name: str, quick: int, full: int) -> int:
        value = getattr(self, name)
        return value if value is not None else (full if self.full else quick)


def make_demo_world(s: DemoSettings) -> World:
    out = s.output / "world"
    make_world(WorldMakeSettings(out=out, size=s.pick("size", 600, 4000), human_size=s.pick("human_size", 300, 1000),
                                 human_captions=3, val_size=0, test_size=100, nlvr2_pairs=0, clips=0,
                                 vqa_per_image=0, seed=s.seed, overwrite=True))
    return World.load(out)


def fetch(url: str, timeout: float) -> str:
    """What a downloader would see: 'image (N bytes)', 'HTTP 404', 'timeout', ..."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
            kind = r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (TimeoutError, urllib.error.URLError) as exc:
        return "timeout" if "timed out" in str(exc) else f"error: {exc}"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return f"{kind}, {im.size[0]}x{im.size[1]} image"
    except OSError:
        return f"{kind} ({len(data)} bytes), not an image"


def show_web(world: World, server: WorldServer, timeout: float) -> list[dict[str, Any]]:
    """Fetch one web URL of each expected outcome, to show that the server does what it says."""
    labels = world.web_labels
    urls = world.urls(server.base_url).to_pylist()
    picked: dict[str, dict[str, Any]] = {}
    for row in urls:
        picked.setdefault(labels[row["key"]]["fetch"], row)
    return [{"key": r["key"], "expected": kind, "got": fetch(r["url"], timeout), "caption": r["caption"],
             "noise": labels[r["key"]]["noise"]} for kind, r in sorted(picked.items())]


def summary(world: World) -> dict[str, Any]:
    m = world.manifest
    return {"world": str(world.root), "images": m["images"], "rows": m["rows"],
            "web_noise": m["web_noise"], "web_fetch": m["web_fetch"]}


def warm_start(s: DemoSettings) -> Path | None:
    """A tiny checkpoint whose ViT is warmed up on labelled pictures (`capfilt model init`, then
    `capfilt model pretrain-vision`): every pre-training of the rounds starts from it, as BLIP's
    start from an ImageNet ViT. None when the demo's --vision-steps is 0."""
    from capfilt.cli import main as capfilt_main

    steps = s.pick("vision_steps", 5000, 5000)
    if steps == 0:
        return None
    init, warm = s.output / "init", s.output / "init-vision"
    for args in (["model", "init", "--output", str(init), "--seed", str(s.seed), "--overwrite"],
                 ["model", "pretrain-vision", str(init), "--output", str(warm), "--steps", str(steps),
                  "--seed", str(s.seed), "--overwrite"]):
        code = capfilt_main(args)
        if code != 0:
            raise SystemExit(code)
    return warm


def rounds_args(s: DemoSettings, world: World, urls: Path, init: Path | None = None) -> list[str]:
    """`capfilt rounds` as the demo runs it: every knob it sets is one a user could pass."""
    pre, fine = s.pick("pretrain_steps", 300, 600), s.pick("finetune_steps", 300, 300)
    # the captioner gets twice the filter's steps: at fewer its nucleus captions are mostly false
    # and, being near misses, the filter keeps them as often as true ones (README, make demo)
    captioner = s.pick("captioner_steps", 600, 600)
    start = ["--pretrain-init", str(init)] if init is not None else []
    return [
        "rounds", *start, "--web", str(urls), "--human", str(world.path("human")), "--eval", str(world.path("test")),
        "--rounds", str(s.pick("rounds", 1, 2)), "--output", str(s.output / "rounds"), "--labels", str(world.root),
        "--seed", str(s.seed),
        "--pretrain-max-steps", str(pre), "--pretrain-epochs", "1000", "--pretrain-batch-size", "24",
        "--pretrain-warmup-steps", str(max(1, pre // 10)), "--pretrain-log-every", "25",
        "--caption-max-steps", str(captioner), "--caption-epochs", "1000", "--caption-batch-size", "24",
        "--filter-max-steps", str(fine), "--filter-epochs", "1000", "--filter-batch-size", "24",
        # The tiny model learns from scratch, which wants higher learning rates than BLIP's
        # fine-tunes of a pre-trained one; and no label smoothing under nucleus sampling at top-p
        # 0.9 (see benchmarks/toy_quality.py for both).
        "--pretrain-lr", "1e-3", "--caption-lr", "1e-3", "--filter-lr", "5e-4", "--caption-label-smoothing", "0",
        # The filter keeps BLIP's ITM threshold 0.5 (the default): a threshold calibrated on the
        # world's web labels would tune it on the labels the demo's noise table is measured with.
        "--bootstrap-allow-private-hosts", "--bootstrap-key-col", "key", "--bootstrap-timeout", str(s.fetch_timeout),
        "--bootstrap-image-size", "64", "--bootstrap-shard-size", "250", "--bootstrap-batch-size", "32",
        "--bootstrap-num-captions", "1", "--bootstrap-min-length", "5", "--bootstrap-max-length", "20",
        "--evaluate-max-length", "20", "--evaluate-min-length", "3",
    ]


def pair_noise(world: World, folder: Path) -> dict[str, Any]:
    """Noise ratio (the world's checker) of the web-side pairs a pre-training read from a
    bootstrap folder: kept web captions and kept synthetic captions, of downloaded images."""
    import pyarrow.parquet as pq

    labels = world.web_labels
    rows = pq.read_table(folder / "parquet", columns=["key", "status", "web_caption", "web_kept",
                                                     "synthetic_captions", "synthetic_kept"]).to_pylist()
    ids, captions, kinds = [], [], []
    for r in rows:
        if r["status"] != OK:
            continue
        image = labels[r["key"]]["image_id"]
        if r["web_kept"] and r["web_caption"]:
            ids.append(image), captions.append(r["web_caption"]), kinds.append("web")
        for c, kept in zip(r["synthetic_captions"] or [], r["synthetic_kept"] or []):
            if kept:
                ids.append(image), captions.append(c), kinds.append("synthetic")
    noisy = [not world.check(i, c).true for i, c in zip(ids, captions)]
    def share(kind: str) -> float | None:
        picked = [n for n, k in zip(noisy, kinds) if k == kind]
        return sum(picked) / len(picked) if picked else None
    return {"pairs": len(captions), "noise": sum(noisy) / len(noisy) if noisy else None,
            "web_pairs": kinds.count("web"), "web_noise": share("web"),
            "synthetic_pairs": kinds.count("synthetic"), "synthetic_noise": share("synthetic")}


def run_round(s: DemoSettings, world: World, urls: Path, init: Path | None) -> dict[str, Any]:
    import shutil

    from capfilt.cli import main as capfilt_main

    start = time.perf_counter()
    shutil.rmtree(s.output / "rounds", ignore_errors=True)  # a demo starts afresh (its world's URLs change port)
    code = capfilt_main(rounds_args(s, world, urls, init))
    if code != 0:
        raise SystemExit(code)
    out = s.output / "rounds"
    rounds = json.loads((out / "rounds.json").read_text())
    noise = [pair_noise(world, out / e["steps"]["pretrain"]["data"]["web"]) for e in rounds["rounds"]]
    return {"rounds_dir": str(out), "report": str(out / "report.html"), "seconds": time.perf_counter() - start,
            "rounds": [{"round": e["round"], "metrics": e["metrics"], "web_pairs": n}
                       for e, n in zip(rounds["rounds"], noise)]}


def run_demo(s: DemoSettings) -> dict[str, Any]:
    start = time.perf_counter()
    world = make_demo_world(s)
    urls = s.output / "web_urls.parquet"
    with WorldServer(world.root, port=0, slow_seconds=s.fetch_timeout * 3) as server:
        fetched = show_web(world, server, s.fetch_timeout)
        world.write_urls(urls, base_url=server.base_url)
        print_world(summary(world), fetched)
        init = warm_start(s)
        result = run_round(s, world, urls, init)
    report = {**summary(world), "fetched": fetched, **result, "wall_seconds": time.perf_counter() - start}
    (s.output / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_world(report: dict[str, Any], fetched: list[dict[str, Any]]) -> None:
    print(f"toy world in {report['world']}")
    print("  images: " + ", ".join(f"{k} {v}" for k, v in report["images"].items()))
    print("  rows:   " + ", ".join(f"{k} {v}" for k, v in report["rows"].items()))
    total = sum(report["web_noise"].values())
    noisy = total - report["web_noise"].get("correct", 0)
    print(f"  web captions: {noisy} of {total} noisy ({noisy / max(1, total):.0%}): "
          + ", ".join(f"{k} {v}" for k, v in report["web_noise"].items()))
    print("  web URLs: " + ", ".join(f"{k} {v}" for k, v in report["web_fetch"].items()))
    print("served on loopback, fetched:")
    for f in fetched:
        print(f"  {f['key']}  expected {f['expected']:<10} got {f['got']:<40} caption ({f['noise']}): {f['caption']!r}")


METRICS = (("tr@1", "zero-shot TR@1 (test)"), ("ir@1", "zero-shot IR@1 (test)"), ("tr@5", "zero-shot TR@5 (test)"),
           ("ir@5", "zero-shot IR@5 (test)"), ("bleu4", "captioner BLEU-4 (test)"), ("cider", "captioner CIDEr (test)"))


def print_report(report: dict[str, Any]) -> None:
    """Before bootstrapping (pre-trained on human + the raw web) against after (human + the web
    bootstrapped r times), as a table."""
    rounds = report["rounds"]
    head = ["", *[("before (raw web)" if r["round"] == 0 else f"after {r['round']} round(s)") for r in rounds]]
    rows = [[label, *[f"{r['metrics'].get(key, float('nan')):.3f}" for r in rounds]] for key, label in METRICS]
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"
    rows.append(["web-side pairs pre-trained on", *[str(r["web_pairs"]["pairs"]) for r in rounds]])
    rows.append(["  of which noisy (checker)", *[pct(r["web_pairs"]["noise"]) for r in rounds]])
    # the two halves apart: what the filter kept of the web, and of the captioner's captions
    rows.append(["  web captions kept", *[str(r["web_pairs"]["web_pairs"]) for r in rounds]])
    rows.append(["    of which noisy", *[pct(r["web_pairs"]["web_noise"]) for r in rounds]])
    rows.append(["  synthetic captions kept", *[str(r["web_pairs"]["synthetic_pairs"]) for r in rounds]])
    rows.append(["    of which noisy", *[pct(r["web_pairs"]["synthetic_noise"]) for r in rounds]])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    print()
    for row in [head, *rows]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    print(f"\nevery artefact of every round: {report['rounds_dir']} (rounds.json says what made what)")
    print(f"report: {report['report']}")
    print(f"demo wall time: {report['wall_seconds'] / 60:.1f} min")


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@settings_command(app, "demo", DemoSettings)
def demo(settings: DemoSettings) -> None:
    """Make a toy world, serve it, run one round of CapFilt on it, and show before against after."""
    settings.output.mkdir(parents=True, exist_ok=True)
    print_report(run_demo(settings))


@app.callback()
def _root() -> None:  # keeps "demo" a named sub-command; main() supplies it
    pass


def main(argv: list[str] | None = None) -> int:
    import sys

    return run_app(app, ["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
