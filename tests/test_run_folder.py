"""pipelines/run_folder.py, the one check that keeps two runs out of one output folder (the
bootstrap's and the rounds loop's), on a real local folder."""

import json

import pytest

from pipelines.bootstrap.settings import OPERATIONAL as BOOTSTRAP_OPERATIONAL
from pipelines.bootstrap.storage import Storage
from pipelines.rounds.settings import MAY_CHANGE_ON_RESUME, RoundsSettings
from pipelines.run_folder import changed_keys, check_run_folder

RUN = "_work/run.json"


class Refused(RuntimeError):
    pass


def check(folder, run, resume=True, may_change=()):
    check_run_folder(Storage(str(folder)), RUN, run, resume=resume, job="test", error=Refused,
                     not_empty="pass --resume", may_change=may_change)


def test_a_folder_holds_one_run(tmp_path):
    first = {"input": "abc", "settings": {"top_p": 0.9, "section": {"lr": 1e-4}}}
    check(tmp_path / "new", first, resume=False)  # missing or empty: any run may start
    (tmp_path / "junk").write_text("x")
    with pytest.raises(Refused, match=f"output {tmp_path} is not empty: pass --resume"):
        check(tmp_path, first, resume=False)
    with pytest.raises(Refused, match=r"holds no test run to resume \(_work/run.json is missing\)"):
        check(tmp_path, first)
    (tmp_path / "_work").mkdir()
    (tmp_path / RUN).write_text(json.dumps(first))
    check(tmp_path, first)  # the same run: resumed
    with pytest.raises(Refused, match=r"input changed since the first run: \['input'\]"):
        check(tmp_path, {**first, "input": "abd"})
    later = {**first, "settings": {"top_p": 0.8, "section": {"lr": 1e-3}}}
    with pytest.raises(Refused, match=r"differ from the first run: \['section.lr', 'top_p'\]"):
        check(tmp_path, later)
    check(tmp_path, later, may_change={"top_p", "section.lr"})


def test_rounds_resume_may_change_what_bootstrap_resume_may_change(tmp_path):
    """The two copies disagreed: `capfilt bootstrap --resume` let the batch size change, the rounds
    loop refused the same knob in its bootstrap section. Now both allow it, and neither a top_p."""
    base = dict(web="w.parquet", human=["h.parquet"], eval=["e.parquet"], output=tmp_path / "out")
    first = RoundsSettings(**base).result_settings()
    faster = RoundsSettings(**base, bootstrap={"batch_size": 4, "captioner_actors": 2}).result_settings()
    other = RoundsSettings(**base, bootstrap={"top_p": 0.5}).result_settings()
    assert changed_keys(first, faster) == ["bootstrap.batch_size", "bootstrap.captioner_actors"]
    assert {"batch_size", "captioner_actors"} <= BOOTSTRAP_OPERATIONAL
    (tmp_path / "_work").mkdir()
    (tmp_path / RUN).write_text(json.dumps({"settings": first}))
    check(tmp_path, {"settings": faster}, may_change=MAY_CHANGE_ON_RESUME)
    with pytest.raises(Refused, match=r"\['bootstrap.top_p'\]"):
        check(tmp_path, {"settings": other}, may_change=MAY_CHANGE_ON_RESUME)
