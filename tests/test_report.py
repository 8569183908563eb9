"""Reports: ``report.json`` holds every number the pages show, the HTML page is self-contained
(decodable PNGs inline, nothing from the network) with every promised table, the Markdown links
PNGs that exist, the verdict comes first in words; the leaderboard has one sortable row per run
and refuses what it cannot compare with one line.

One tiny evaluation (a 4-class CNN on 8×8 prototypes, a mini protocol with 4 steps) and a cheap
audit are shared by the module (a few seconds on one thread).
"""

from __future__ import annotations

import base64
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from _helpers import train_prototype_cnn
from matplotlib.figure import Figure
from typer.testing import CliRunner

from robustact.cli import app
from robustact.evaluate import evaluate
from robustact.evaluate.audit import run_audit
from robustact.report import Curve, evaluation_record, write_leaderboard, write_reports
from robustact.report.figures import figure_data_uri, robust_accuracy_figure
from robustact.report.intervals import interval_of, pct_ci

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.1
PNG = b"\x89PNG\r\n\x1a\n"
PROTOCOL = {"name": "mini", "version": 1, "entries": [
    {"key": "fgsm", "attack": {"name": "fgsm"}, "role": "single_step", "eps": "grid",
     "on": "all"},
    {"key": "pgd", "attack": {"name": "pgd", "steps": 4}, "role": "standard", "eps": "grid",
     "on": "all"},
    {"key": "square", "attack": {"name": "square", "n_queries": 40}, "role": "black_box",
     "eps": "main", "on": "survivors"},
    {"key": "deepfool", "attack": {"name": "deepfool", "steps": 4}, "role": "min_norm",
     "eps": "none", "on": "all"},
]}
NAME = "proto <cnn> & co"  # must come out escaped, never as markup


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model, x, y = train_prototype_cnn(0)
    out = tmp_path_factory.mktemp("run")
    table = evaluate(model, x, y, PROTOCOL, eps=EPS, out=str(out), progress=False,
                     meta={"dataset": "prototypes", "split": "test"})
    audit = run_audit(model, x, y, table, eps=EPS, random_points=20, random_samples=5,
                      binarization_samples=2, max_samples=8)
    kappa = Curve.from_pairs([(0.0, 0.98), (0.5, 0.96), (1.0, 0.9)], xlabel="κ",
                             label="validation accuracy", chosen=0.5, title="κ sweep")
    paths = write_reports(out, table, audit, info={"name": NAME, "description": "tiny"},
                          extra_curves={"kappa": kappa})
    return {"table": table, "audit": audit, "out": out, "paths": paths, "model": model,
            "x": x, "y": y}


