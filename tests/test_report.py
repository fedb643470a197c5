"""`capfilt report`: the page's sections, every example's captions with the right kept/dropped
class and score, escaping of untrusted captions, no external resource, and the page without
labels or rounds. The page is parsed, not searched as text. (The browser test is apart.)"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from capfilt.cli import main
from capfilt.report import ReportSettings, gather, write_report
from test_calibrate import bootstrap_row, jpeg, write_bootstrap_dir, write_labels

HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
VOID = {"img", "meta", "link", "br", "hr", "input"}


# ------------------------------------------------------------ a small DOM of the page

@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list["Node"] = field(default_factory=list)
    text: str = ""  # own text, in order, without the children's

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list["Node"]:
        found = []
        for c in self.children:
            if (tag is None or c.tag == tag) and (cls is None or cls in c.classes):
                found.append(c)
            found += c.find_all(tag, cls)
        return found


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].text += data


def parse(page: str) -> Node:
    builder = _Builder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed tags"
    return builder.root


def examples_by_key(doc: Node) -> dict[str, Node]:
    return {f.attrs["data-key"]: f for f in doc.find_all("figure", "example")}


def caption_items(figure: Node) -> list[tuple[str, str, str, str]]:
    """(role, kept|dropped, text, score) of each caption of an example, in order."""
    items = []
    for li in figure.find_all("li", "caption"):
        state = ({"kept", "dropped"} & li.classes).pop()
        text = li.find_all("span", "text")
        missing = li.find_all("span", "missing")
        items.append((li.attrs["data-role"], state, text[0].all_text() if text else missing[0].all_text(),
                      li.find_all("span", "score")[0].all_text()))
    return items


# ------------------------------------------------------------ fixtures

NOISE = {"w000": "correct", "w001": "junk", "w002": "empty", "w003": "junk", "w004": "correct", "w005": "correct",
         "w006": "correct", "w007": "other_image"}
PALETTE = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (150, 60, 200), (20, 20, 20)]


@pytest.fixture()
def boot(tmp_path):
    """A bootstrap output folder with every status, hostile and empty captions, and labels."""
    rows = [
        bootstrap_row("w000", web="a red circle on the left", itm=0.91, image=jpeg(PALETTE[0]),
                      synthetic=[("a picture of a red circle", 0.88), ("a picture of a blue star", 0.12)]),
        bootstrap_row("w001", web=HOSTILE, itm=0.07, image=jpeg(PALETTE[1], (64, 40)),
                      synthetic=[('a "green" square & <b>friends</b>', 0.72)]),
        bootstrap_row("w002", web="", itm=0.31, image=jpeg(PALETTE[2]), synthetic=[("two blue triangles", 0.66)]),
        bootstrap_row("w003", web="IMG_0042.jpg", itm=0.44, image=jpeg(PALETTE[3]),
                      synthetic=[("a yellow square", 0.35), ("a small yellow square", 0.61), ("a shape", 0.5)]),
        bootstrap_row("w004", web="a purple star above a black circle", itm=0.77, image=jpeg(PALETTE[4])),
        bootstrap_row("w005", web=None, itm=None, image=jpeg(PALETTE[5]), synthetic=[("a black circle", 0.93)]),
        bootstrap_row("w006", status="download_error"),
        bootstrap_row("w007", status="decode_error"),
        bootstrap_row("w008", status="too_large"),
        bootstrap_row("w009", status="blocked_url"),
        bootstrap_row("w010", status="bad_row", web=None),
    ]
    out = write_bootstrap_dir(tmp_path / "boot", rows)
    labels = write_labels(tmp_path / "labels.parquet", NOISE)
    rounds = tmp_path / "rounds.json"
    rounds.write_text(json.dumps({"rounds": [
        {"round": 0, "metrics": {"tr@1": 0.21, "ir@1": 0.18, "cider": 0.4, "note<b>": "base"}},
        {"round": 1, "metrics": {"tr@1": 0.27, "ir@1": 0.22, "cider": 0.55, "note<b>": "<i>after</i>"},
         "inputs": {"web": "ignored extra key"}},
    ]}))
    return out, labels, rounds, {r["key"]: r for r in rows}


def render(out: Path, tmp_path: Path, *args: str) -> tuple[str, Node]:
    page_path = tmp_path / "page.html"
    assert main(["report", str(out), "--output", str(page_path), *args]) == 0
    page = page_path.read_text()
    return page, parse(page)


# ------------------------------------------------------------ tests

def test_full_report_sections_and_examples(boot, tmp_path, capsys):
    out, labels, rounds, rows = boot
    page, doc = render(out, tmp_path, "--labels", str(labels), "--rounds", str(rounds))
    assert capsys.readouterr().out.strip().endswith("page.html")
    sections = [s.attrs["id"] for s in doc.find_all("section")]
    assert sections == ["summary", "status", "examples", "histograms", "sweep", "rounds"]

    examples = examples_by_key(doc)
    assert sorted(examples) == ["w000", "w001", "w002", "w003", "w004", "w005"]  # every ok row (12 asked)
    for key, figure in examples.items():
        row = rows[key]
        expected = [("web", "kept" if row["web_kept"] else "dropped",
                     {None: "(no caption)", "": "(empty)"}.get(row["web_caption"], row["web_caption"]),
                     "–" if row["web_itm"] is None else f"{row['web_itm']:.3f}")]
        expected += [("synthetic", "kept" if k else "dropped", c, f"{s:.3f}")
                     for c, s, k in zip(row["synthetic_captions"], row["synthetic_itm"], row["synthetic_kept"])]
        assert caption_items(figure) == expected, key
        (img,) = figure.find_all("img")
        assert img.attrs["src"].startswith("data:image/jpeg;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(img.attrs["src"].split(",", 1)[1])))
        assert decoded.size == Image.open(io.BytesIO(row["image"])).size
        assert figure.find_all("div", "meta")[0].all_text() == f"{key} · label: {NOISE[key]}"

    # kept and dropped both shown, in their colours' classes
    states = {s for f in examples.values() for _, s, _, _ in caption_items(f)}
    assert states == {"kept", "dropped"}
    style = doc.find_all("style")[0].all_text()
    assert ".caption.kept { background: #dafbe1" in style and ".caption.dropped { background: #ffebe9" in style

    status = {tr.children[0].all_text(): tr.children[1].all_text()
              for tr in doc.find_all("section")[1].find_all("tr")[1:]}
    assert status == {"bad_row": "1", "blocked_url": "1", "decode_error": "1", "download_error": "1",
                      "ok": "6", "too_large": "1"}
    hist = [s for s in doc.find_all("section") if s.attrs["id"] == "histograms"][0]
    assert [tr.children[0].all_text() for tr in hist.find_all("tr")[1:]] == ["correct", "empty", "junk"]
    rounds_section = [s for s in doc.find_all("section") if s.attrs["id"] == "rounds"][0]
    table = [[td.all_text() for td in tr.children] for tr in rounds_section.find_all("tr")]
    assert table[0] == ["metric", "round 0", "round 1"]
    assert table[1:] == [["tr@1", "0.21", "0.27"], ["ir@1", "0.18", "0.22"], ["cider", "0.4", "0.55"],
                         ["note<b>", "base", "<i>after</i>"]]
    assert len(rounds_section.find_all("img", "plot")) == 1


def test_untrusted_text_is_text(boot, tmp_path):
    out, labels, rounds, _ = boot
    page, doc = render(out, tmp_path, "--labels", str(labels), "--rounds", str(rounds))
    assert doc.find_all("script") == [] and "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;" in page
    hostile = caption_items(examples_by_key(doc)["w001"])
    assert hostile[0][2] == HOSTILE and hostile[1][2] == 'a "green" square & <b>friends</b>'
    assert "<b>friends" not in page and "<i>after" not in page and "onerror=" not in page.replace("onerror=alert(1)&gt;", "")
    assert not [n for n in doc.find_all() if any(k.startswith("on") for k in n.attrs)]


def test_self_contained(boot, tmp_path):
    out, labels, rounds, _ = boot
    page, doc = render(out, tmp_path, "--labels", str(labels), "--rounds", str(rounds))
    for node in doc.find_all():
        for attr in ("src", "href", "srcset", "action", "data"):
            if attr in node.attrs:
                assert node.attrs[attr].startswith("data:"), (node.tag, attr, node.attrs[attr][:60])
    assert "url(" not in doc.find_all("style")[0].all_text()
    (csp,) = [m for m in doc.find_all("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp.attrs["content"].startswith("default-src 'none'")
    plots = doc.find_all("img", "plot")
    assert len(plots) == 3 and all(p.attrs["src"].startswith("data:image/png;base64,") for p in plots)
    for p in plots:
        assert Image.open(io.BytesIO(base64.b64decode(p.attrs["src"].split(",", 1)[1]))).format == "PNG"


def test_without_labels_or_rounds(boot, tmp_path):
    out, _, _, rows = boot
    page, doc = render(out, tmp_path, "--examples", "3")
    assert [s.attrs["id"] for s in doc.find_all("section")] == ["summary", "status", "examples", "histograms", "sweep"]
    assert "No labels given" in page and "label:" not in page
    examples = examples_by_key(doc)
    assert len(examples) == 3
    # without labels the picks alternate between dropped and kept web captions
    assert {rows[k]["web_kept"] for k in examples} == {True, False}
    assert len(doc.find_all("img", "plot")) == 2


def test_rounds_json_in_dir_is_found(boot, tmp_path):
    out, _, rounds, _ = boot
    (out / "rounds.json").write_text(rounds.read_text())
    path = write_report(ReportSettings(dir=out))
    assert path == out / "report.html"
    doc = parse(path.read_text())
    assert "rounds" in [s.attrs["id"] for s in doc.find_all("section")]


def test_examples_cover_every_label_and_zero_examples(boot, tmp_path):
    out, labels, _, _ = boot
    data = gather(out, labels, examples=3)
    assert {e.noise for e in data.examples} == {"correct", "empty", "junk"}
    page, doc = render(out, tmp_path, "--examples", "0")
    assert examples_by_key(doc) == {} and "No examples asked for" in page


def test_undecodable_image_is_said_not_broken(tmp_path):
    out = write_bootstrap_dir(tmp_path / "boot", [bootstrap_row("a", image=b"\xff\xd8 not a jpeg"),
                                                  bootstrap_row("b", image=jpeg((1, 2, 3), (900, 300)))], shards=1)
    _, doc = render(out, tmp_path)
    a, b = examples_by_key(doc)["a"], examples_by_key(doc)["b"]
    assert a.find_all("img") == [] and "cannot be decoded" in a.all_text()
    (img,) = b.find_all("img")
    # a row whose image the output does not hold (nothing kept, no --parquet-images) says that
    from capfilt.report.page import _example

    stored = next(e for e in gather(out, None, examples=10).examples if e.key == "b")
    missing = replace(stored, image=None, image_mime="", image_stored=False)
    assert "no image stored" in _example(missing) and "cannot be decoded" not in _example(missing)
    assert Image.open(io.BytesIO(base64.b64decode(img.attrs["src"].split(",", 1)[1]))).size == (256, 85)


def test_no_ok_rows(tmp_path):
    out = write_bootstrap_dir(tmp_path / "boot", [bootstrap_row("a", status="download_error")], shards=1)
    page, doc = render(out, tmp_path)
    assert "No row was downloaded" in page and len(doc.find_all("img", "plot")) == 2


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read rounds"),
    ('{"rounds": [{"metrics": {}}]}', "not a rounds file (rounds.0.round: Field required)"),
    ('[1, 2]', "not a rounds file"),
])
def test_bad_rounds_file(boot, tmp_path, capsys, content, message):
    out, _, _, _ = boot
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["report", str(out), "--rounds", str(bad)]) == 1
    assert message in capsys.readouterr().err


def test_bad_dir_and_settings(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--examples", "-1"]) == 2
    assert "examples" in capsys.readouterr().err
