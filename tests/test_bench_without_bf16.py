"""`make bench` on a CPU without native bf16 (an AVX2-only machine): the matmul peak leaves bf16
out rather than timing PyTorch's emulation (minutes per figure), and the summary says what was
not measured instead of printing None or failing on it."""

import json

from benchmarks import summary
from benchmarks.matmul_peak import NOT_NATIVE, measure

MACHINE = {"cpu": "AMD EPYC", "cores": 2}


def test_peak_without_bf16_measures_fp32_only():
    peak = measure(threads=1, repeats=1, bf16=False)
    assert peak["fp32"]["gflops"] > 0
    assert peak["bf16"] == {"gflops": None, "skipped": NOT_NATIVE}


def test_summary_names_what_was_skipped(tmp_path):
    (tmp_path / "precision_parity.json").write_text(json.dumps(
        {"benchmark": "precision_parity", "machine": MACHINE, "skipped": "not measured: no native bf16"}))
    lever = {"median_seconds": 2.0, "median_cpu_seconds": 2.0, "share_of_1_thread_peak": 0.5}
    (tmp_path / "model_levers.json").write_text(json.dumps(
        {"images": 2, "repeats": 3, "machine": MACHINE, "skipped": "the bf16 levers",
         "vit_attention_fp32": {"eager": {**lever, "median_seconds": 3.0}, "fused": lever,
                                "speedup": 1.5, "speedup_cpu": 1.5}}))
    page = summary.main(["--results", str(tmp_path), "--output", str(tmp_path / "summary.md")]).read_text()
    assert "On AMD EPYC: not measured: no native bf16" in page
    assert "On AMD EPYC: the bf16 levers" in page
    assert "| vit_attention_fp32: eager -> fused | 3.00 | 2.00 | 1.50x |" in page
    assert "None" not in page


def test_peak_line_leaves_out_an_unmeasured_bf16():
    peak = {key: {"fp32": {"gflops": rate}, "bf16": {"gflops": None}}
            for key, rate in (("1_thread", 60.0), ("2_threads", 120.0))}
    line = summary._peaks(peak)
    assert line.startswith("1 thread 60.0 fp32; 2 threads 120.0 fp32")
    assert "bf16 not measured" in line