class _Page(HTMLParser):
    """Tables by id (rows of cell texts and data-values), images, links, scripts, headings."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.values: list[str] = []
        self.images: list[str] = []
        self.refs: list[str] = []
        self.scripts: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        for k in ("src", "href"):
            if a.get(k):
                self.refs.append(a[k])
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
            if a.get("data-value"):
                self.values.append(a["data-value"])
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "script":
            self._script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "script":
            self._script = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._script:
            self.scripts[-1] += data
        self.text.append(data)


def _parse(path: Path) -> tuple[_Page, str]:
    html = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(html)
    return page, html


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in _numbers(x)]
    return []


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def test_html_has_every_table_and_image_and_is_self_contained(evaluated):
    rec = json.loads(evaluated["paths"]["json"].read_text())
    page, html = _parse(evaluated["paths"]["html"])
    for tid in ("summary", "worst-case", "robust", "min-norm", "audit", "cost", "protocol",
                "attacks", "environment"):
        assert tid in page.tables, f"table {tid} missing"
    assert "verdict" in page.ids
    # robust accuracy: one row per (ε, attack) and a worst-case row per ε
    rows = page.tables["robust"][1:]
    expected = [(c["eps"], a["attack"]) for c in rec["per_eps"] for a in c["attacks"]]
    got = [(float(r[0]), r[1]) for r in rows if len(r) == 9]
    assert got == expected and {a for _, a in got} == {"fgsm", "pgd", "square"}
    assert len(rec["per_eps"]) == len(evaluated["table"].meta["eps_grid"]) == 5
    worst = {float(r[0]): r[1] for r in page.tables["worst-case"][1:]}
    assert worst == {c["eps"]: pct_ci(c["worst_case"], c["worst_case_ci"])
                     for c in rec["per_eps"]}
    # the headline number is the worst case at ε, in both files, with its interval
    s = rec["summary"]
    assert page.tables["summary"][1][3] == pct_ci(s["robust_accuracy"], s["robust_accuracy_ci"])
    assert rec["summary"]["robust_accuracy"] == worst_at(rec, EPS)
    # audit: every check of the AuditReport, with its state and evidence
    audit_rows = page.tables["audit"][1:]
    assert [r[0] for r in audit_rows] == [c.id for c in evaluated["audit"].checks]
    for r, c in zip(audit_rows, evaluated["audit"].checks, strict=True):
        assert r[2] == ("n/a" if c.fired is None else ("FIRED" if c.fired else "pass"))
        assert r[4].startswith(c.evidence)
    # protocol and versions
    proto = dict(r for r in page.tables["protocol"] if len(r) == 2)
    assert proto["protocol"] == "mini@1" and proto["norm"] == "linf"
    env = dict(page.tables["environment"])
    assert env["environment.torch"] == rec["environment"]["torch"]
    assert env["environment.robustact"] == rec["environment"]["robustact"]
    assert [r[0] for r in page.tables["attacks"][1:]] == ["fgsm", "pgd", "square", "deepfool"]
    # images: robust accuracy, min-norm histograms, the κ curve; all inline, decodable PNGs
    assert len(page.images) == 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG)
    assert "fig-robust-accuracy" in page.ids and "fig-min-norm" in page.ids
    assert not [r for r in page.refs if not r.startswith(("data:", "#"))]
    assert "http://" not in html and "https://" not in html
    # autoescape: the model's name is text
    assert NAME not in html and "proto &lt;cnn&gt; &amp; co" in html


def worst_at(rec: dict[str, Any], eps: float) -> float:
    return next(c["worst_case"] for c in rec["per_eps"] if math.isclose(c["eps"], eps))


def test_json_holds_every_number_the_html_shows(evaluated):
    rec = json.loads(evaluated["paths"]["json"].read_text())
    page, _ = _parse(evaluated["paths"]["html"])
    numbers = _numbers(rec)
    assert len(page.values) > 50
    for v in page.values:
        assert any(math.isclose(float(v), n, rel_tol=1e-12, abs_tol=1e-15) for n in numbers), v
    # and the headline figures are the engine's own
    table = evaluated["table"]
    assert rec["summary"]["clean_accuracy"] == float(table.meta["clean"]["clean_correct"].mean())
    assert rec["audit"]["verdict"] == evaluated["audit"].verdict.label
    assert [c["id"] for c in rec["audit"]["checks"]] == [c.id for c in evaluated["audit"].checks]
    df = rec["min_norm"]["deepfool"]
    assert df["broken"] == len(df["norms"]) > 0
    assert math.isclose(df["median_norm"], sorted(df["norms"])[len(df["norms"]) // 2],
                        rel_tol=0.2)
    # strict JSON: no NaN / Infinity tokens
    json.loads(evaluated["paths"]["json"].read_text(), parse_constant=_no_constants)
    assert rec["protocol"]["attacks"]["pgd"]["steps"] == 4
    assert rec["info"]["dataset"] == "prototypes" and rec["info"]["name"] == NAME
    assert rec["extra_curves"]["kappa"]["chosen"] == 0.5


def _no_constants(name: str) -> None:
    raise AssertionError(f"report.json holds the non-standard constant {name}")


def test_verdict_comes_first_in_words_and_never_says_robust(evaluated, tmp_path):
    audit = evaluated["audit"]
    page, _ = _parse(evaluated["paths"]["html"])
    text = " ".join(t.strip() for t in page.text if t.strip())
    first_heading = text.split("Verdict: ", 1)[1]
    assert first_heading.startswith(audit.verdict.label)
    for sentence in audit.verdict.evidence:
        assert sentence in text
    md = evaluated["paths"]["markdown"].read_text()
    assert md.splitlines()[2].startswith(f"**Verdict: {audit.verdict.label}.**")
    # without an audit: "not audited", never "robust"
    paths = write_reports(tmp_path, evaluated["table"])
    rec = json.loads(paths["json"].read_text())
    assert rec["verdict"]["label"] == "not audited" and rec["audit"] is None
    assert "Verdict: not audited" in paths["html"].read_text()
    for label in (rec["verdict"]["label"], audit.verdict.label):
        assert label != "robust"


def test_markdown_links_existing_pngs(evaluated):
    md = evaluated["paths"]["markdown"]
    text = md.read_text()
    links = [part.split(")", 1)[0] for part in text.split("](")[1:]]
    assert {"robust_accuracy.png", "min_norm.png", "curve_kappa.png"} <= set(links)
    for name in links:
        assert (md.parent / name).read_bytes().startswith(PNG)
    assert "| 0.1 | **worst case** |" in text


def test_figures_use_the_object_api_and_encode(evaluated):
    rec = evaluation_record(evaluated["table"])
    fig = robust_accuracy_figure(rec)
    assert isinstance(fig, Figure)
    lines = {ln.get_label() for ln in fig.axes[0].get_lines()}
    assert {"fgsm", "pgd", "worst case (per sample)"} <= lines
    assert base64.b64decode(figure_data_uri(fig).split(",", 1)[1]).startswith(PNG)
    with pytest.raises(ValueError, match="series 'a' has 1 values for 2 x values"):
        Curve(x=[1, 2], series={"a": [0.5]}, xlabel="T")


def test_empty_table_is_refused_in_one_line(evaluated, tmp_path):
    empty = evaluated["table"].where(evaluated["table"]["sample"] < 0)
    with pytest.raises(ValueError, match="empty"):
        write_reports(tmp_path, empty)


@pytest.fixture(scope="module")
def two_runs(evaluated, tmp_path_factory) -> list[Path]:
    """The module's run and a second model on the same data (same protocol, ε, norm)."""
    other, _, _ = train_prototype_cnn(1)
    out = tmp_path_factory.mktemp("run2")
    table = evaluate(other.eval(), evaluated["x"], evaluated["y"], PROTOCOL, eps=EPS,
                     out=str(out), progress=False)
    write_reports(out, table, info={"name": "second"})
    return [evaluated["out"], out]


