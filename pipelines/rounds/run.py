"""run_rounds(settings): the bootstrapping loop, step by step, each step skipped when done.

    DIR/run.json                  settings and input fingerprints of the first start (--resume checks them)
    DIR/round_0/web/              the web as it is, fetched once (`bootstrap --download-only`): every
                                  downloaded image with its web caption; every round's CapFilt reads it
    DIR/round_r/pretrain/         pre-training on human + web_r (web_r: round_0/web, or round_{r-1}/bootstrap)
    DIR/round_r/captioner/        the captioner, fine-tuned (LM) on human from round_r/pretrain/model
    DIR/round_r/filter/           the filter, fine-tuned (ITC+ITM) on human     (r < R)
    DIR/round_r/bootstrap/        CapFilt of the web: web_{r+1}                 (r < R)
    DIR/round_r/eval.json         zero-shot retrieval of the pre-trained model, captioning of the captioner
    DIR/round_r/<step>.done.json  the step's marker: what it read and made, hashes, seconds
    DIR/rounds.json               every round's markers and metrics (capfilt/report reads it)

The last round R only pre-trains, fine-tunes its captioner and is evaluated: it is the model that
R rounds of bootstrapping made. Ray: joins RAY_ADDRESS when set, else starts a local instance for
the whole loop (every job reuses it) and stops it at the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from pipelines.progress import Progress
from pipelines.bootstrap.storage import Storage
from pipelines.ray_session import start_or_join_ray
from pipelines.rounds.record import (ROUNDS_FILE, RUN_FILE, build_rounds, fingerprint,
                                     marker_path, read_marker, write_json)
from pipelines.rounds.settings import MAY_CHANGE_ON_RESUME, RoundsSettings
from pipelines.run_folder import check_run_folder


class RoundsError(RuntimeError):
    """The loop cannot start (or go on) as asked; the message says why and what to do."""


def round_steps(r: int, rounds: int) -> tuple[str, ...]:
    first = ("fetch",) if r == 0 else ()
    if r < rounds:
        return (*first, "pretrain", "captioner", "filter", "bootstrap", "eval")
    return (*first, "pretrain", "captioner", "eval")


class Loop:
    """One run of the loop over an output folder; each step is a method returning its record."""

    def __init__(self, settings: RoundsSettings, log: Callable[[str], None] = print):
        self.s = settings
        self.root = settings.output
        self.log = log

    # -- paths -----------------------------------------------------------------------------
    def dir(self, r: int, name: str) -> Path:
        return self.root / f"round_{r}" / name

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()

    def web_data(self, r: int) -> Path:
        return self.dir(0, "web") if r == 0 else self.dir(r - 1, "bootstrap")

    # -- the start: refuse to mix runs -------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        inputs = {"web": fingerprint(self.s.web), "human": [fingerprint(p) for p in self.s.human],
                  "eval": [fingerprint(p) for p in self.s.eval]}
        for name, prints in (("human", inputs["human"]), ("eval", inputs["eval"])):
            missing = [p["path"] for p in prints if p["sha256"] is None]
            if missing:
                raise RoundsError(f"{name}: path not found: {', '.join(missing)}")
        run = {"settings": self.s.result_settings(), "inputs": inputs}
        check_run_folder(Storage(str(self.root)), RUN_FILE, run, resume=self.s.resume, job="rounds", error=RoundsError,
                         not_empty="pass --resume to finish the run it holds, or name another folder",
                         may_change=MAY_CHANGE_ON_RESUME)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / RUN_FILE, run)
        return run

    # -- steps -----------------------------------------------------------------------------
    def fetch(self, r: int) -> dict[str, Any]:
        """The web as it is, downloaded once and never again: no model, every web caption kept."""
        out = self.dir(0, "web")
        bs = self.s.bootstrap_settings(out, None, None, resume=out.exists(), download_only=True)
        return {"output": self.rel(out), "input": self.s.web, **self._bootstrap(bs)}

    def pretrain(self, r: int) -> dict[str, Any]:
        data = [*self.s.human, str(self.web_data(r))]
        settings = self.s.train_settings("pretrain", data, self.dir(r, "pretrain"))
        return self._train(settings, data_from={"human": self.s.human, "web": self.rel(self.web_data(r))})

    def captioner(self, r: int) -> dict[str, Any]:
        return self._finetune(r, "caption", "captioner")

    def filter(self, r: int) -> dict[str, Any]:
        return self._finetune(r, "filter", "filter")

    def bootstrap(self, r: int) -> dict[str, Any]:
        out = self.dir(r, "bootstrap")
        captioner, filter_ = self.dir(r, "captioner") / "model", self.dir(r, "filter") / "model"
        # CapFilt of the images fetched in round 0: the same rows and keys, nothing downloaded again
        bs = self.s.bootstrap_settings(out, captioner, filter_, resume=out.exists(), input=str(self.dir(0, "web")),
                                       key_col=None)
        return {"output": self.rel(out), "input": self.rel(self.dir(0, "web")), "captioner": self.rel(captioner),
                "filter": self.rel(filter_), **self._bootstrap(bs)}

    def eval(self, r: int) -> dict[str, Any]:
        from model.checkpoint_files import checkpoint_hash
        from pipelines.train.evaluate import evaluate

        pretrained, captioner = self.dir(r, "pretrain") / "model", self.dir(r, "captioner") / "model"
        metrics: dict[str, Any] = {}
        if "retrieval" in self.s.evaluate.tasks:
            result = evaluate(self.s.evaluate_settings(pretrained, None, tasks=["retrieval"]))
            metrics["retrieval"] = result["retrieval"]
        if "caption" in self.s.evaluate.tasks:
            result = evaluate(self.s.evaluate_settings(captioner, None, tasks=["caption"]))
            metrics["caption"] = result["caption"]
        write_json(self.dir(r, "eval.json"), metrics)
        return {"output": self.rel(self.dir(r, "eval.json")), "data": self.s.eval,
                "retrieval_of": {"path": self.rel(pretrained), "sha256": checkpoint_hash(pretrained)},
                "caption_of": {"path": self.rel(captioner), "sha256": checkpoint_hash(captioner)},
                "metrics": metrics}

    # -- helpers ---------------------------------------------------------------------------
    def _finetune(self, r: int, task: str, name: str) -> dict[str, Any]:
        init = self.dir(r, "pretrain") / "model"
        settings = self.s.train_settings(task, list(self.s.human), self.dir(r, name), init=init)
        return self._train(settings, data_from={"human": self.s.human})

    def _train(self, settings, data_from: dict[str, Any]) -> dict[str, Any]:
        from model.checkpoint_files import checkpoint_hash
        from pipelines.train.job import run_training

        summary = run_training(settings)
        model = Path(summary["model"])
        return {"output": self.rel(settings.output), "model": self.rel(model), "sha256": checkpoint_hash(model),
                "init": self.rel(settings.init) if settings.init is not None else None,
                "init_sha256": checkpoint_hash(settings.init) if settings.init is not None else None,
                "data": data_from, "steps": summary.get("step"), "samples": summary.get("samples"),
                "settings": settings.model_dump(mode="json", exclude={"output", "init", "data"})}

    def _bootstrap(self, settings) -> dict[str, Any]:
        from pipelines.bootstrap.run import run_bootstrap

        manifest = run_bootstrap(settings, verbose=True)
        return {"checkpoints": manifest["checkpoints"],
                "counts": {k: manifest[k] for k in ("input_rows", "output_rows", "status", "kept",
                                                    "synthetic_captions", "images_in_webdataset",
                                                    "samples_in_webdataset")},
                "settings": {k: v for k, v in manifest["settings"].items()
                             if k not in ("input", "output", "captioner", "filter", "resume", "overwrite")}}

    # -- the loop --------------------------------------------------------------------------
    def run(self, run: dict[str, Any]) -> dict[str, Any]:
        """Every step not done yet, in order; `run` is what prepare() returned."""
        stop = self.s.stop_point
        stopped = None
        plan = [(r, round_steps(r, self.s.rounds)) for r in range(self.s.rounds + 1)]
        todo = [(r, step) for r, steps in plan for step in steps if read_marker(self.root, r, step) is None]
        stages = Progress("rounds", len(todo), "stages", log=self.log)
        for r, steps in plan:
            for step in steps:
                if read_marker(self.root, r, step) is None:
                    self.log(f"round {r}: {step} ...")
                    start = time.perf_counter()
                    record = getattr(self, step)(r)
                    write_json(marker_path(self.root, r, step),
                               {"round": r, "step": step, "record": record,
                                "seconds": round(time.perf_counter() - start, 1),
                                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                    self.log(f"round {r}: {step} done in {time.perf_counter() - start:.0f} s")
                    stages.update(1, force=True)
                else:
                    self.log(f"round {r}: {step} already done, skipped")
                write_json(self.root / ROUNDS_FILE, build_rounds(self.root, self.s.rounds, plan, run))
                if stop == (r, step):
                    stopped = f"{r}:{step}"
                    break
            if stopped:
                break
        rounds = build_rounds(self.root, self.s.rounds, plan, run)
        write_json(self.root / ROUNDS_FILE, rounds)
        last_bootstrap = self.dir(self.s.rounds - 1, "bootstrap")
        return {"output": str(self.root), "rounds_file": str(self.root / ROUNDS_FILE), "stopped_after": stopped,
                "last_bootstrap": str(last_bootstrap) if marker_path(self.root, self.s.rounds - 1, "bootstrap").is_file()
                else None, "rounds": rounds}


def _start_ray(settings: RoundsSettings) -> bool:
    """Join RAY_ADDRESS, or start a local Ray sized for the largest job; True when started here."""
    b = settings.bootstrap
    return start_or_join_ray(max(settings.num_workers * settings.cpus_per_worker + 1,
                                 (b.captioner_actors + b.filter_actors) * b.cpus_per_actor + b.download_cpus + 1))


def run_rounds(settings: RoundsSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish, with resume) the loop; returns where things are and rounds.json's content."""
    loop = Loop(settings, log)
    run = loop.prepare()  # refuse before Ray starts
    started = _start_ray(settings)
    try:
        return loop.run(run)
    finally:
        if started:
            import ray

            ray.shutdown()
