"""The one CapFilt pipeline the toy-world benchmarks run (capfilt_ablation.py, tasks.py).

Per seed: a world with its task files, served on loopback; a tokenizer that knows the captions and
every task's words; a tiny checkpoint whose ViT is warmed up on labelled pictures (the toy world's
stand-in for BLIP's ImageNet start); the raw web fetched once; then pre-training, the captioner's
and the filter's fine-tunes and the bootstrap, each the real job with the budget as arguments.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capfilt.world import World, WorldMakeSettings, WorldServer, make_world


def make_task_world(out: Path, *, seed: int, web_size: int, human_size: int, test_size: int,
                    nlvr2_pairs: int = 1500, clips: int = 200) -> World:
    if not (out / "manifest.json").is_file():
        # val_size > 0: the world deals NLVR2 pairs to the splits in turn, alternating labels
        make_world(WorldMakeSettings(out=out, size=web_size, human_size=human_size, human_captions=3,
                                     val_size=max(1, test_size // 2), test_size=test_size, nlvr2_pairs=nlvr2_pairs,
                                     clips=clips, seed=seed, overwrite=True))
    return World.load(out)


def task_tokenizer(world: World, out: Path) -> Path:
    """A WordPiece vocabulary over the captions and every task text (questions, answers,
    statements, dialog candidates), so that no task's words fall to [UNK]."""
    import pyarrow.parquet as pq

    from model.tokenizer import train_wordpiece

    texts: list[str] = []
    for split in ("human", "web"):
        for r in pq.read_table(world.path(split)).to_pylist():
            texts += [c for c in (r.get("captions") or [r.get("caption")]) if c]
    tasks = world.root / "tasks"
    for r in pq.read_table(tasks / "vqa.parquet").to_pylist():
        texts += [r["question"], *r["answers"]]
    texts += [r["statement"] for r in pq.read_table(tasks / "nlvr2.parquet").to_pylist()]
    for r in pq.read_table(tasks / "dialog.parquet").to_pylist():
        texts += [r["caption"]] + [t for x in r["rounds"] for t in (x["question"], *x["candidates"])]
    for r in pq.read_table(tasks / "clips_qa.parquet").to_pylist():
        texts += [r["question"], *r["answers"]]
    train_wordpiece(texts, vocab_size=1024).save(out)
    return out


@contextmanager
def local_ray() -> Iterator[None]:
    """One local Ray instance for every job of the run (at least 3 CPUs: a bootstrap's download,
    caption and filter stages each hold one)."""
    import ray

    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 3), include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def served(world: World, urls: Path) -> Iterator[tuple[Path, int]]:
    """The world's web on loopback; yields the URL list and the port (a new one each start, so a
    resumed run keeps its URL lists apart)."""
    with WorldServer(world.root, port=0, slow_seconds=6) as server:
        yield world.write_urls(urls, server.base_url), server.port


@dataclass
class ToyRun:
    """The jobs of one seed's run, with the knobs they all share."""

    world: World
    urls: Path
    work: Path
    seed: int
    batch_size: int
    threshold: float
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        self.timings[name] = round(time.perf_counter() - start, 1)
        self.log(f"seed {self.seed}: {name} {self.timings[name]:.0f} s")
        return value

    def _common(self) -> dict[str, Any]:
        return dict(batch_size=self.batch_size, seed=self.seed, epochs=1000, log_every=50, checkpoint_every=100_000,
                    keep_checkpoints=1, max_failures=0)

    def warm_vision(self, steps: int) -> Path:
        """`capfilt model init` with the task tokenizer, then `model pretrain-vision`."""
        from capfilt.cli import main as capfilt

        init, warm = self.work / "init", self.work / "init-vision"
        if (warm / "config.json").is_file():  # a resumed seed
            return warm
        tokenizer = task_tokenizer(self.world, self.work / "tokenizer")
        for argv in (["model", "init", "--preset", "tiny", "--tokenizer", str(tokenizer), "--seed", str(self.seed),
                      "--output", str(init), "--overwrite"],
                     ["model", "pretrain-vision", str(init), "--output", str(warm), "--steps", str(steps),
                      "--seed", str(self.seed), "--eval-every", str(max(1, steps)), "--overwrite"]):
            if capfilt(argv) != 0:
                raise SystemExit(f"capfilt {' '.join(argv[:2])} failed")
        return warm

    def boot(self, out: Path, captioner: Path | None, filter_: Path | None, **changes: Any) -> Path:
        from pipelines.bootstrap.run import run_bootstrap
        from pipelines.bootstrap.settings import BootstrapSettings

        # images in the Parquet files too: the ablation's re-kept copies carry only those
        values = dict(input=str(self.urls), output=out, captioner=captioner, filter=filter_, key_col="key",
                      allow_private_hosts=True, timeout=2.0, image_size=64, shard_size=250, batch_size=32,
                      min_length=5, max_length=20, seed=self.seed, threshold=self.threshold, resume=out.exists(),
                      parquet_images=True)
        run_bootstrap(BootstrapSettings(**{**values, **changes}), verbose=False)
        return out

    def fetch(self) -> Path:
        """The raw web, downloaded once (as `capfilt rounds` does); later bootstraps read it."""
        return self.boot(self.work / "raw", None, None, download_only=True)

    def pretrain(self, name: str, web: Path, init: Path | None, *, steps: int, lr: float) -> Path:
        from pipelines.train.job import run_training
        from pipelines.train.settings import TrainSettings

        human = str(self.world.path("human"))
        return Path(run_training(TrainSettings(task="pretrain", data=[human, str(web)], output=self.work / name / "pretrain",
                                               init=init, max_steps=steps, warmup_steps=max(1, steps // 10), lr=lr,
                                               **self._common()))["model"])

    def finetune(self, task: str, init: Path, out: Path, *, steps: int, lr: float,
                 label_smoothing: float = 0.0) -> Path:
        """A captioner (`caption`) or a filter / retrieval model (`filter`), fine-tuned on human."""
        from pipelines.train.job import run_training
        from pipelines.train.settings import TrainSettings

        smoothing = dict(label_smoothing=label_smoothing) if task == "caption" else {}
        return Path(run_training(TrainSettings(task=task, data=[str(self.world.path("human"))], output=out, init=init,
                                               max_steps=steps, lr=lr, warmup_steps=max(1, steps // 10), **smoothing,
                                               **self._common()))["model"])

    def bootstrap_from_raw(self, name: str, raw: Path, captioner: Path, filter_: Path, **decoding: Any) -> Path:
        """One synthetic caption per image from the fetched web, filtered by the filter."""
        return self.boot(self.work / name, captioner, filter_, input=str(raw), key_col=None, num_captions=1, **decoding)