def test_leaderboard_one_sortable_row_per_run(two_runs, tmp_path):
    path = write_leaderboard(tmp_path / "lb.html", two_runs)
    page, html = _parse(path)
    rows = page.tables["leaderboard"][1:]
    assert len(rows) == 2
    recs = [json.loads((r / "report.json").read_text()) for r in two_runs]
    by_name = {r[1].split("/")[0].strip(): r for r in rows}
    for rec in recs:
        row = next(r for name, r in by_name.items() if name.startswith(rec["info"]["name"]))
        s = rec["summary"]
        assert row[2] == pct_ci(s["clean_accuracy"], s["clean_accuracy_ci"])
        assert row[3] == pct_ci(s["robust_accuracy"], s["robust_accuracy_ci"])
        assert row[4] == rec["verdict"]["label"]
        assert row[5] == "mini@1"
    robust = [r["summary"]["robust_accuracy"] for r in recs]
    assert rows[0][3].startswith(_pct(max(robust)) + " [")  # best first
    assert len(page.scripts) == 1 and "addEventListener(\"click\"" in page.scripts[0]
    assert "sort(" in page.scripts[0]
    assert "http://" not in html and "https://" not in html
    links = [r for r in page.refs if r.endswith("report.html")]
    assert len(links) == 2 and all((path.parent / ln).is_file() for ln in links)


