"""The CapFilt ablation's summary: means over seeds, and each dataset's difference from web as is
paired by seed (each seed is its own world, so a metric moves more between seeds than between
datasets)."""

import json
from types import SimpleNamespace

import pytest

from benchmarks.capfilt_ablation import markdown, merge, summarise


def seed(n: int, web: float, both: float) -> dict:
    def metrics(v: float) -> dict:
        return {"tr@1": v, "ir@1": v, "cider": 4 * v}
    return {"seed": n, "datasets": {"web": metrics(web), "web+both_nucleus": metrics(both)},
            "synthetic_noise": {"nucleus": {"noise_all": 0.5}, "web": {"noise_all": 0.4, "noise_kept": 0.1}}}


def test_paired_difference_is_taken_within_each_seed():
    # seed worlds far apart (0.2 vs 0.8), CapFilt ahead by 0.05 in both: the raw rows' spread
    # (0.3) hides what the paired difference shows
    summary = summarise([seed(0, 0.20, 0.25), seed(1, 0.80, 0.85)])
    assert summary["table"]["web"]["tr@1"] == pytest.approx({"mean": 0.5, "half_range": 0.3})
    diff = summary["vs_web"]["web+both_nucleus"]["tr@1"]
    assert diff["mean"] == pytest.approx(0.05) and diff["half_range"] == pytest.approx(0.0)
    assert (diff["seeds_ahead"], diff["seeds"]) == (2, 2)
    assert "web" not in summary["vs_web"]


def test_seeds_behind_are_counted_and_the_table_shows_the_sign():
    summary = summarise([seed(0, 0.5, 0.4), seed(1, 0.5, 0.7)])
    diff = summary["vs_web"]["web+both_nucleus"]["ir@1"]
    assert diff["mean"] == pytest.approx(0.05) and diff["half_range"] == pytest.approx(0.15)
    assert diff["seeds_ahead"] == 1
    table = markdown(summary, [0, 1], {"pretrain_steps": 3, "batch_size": 2, "threshold": 0.5})
    assert "| web + both (nucleus) | +5.0 ± 15.0 (1/2) |" in table


def test_merge_refuses_runs_with_different_budgets(tmp_path):
    files = []
    for n, steps in ((0, 300), (1, 200)):
        path = tmp_path / f"s{n}.json"
        path.write_text(json.dumps({"budget": {"pretrain_steps": steps}, "per_seed": [seed(n, 0.5, 0.6)],
                                    "wall_seconds": 1.0, "machine": {}}))
        files.append(path)
    args = SimpleNamespace(merge=files, output=tmp_path / "out.json", markdown=None, tasks_output=None)
    with pytest.raises(SystemExit, match="budgets differ"):
        merge(args)
