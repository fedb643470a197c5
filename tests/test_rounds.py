"""`capfilt rounds`: two tiny rounds on a served toy world, stopped part-way and resumed; what
rounds.json records; the refusals (bad settings exit 2, a non-empty folder, changed settings).

One run makes everything the checks read: stopped after round 0's bootstrap by `--stop-after`,
then resumed to the end. Tiny world, tiny model, 1-2 steps per job; most of its time is Ray
Train's and Ray Data's start-up, about ten times over.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capfilt.cli import main
from capfilt.world import World, WorldMakeSettings, WorldServer, make_world
from model.checkpoint import checkpoint_hash
from pipelines.rounds.record import ROUNDS_FILE, marker_path
from pipelines.rounds.run import round_steps

TINY_JOBS = [
    "--pretrain-max-steps", "2", "--pretrain-batch-size", "4", "--pretrain-image-size", "32",
    "--pretrain-warmup-steps", "1", "--pretrain-log-every", "1",
    "--caption-max-steps", "1", "--caption-batch-size", "4", "--caption-warmup-steps", "0",
    "--filter-max-steps", "1", "--filter-batch-size", "4", "--filter-warmup-steps", "0",
    "--bootstrap-allow-private-hosts", "--bootstrap-key-col", "key", "--bootstrap-timeout", "2",
    "--bootstrap-shard-size", "8", "--bootstrap-batch-size", "8", "--bootstrap-download-threads", "4",
    "--bootstrap-min-length", "3", "--bootstrap-max-length", "10", "--bootstrap-threshold", "0.3",
    "--evaluate-max-length", "10", "--evaluate-k-test", "4", "--evaluate-num-beams", "2",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    make_world(WorldMakeSettings(out=root / "world", size=24, human_size=16, human_captions=2, val_size=0,
                                 test_size=8, nlvr2_pairs=0, clips=0, vqa_per_image=0, broken_share=0.1,
                                 workers=1))
    w = World.load(root / "world")
    with WorldServer(w.root, port=0, slow_seconds=5) as server:
        w.write_urls(root / "web.parquet", server.base_url)
        yield {"root": root, "world": w, "web": root / "web.parquet", "server": server}


def args(world: dict, output: Path, *extra: str) -> list[str]:
    w = world["world"]
    return ["rounds", "--web", str(world["web"]), "--human", str(w.path("human")), "--eval", str(w.path("test")),
            "--rounds", "2", "--output", str(output), "--labels", str(w.root), *TINY_JOBS, *extra]


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def resumed(world):
    out = world["root"] / "run"
    assert main(args(world, out, "--stop-after", "0:bootstrap")) == 0
    stopped = json.loads((out / ROUNDS_FILE).read_text())
    before = mtimes(out / "round_0")
    # a rerun without --resume refuses to mix runs
    assert main(args(world, out)) == 1
    assert main(args(world, out, "--resume")) == 0
    return {"out": out, "stopped": stopped, "before": before}


@pytest.mark.slow
def test_stop_writes_markers_up_to_the_step_only(resumed):
    stopped = resumed["stopped"]["rounds"]
    assert [e["round"] for e in stopped] == [0]
    assert list(stopped[0]["steps"]) == ["fetch", "pretrain", "captioner", "filter", "bootstrap"]
    assert not stopped[0]["complete"]


@pytest.mark.slow
def test_resume_does_not_redo_finished_steps(resumed):
    out, before = resumed["out"], resumed["before"]
    after = mtimes(out / "round_0")
    for step in ("fetch", "pretrain", "captioner", "filter", "bootstrap"):
        key = str(marker_path(out, 0, step).relative_to(out / "round_0"))
        assert after[key] == before[key], f"{step} ran again"
    # the checkpoints and bootstrap shards of round 0 are the files the first run wrote
    for name, t in before.items():
        if name.startswith(("pretrain/model/", "captioner/model/", "filter/model/", "bootstrap/parquet/")):
            assert after[name] == t, name
    assert "eval.done.json" in after and "eval.done.json" not in before
    final = json.loads((out / ROUNDS_FILE).read_text())["rounds"]
    for step, record in resumed["stopped"]["rounds"][0]["steps"].items():
        assert final[0]["steps"][step] == record


@pytest.mark.slow
def test_two_rounds_every_artefact_kept_and_described(resumed):
    out = resumed["out"]
    rounds = json.loads((out / ROUNDS_FILE).read_text())
    entries = rounds["rounds"]
    assert [e["round"] for e in entries] == [0, 1, 2]
    for e in entries:
        r = e["round"]
        assert e["complete"] and list(e["steps"]) == list(round_steps(r, 2))
        steps = e["steps"]
        # what made what: each model's hash is the folder's on disk; fine-tunes start from the round's pre-training
        for name in ("pretrain", "captioner", *(("filter",) if r < 2 else ())):
            assert steps[name]["sha256"] == checkpoint_hash(out / steps[name]["model"])
        for name in ("captioner", *(("filter",) if r < 2 else ())):
            assert steps[name]["init"] == steps["pretrain"]["model"]
            assert steps[name]["init_sha256"] == steps["pretrain"]["sha256"]
            assert steps[name]["steps"] == 1
        assert steps["pretrain"]["steps"] == 2
        assert steps["pretrain"]["data"]["web"] == ("round_0/web" if r == 0 else f"round_{r - 1}/bootstrap")
        if r < 2:
            boot = steps["bootstrap"]
            assert boot["checkpoints"] == {"captioner": steps["captioner"]["sha256"], "filter": steps["filter"]["sha256"]}
            assert boot["counts"]["output_rows"] == boot["counts"]["input_rows"] == 24
            assert (out / boot["output"] / "manifest.json").is_file()
        assert steps["eval"]["retrieval_of"]["sha256"] == steps["pretrain"]["sha256"]
        assert steps["eval"]["caption_of"]["sha256"] == steps["captioner"]["sha256"]
        for metric in ("tr@1", "ir@1", "bleu4", "cider"):
            assert 0 <= e["metrics"][metric] <= 10
        assert json.loads((out / f"round_{r}" / "eval.json").read_text()) == steps["eval"]["metrics"]
    fetch = entries[0]["steps"]["fetch"]
    assert fetch["counts"]["kept"]["synthetic"] == 0 and fetch["settings"]["download_only"]
    assert fetch["checkpoints"] == {}, "fetching needs no model"
    assert entries[1]["steps"]["bootstrap"]["input"] == "round_0/web"
    assert rounds["inputs"]["human"][0]["sha256"] and rounds["settings"]["rounds"] == 2
    page = (out / "report.html").read_text()
    assert "Metrics across rounds" in page and "round 2" in page


@pytest.mark.slow
def test_the_web_is_fetched_once_for_every_round(resumed, world):
    # two rounds of CapFilt, and every URL of the web was asked for once: in round 0's fetch
    requests = world["server"].web_requests
    assert set(requests) == set(world["world"].web_labels), "a URL of the web was never fetched"
    assert set(requests.values()) == {1}, {k: n for k, n in requests.items() if n != 1}


@pytest.mark.slow
def test_resume_refuses_changed_settings(resumed, world):
    assert main(args(world, resumed["out"], "--resume", "--pretrain-lr", "0.001")) == 1


@pytest.mark.parametrize("bad", [
    ["--rounds", "0"],
    ["--bootstrap-top-p", "1.5"],
    ["--bootstrap-decoding", "beam", "--bootstrap-num-beams", "1", "--bootstrap-num-captions", "3"],
    ["--stop-after", "7:pretrain"],
])
def test_bad_settings_exit_2_before_any_work(world, tmp_path, bad, capsys):
    out = tmp_path / "never"
    assert main(args(world, out, *bad)) == 2
    assert not out.exists()
    assert capsys.readouterr().err.startswith("error:")


def test_yaml_sections_and_unknown_section_key(world, tmp_path, capsys):
    from capfilt.commands.rounds import load_rounds_settings

    config = tmp_path / "rounds.yaml"
    config.write_text("web: w.parquet\nhuman: [h.parquet]\neval: [t.parquet]\noutput: out\n"
                      "pretrain: {max-steps: 7}\nbootstrap: {top_p: 0.5}\n")
    s = load_rounds_settings(config, {"bootstrap__threshold": 0.7})
    assert (s.pretrain.max_steps, s.bootstrap.top_p, s.bootstrap.threshold) == (7, 0.5, 0.7)
    config.write_text(config.read_text() + "filter: {nope: 1}\n")
    assert main(["rounds", "--config", str(config)]) == 2
    assert "filter.nope" in capsys.readouterr().err


def test_every_pre_training_starts_from_the_given_init(tmp_path):
    # `--pretrain-init` (e.g. a checkpoint from `capfilt model pretrain-vision`): each round's
    # pre-training starts from it, as each of BLIP's starts from the ImageNet ViT
    from capfilt.commands.rounds import load_rounds_settings

    init = tmp_path / "warm"
    assert main(["model", "init", "--output", str(init)]) == 0
    config = tmp_path / "rounds.yaml"
    config.write_text(f"web: w.parquet\nhuman: [h.parquet]\neval: [t.parquet]\noutput: out\nrounds: 2\n"
                      f"pretrain: {{init: {init}}}\n")
    s = load_rounds_settings(config, {})
    for r in range(3):
        assert s.train_settings("pretrain", ["h.parquet"], tmp_path / f"round_{r}").init == init
    config.write_text(config.read_text().replace(f"pretrain: {{init: {init}}}\n", ""))
    assert load_rounds_settings(config, {}).train_settings("pretrain", ["h.parquet"], tmp_path / "p").init is None