def test_leaderboard_refuses_bad_run_dirs_and_mixed_runs(two_runs, evaluated, tmp_path):
    with pytest.raises(ValueError, match=r"has no report.json") as e:
        write_leaderboard(tmp_path / "lb.html", [two_runs[0], tmp_path])
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "report.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a robustact evaluation report"):
        write_leaderboard(tmp_path / "lb.html", [bad])
    # a run at another ε is not comparable: refused, or marked with allow_mixed
    other = tmp_path / "eps"
    t = evaluate(evaluated["model"], evaluated["x"], evaluated["y"], PROTOCOL, eps=0.05,
                 out=str(other), progress=False)
    write_reports(other, t)
    with pytest.raises(ValueError, match=r"not comparable: ε is 0.1 .* but 0.05"):
        write_leaderboard(tmp_path / "lb.html", [two_runs[0], other])
    path = write_leaderboard(tmp_path / "lb.html", [two_runs[0], other], allow_mixed=True)
    page, html = _parse(path)
    assert "mixed-warning" in page.ids and 'class="n mixed"' in html
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic


def test_cli_leaderboard(two_runs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "board.html"
    res = runner.invoke(app, ["leaderboard", *map(str, two_runs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output and out.is_file()
    res = runner.invoke(app, ["leaderboard", str(two_runs[0]), str(tmp_path / "nothing")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0]


# -- 95 % intervals and readable plots (issue 20, items 7 and 9) --------------------------------

def _proportions(obj: Any, path: str = "") -> list[tuple[str, float, Any]]:
    """(where, value, its ``_ci`` sibling) for every accuracy and success rate in a record."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, float) and ("accuracy" in k or k in ("success_rate", "worst_case")):
                found.append((f"{path}.{k}", v, obj.get(f"{k}_ci", "missing")))
            elif isinstance(v, (dict, list)) and k not in ("audit", "extra_curves", "curves"):
                found += _proportions(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _proportions(v, f"{path}[{i}]")
    return found


def test_every_accuracy_has_an_interval_that_contains_it(evaluated):
    rec = json.loads(evaluated["paths"]["json"].read_text())
    summary = json.loads(evaluated["paths"]["summary"].read_text())
    for doc, least in ((rec, 40), (summary, 10)):
        found = _proportions(doc)
        assert len(found) >= least
        for where, v, ci in found:
            assert isinstance(ci, list) and 0 <= ci[0] <= v <= ci[1] <= 1, (where, v, ci)
    assert {k for k in ("clean_accuracy_ci", "robust_accuracy_ci") if k in summary} == {
        "clean_accuracy_ci", "robust_accuracy_ci"}
    for e, ci in summary["worst_case_ci"].items():
        assert ci[0] <= summary["worst_case"][e] <= ci[1]
    # the plotted curves carry a band per point, the audit's sample counts theirs
    wc = rec["curves"]["worst_case"]
    assert all(lo <= v <= hi for v, (lo, hi) in zip(wc["robust_accuracy"], wc["ci"], strict=True))
    gaps = [iv for c in rec["audit"]["checks"] for iv in c["intervals"].values()]
    assert gaps and all(iv["ci"][0] <= iv["k"] / iv["n"] <= iv["ci"][1] for iv in gaps)


def test_markdown_and_html_show_the_intervals(evaluated):
    rec = json.loads(evaluated["paths"]["json"].read_text())
    md = evaluated["paths"]["markdown"].read_text()
    page, html = _parse(evaluated["paths"]["html"])
    s = rec["summary"]
    robust = pct_ci(s["robust_accuracy"], s["robust_accuracy_ci"])
    assert robust.endswith("]") and robust in md and robust in html
    for c in rec["per_eps"]:
        for a in c["attacks"]:
            text = pct_ci(a["success_rate"], a["success_rate_ci"])
            assert text in md
            row = next(r for r in page.tables["robust"][1:]
                       if len(r) == 9 and float(r[0]) == c["eps"] and r[1] == a["attack"])
            assert row[6] == text
    df = rec["min_norm"]["deepfool"]
    assert page.tables["min-norm"][1][3] == pct_ci(df["success_rate"], df["success_rate_ci"])


def _drawn(fig: Figure) -> None:
    fig.draw_without_rendering()  # runs the layout, as saving does


def test_plot_legend_outside_axes_and_main_eps_attacks_as_markers(evaluated):
    rec = json.loads(evaluated["paths"]["json"].read_text())
    fig = robust_accuracy_figure(rec)
    _drawn(fig)
    ax = fig.axes[0]
    legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= box.x1 and legend.x1 <= fig.bbox.x1 + 1  # beside, never over a curve
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    square = next(ln for label, ln in lines.items() if label.startswith("square"))
    assert square.get_linestyle() == "None" and square.get_marker() not in (None, "None", "")
    assert len(square.get_xdata()) == 1
    for name in ("fgsm", "pgd", "worst case (per sample)"):
        assert lines[name].get_linestyle() == "-" and len(lines[name].get_xdata()) == 5
    # a band (fill_between) for fgsm, pgd and the worst case; an error bar for square
    assert len(ax.collections) >= 4


def test_leaderboard_of_40_runs_scrolls_with_a_sticky_header(evaluated, tmp_path):
    rec = json.loads(evaluated["paths"]["json"].read_text())
    runs = []
    for i in range(40):
        r = json.loads(json.dumps(rec))
        r["info"]["name"] = f"model-{i:02d}-" + "wide_resnet_28_10_jumprelu_kappa_0.5_" * 3
        r["summary"]["robust_accuracy"] = i / 48
        r["summary"]["robust_accuracy_ci"] = interval_of(i / 48, r["summary"]["n"])
        if i % 2:  # an older report.json without intervals: the page computes them
            del r["summary"]["robust_accuracy_ci"], r["summary"]["clean_accuracy_ci"]
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "report.json").write_text(json.dumps(r))
        runs.append(tmp_path / f"r{i}")
    path = write_leaderboard(tmp_path / "lb.html", runs)
    page, html = _parse(path)
    rows = page.tables["leaderboard"][1:]
    assert len(rows) == 40 and rows[0][1].startswith("model-39-") and rows[-1][1].startswith(
        "model-00-")
    n = rec["summary"]["n"]
    for r, i in zip(rows, range(39, -1, -1), strict=True):
        assert r[3] == pct_ci(i / 48, interval_of(i / 48, n))
    assert '<div class="table-scroll">' in html and "position: sticky" in html
    assert "overflow-wrap: anywhere" in html


@pytest.mark.parametrize("protocol, screened", [("standard@3", True), ("standard@2", False)])
def test_the_report_says_when_the_curve_below_eps_is_a_screen(tmp_path: Path, protocol: str,
                                                               screened: bool) -> None:
    """standard@3 screens the ε below the main one with a 10-step APGD-CE: the page says those
    points are upper bounds, naming the screen; a protocol without a screen says nothing."""
    model, x, y = train_prototype_cnn(0)
    t = evaluate(model, x[:12], y[:12], protocol, eps=0.1, progress=False,
                 overrides={"steps": 2, "n_queries": 10})
    write_reports(tmp_path, t)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert ('id="screen-note"' in html) is screened
    if screened:
        assert "apgd-ce-10" in html.split('id="screen-note"')[1].split("</p>")[0]
