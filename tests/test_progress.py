"""The progress line every long job prints (pipelines/progress.py), on a clock the test moves."""

from __future__ import annotations

import io
import re

from pipelines.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_has_done_total_rate_and_eta():
    clock = Clock()
    p = Progress("bootstrap", 1000, "rows", log=lambda line: None, clock=clock, suffix=lambda: "shards committed 1/4")
    p.update(250)
    clock.now += 10
    line = p.line()
    assert line.startswith("bootstrap: rows 250/1000 (25.0%), 25.00 rows/s, ETA 0m30s, elapsed 0m10s")
    assert line.endswith(", shards committed 1/4")


def test_slow_units_read_as_seconds_each_and_a_resumed_job_counts_its_own_rate():
    clock = Clock()
    p = Progress("train caption", 100, "steps", log=lambda line: None, clock=clock, done=40)
    p.update(2)
    clock.now += 40
    assert re.match(r"train caption: steps 42/100 \(42\.0%\), 20\.0 s/step, ETA 19m20s", p.line())


def test_not_a_terminal_gets_a_plain_line_every_period_and_no_carriage_return():
    clock, out = Clock(), io.StringIO()
    p = Progress("warm-up", 10, "steps", every=5.0, stream=out, clock=clock)
    for _ in range(10):
        clock.now += 1
        p.update(1)
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [re.match(r"warm-up: steps (\d+)/10", line).group(1) for line in lines] == ["5", "10"]


def test_a_terminal_gets_one_line_rewritten_in_place():
    clock, out = Clock(), Terminal()
    p = Progress("warm-up", 4, "steps", stream=out, clock=clock)
    for _ in range(4):
        clock.now += 1
        p.update(1)
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.count("\n") == 1 and text.endswith("steps 4/4 (100.0%), 1.00 steps/s, "
                                                                              "ETA 0m00s, elapsed 0m04s\x1b[K\n")


def test_a_given_log_receives_lines_even_on_a_terminal():
    clock, lines = Clock(), []
    p = Progress("rounds", 3, "stages", log=lines.append, stream=Terminal(), clock=clock)
    clock.now += 60
    p.update(1, force=True)
    assert lines == ["rounds: stages 1/3 (33.3%), 60.0 s/stage, ETA 2m00s, elapsed 1m00s"]
