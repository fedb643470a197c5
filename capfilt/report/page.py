"""The report as one static HTML page: no script, no external resource, every text escaped.

Captions are untrusted web text; every piece of text goes through `_e` (html.escape with quotes),
and the page's Content-Security-Policy allows nothing but inline styles and data: images, so that
even a missed escape could neither run a script nor fetch anything.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from capfilt.report import plots
from capfilt.report.data import Caption, Example, ReportData
from pipelines.bootstrap.schema import OK

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 0 16px 48px; color: #1f2328; }
h1 { font-size: 22px; margin: 20px 0 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 10px; border-bottom: 1px solid #eaeef2; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #59636e; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 14px; }
.example { margin: 0; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px; display: flex; gap: 10px; }
.example img { width: 128px; height: 128px; object-fit: contain; background: #f6f8fa; flex: none; image-rendering: auto; }
.example .noimage { width: 128px; height: 128px; flex: none; background: #f6f8fa; color: #59636e; display: flex;
  align-items: center; justify-content: center; text-align: center; font-size: 12px; }
.example figcaption { flex: 1; min-width: 0; }
.meta { font-size: 12px; color: #59636e; margin-bottom: 4px; overflow-wrap: anywhere; }
.captions { list-style: none; margin: 0; padding: 0; }
.caption { margin: 3px 0; padding: 2px 6px; border-radius: 4px; overflow-wrap: anywhere; }
.caption.kept { background: #dafbe1; color: #116329; }
.caption.dropped { background: #ffebe9; color: #a40e26; }
.caption .role { font-size: 11px; text-transform: uppercase; opacity: .8; }
.caption .score { float: right; font-variant-numeric: tabular-nums; margin-left: 6px; }
.caption .missing { font-style: italic; }
.plot { max-width: 100%; height: auto; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _caption(caption: Caption, role: str) -> str:
    state = "kept" if caption.kept else "dropped"
    mark = "✓" if caption.kept else "✗"  # colour is not the only sign
    if caption.text is None:
        text = '<span class="missing">(no caption)</span>'
    elif not caption.text.strip():
        text = '<span class="missing">(empty)</span>'
    else:
        text = f'<span class="text">{_e(caption.text)}</span>'
    return (f'<li class="caption {role} {state}" data-role="{role}" data-kept="{str(caption.kept).lower()}">'
            f'<span class="score" title="ITM probability">{_score(caption.itm)}</span>'
            f'{mark} <span class="role">{role}</span> {text}</li>')


def _example(ex: Example) -> str:
    if ex.image is not None:
        src = f"data:{ex.image_mime};base64," + base64.b64encode(ex.image).decode("ascii")
        picture = f'<img src="{src}" alt="image {_e(ex.key)}">'
    elif not ex.image_stored:
        # the tars hold the images of kept pairs only; --parquet-images keeps every image
        picture = '<div class="noimage">no image stored: nothing of this row was kept</div>'
    else:
        picture = '<div class="noimage">image cannot be decoded</div>'
    meta = _e(ex.key) + (f" · label: {_e(ex.noise)}" if ex.noise is not None else "")
    captions = _caption(ex.web, "web") + "".join(_caption(c, "synthetic") for c in ex.synthetic)
    return (f'<figure class="example" data-key="{_e(ex.key)}">{picture}<figcaption>'
            f'<div class="meta">{meta}</div><ul class="captions">{captions}</ul></figcaption></figure>')


def _section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{_e(title)}</h2>{body}</section>'


def _plot(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{_e(alt)}">'


def _summary(data: ReportData) -> str:
    ok = data.status.get(OK, 0)
    rows = [["rows", data.rows], ["rows ok (scored)", ok],
            ["web captions kept", f"{data.kept_web} of {ok}"],
            ["synthetic captions kept", f"{data.kept_synthetic} of {data.synthetic_total}"],
            ["ITM threshold", f"{data.threshold:.3g}"]]
    if data.labelled is not None:
        lab = data.labelled
        rows.append(["labelled scored web captions", f"{len(lab.keys)} ({int(lab.clean.sum())} clean)"])
    status = _table(["status", "rows", "share"],
                    [[s, n, f"{n / data.rows:.1%}" if data.rows else "–"] for s, n in data.status.items()])
    return _section("summary", "Summary", _table(["", ""], rows)) + _section("status", "Rows by status", status)


def _examples(data: ReportData) -> str:
    if not data.examples:
        why = "No row was downloaded and scored." if not data.status.get(OK) else "No examples asked for."
        return _section("examples", "Examples", f'<p class="note">{why}</p>')
    intro = ('<p class="note">Each image with its web caption and its synthetic captions; '
             '<span class="caption kept">✓ green: kept</span> '
             '<span class="caption dropped">✗ red: dropped</span> by the filter, with the ITM probability.</p>')
    cards = "".join(_example(ex) for ex in data.examples)
    return _section("examples", "Examples", intro + f'<div class="examples">{cards}</div>')


def _scores(data: ReportData) -> str:
    body = _plot(plots.score_histograms(data), "ITM score histograms")
    if data.labelled is None:
        body += '<p class="note">No labels given: clean and noisy web captions cannot be told apart.</p>'
    elif data.by_noise:
        body += _table(["label", "web captions", "mean ITM", f"kept at {data.threshold:.3g}"],
                       [[r["noise"], r["rows"], f"{r['mean_itm']:.3f}", f"{r['kept_share']:.1%}"]
                        for r in data.by_noise])
    return _section("histograms", "ITM scores", body)


def _sweep(data: ReportData) -> str:
    body = _plot(plots.threshold_sweep(data), "precision, recall and share kept against the threshold")
    if data.curve is not None:
        now = data.curve.at(data.threshold)
        rows = [["now", f"{data.threshold:.4g}", f"{now['precision']:.3f}", f"{now['recall']:.3f}", now["kept"]]]
        for target, point in data.calibrated.items():
            rows.append([f"precision ≥ {target:g}", *(["unreachable", "", "", ""] if point is None else
                         [f"{point['threshold']:.4g}", f"{point['precision']:.3f}", f"{point['recall']:.3f}",
                          point["kept"]])])
        body += _table(["threshold for", "threshold", "precision", "recall", "kept"], rows)
        body += '<p class="note">The smallest threshold that reaches each target; see <code>capfilt calibrate</code>.</p>'
    return _section("sweep", "Precision and recall against the threshold", body)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "–"
    return value if isinstance(value, str) else json.dumps(value)


def _rounds(data: ReportData) -> str:
    if data.rounds is None:
        return ""
    if not data.rounds:
        return _section("rounds", "Metrics across rounds", '<p class="note">The rounds file lists no round.</p>')
    names: dict[str, None] = {}
    for r in data.rounds:
        names.update(dict.fromkeys(r.metrics))
    table = _table(["metric", *[f"round {r.round}" for r in data.rounds]],
                   [[name, *[_value(r.metrics.get(name)) for r in data.rounds]] for name in names])
    uri = plots.rounds_plot(data.rounds)
    return _section("rounds", "Metrics across rounds", table + (_plot(uri, "metrics across rounds") if uri else ""))


def render(data: ReportData) -> str:
    """The whole page."""
    title = f"capfilt report: {data.name}"
    body = "".join([
        f"<h1>{_e(title)}</h1>",
        '<p class="note">BLIP CapFilt: the captioner writes synthetic captions, the filter keeps '
        "the captions whose ITM probability reaches the threshold.</p>",
        _summary(data), _examples(data), _scores(data), _sweep(data), _rounds(data),
    ])
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>\n")
