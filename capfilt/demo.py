"""`python -m capfilt.demo --output DIR`: what `make demo` runs.

For now: make a small toy world, serve it on loopback, fetch a few of its web URLs (one of each
failure kind included) to show the web it imitates, and print what was made. Later rounds of work
extend `run_demo` with the whole bootstrapping round; each step is its own function.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from capfilt.settings_cli import run_app, settings_command
from capfilt.world import World, WorldMakeSettings, WorldServer, make_world


class DemoSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    output: Path = Field(description="Directory for everything the demo makes.")
    size: int = Field(2000, ge=1, description="Rows of the toy world's web split.")
    seed: int = Field(0, ge=0)
    fetch_timeout: float = Field(1.0, gt=0, description="Seconds before a download counts as timed out.")


def make_demo_world(s: DemoSettings) -> World:
    out = s.output / "world"
    make_world(WorldMakeSettings(out=out, size=s.size, human_size=500, val_size=100, test_size=100,
                                 nlvr2_pairs=200, clips=50, seed=s.seed, overwrite=True))
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


def run_demo(s: DemoSettings) -> dict[str, Any]:
    world = make_demo_world(s)
    with WorldServer(world.root, port=0, slow_seconds=s.fetch_timeout * 3) as server:
        fetched = show_web(world, server, s.fetch_timeout)
        world.write_urls(s.output / "web_urls.parquet", base_url=server.base_url)
    report = {**summary(world), "fetched": fetched}
    (s.output / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"toy world in {report['world']}")
    print("  images: " + ", ".join(f"{k} {v}" for k, v in report["images"].items()))
    print("  rows:   " + ", ".join(f"{k} {v}" for k, v in report["rows"].items()))
    total = sum(report["web_noise"].values())
    noisy = total - report["web_noise"].get("correct", 0)
    print(f"  web captions: {noisy} of {total} noisy ({noisy / max(1, total):.0%}): "
          + ", ".join(f"{k} {v}" for k, v in report["web_noise"].items()))
    print("  web URLs: " + ", ".join(f"{k} {v}" for k, v in report["web_fetch"].items()))
    print("served on loopback, fetched:")
    for f in report["fetched"]:
        print(f"  {f['key']}  expected {f['expected']:<10} got {f['got']:<40} caption ({f['noise']}): {f['caption']!r}")


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@settings_command(app, "demo", DemoSettings)
def demo(settings: DemoSettings) -> None:
    """Make a toy world, serve it, fetch from it, and say what was made."""
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
