"""Reports: the seed scenario audited and reported, the page parsed and rendered, the gate.

One module-scoped audit of the seed scenario (dining_table vs gondola, 1,100
real Tiny ImageNet images, 10% of the training labels flipped) feeds every
library test here (marked slow: it needs ../shared/data); the command-line
tests audit the small 3-class dataset from fixtures/.
"""

import base64
import hashlib
import io
import json
import os
import re
import time
from html.parser import HTMLParser

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

import noise_audit as na
from noise_audit.reports.sections import SIGNALS
from noise_audit.reports.summary import FILES
from noise_audit.reports.html import SECTIONS

from conftest import TINY, requires_shared, unique_name
from test_cli import cli

CHROMIUM = "/usr/bin/chromium"
ON_CI = os.environ.get("CI", "").lower() == "true"


class PageParser(HTMLParser):
    """Collects what the checks need: sections, images, links, captions."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.links, self.cards, self.captions = [], [], [], 0, 0
        self._in_caption_label = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.images.append(a.get("src"))
        if tag in ("a", "link", "script", "iframe", "source"):
            self.links.append(a.get("href") or a.get("src"))
        if tag == "figure" and "card" in a.get("class", ""):
            self.cards += 1
        if tag == "span" and a.get("class") == "lab":
            self.captions += 1


def _fields_digest(ds, key):
    """What the report must not change: the schema and the audit's values."""
    ds.reload()
    values = ds.values(["id", *na.audit_fields(key).values(), "label_flipped", "ground_truth_noisy.label"])
    return sorted(ds.get_field_schema()), hashlib.sha1(repr(values).encode()).hexdigest()


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """The seed scenario, audited once, and its report (with truth)."""
    ds = na.load_image_folder(TINY, name=unique_name("na-report"), classes=["dining_table", "gondola"])
    na.inject_label_noise(ds.match_tags("train"), "ground_truth", fraction=0.1, seed=0)
    results = na.audit(ds, "ground_truth_noisy", progress=False)
    before = _fields_digest(ds, "noise_audit")
    out = tmp_path_factory.mktemp("seed-report")
    t0 = time.perf_counter()
    summary = na.report(ds, "noise_audit", out, truth_field="label_flipped", progress=False)
    seconds = time.perf_counter() - t0
    print(f"\nseed report written in {seconds:.1f} s (audit {results.timings['total']:.1f} s): {out / 'report.html'}")
    yield {"ds": ds, "results": results, "out": out, "summary": summary, "seconds": seconds, "before": before}
    ds.delete()


@pytest.mark.slow
@requires_shared
def test_report_files_and_every_section(seed):
    out, summary = seed["out"], seed["summary"]
    assert sorted(os.listdir(out)) == sorted(FILES.values())
    page = (out / "report.html").read_text()
    assert (out / "report.html").stat().st_size < 5e6
    parser = PageParser()
    parser.feed(page)
    assert parser.sections == [sid for sid, _ in SECTIONS]
    # every image is embedded (or a file beside the page) and decodes
    assert len(parser.images) > 60
    for src in parser.images:
        if src.startswith("data:"):
            head, data = src.split(",", 1)
            assert re.fullmatch(r"data:image/(png|jpeg);base64", head)
            Image.open(io.BytesIO(base64.b64decode(data))).verify()
        else:
            assert (out / src).is_file(), src
    # nothing from the network: only in-page anchors, no scripts
    assert all(link is None or link.startswith(("#", "data:")) for link in parser.links)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # every image card has its given label under it
    assert parser.cards == parser.captions > 60
    # the sections hold what the issue asks for
    s = summary
    assert set(s["data"]["class_counts"]) == {"dining_table", "gondola"}
    assert sum(c["total"] for c in s["data"]["class_counts"].values()) == 1100
    assert all(len(v) == 8 for v in s["data"]["examples"].values())
    assert len(s["model"]["history"]["train_loss"]) and len(s["model"]["history"]["val_loss"])
    assert np.array(s["model"]["test_confusion"]).sum() == 100
    for c in ("dining_table", "gondola"):
        low, high = s["influence"][c]["lowest"], s["influence"][c]["highest"]
        assert len(low) == len(high) == 4
        assert max(e["average_influence"] for e in low) < min(e["average_influence"] for e in high)
        assert all(e["label"] == c and e["split"] == "train" for e in low + high)
    assert len(s["explanations"]) == 3
    assert all(len(x["most"]) == len(x["least"]) == 3 and x["target"]["split"] == "held-out" for x in s["explanations"])
    top = [e["corruption_score"] for e in s["suspects"]["top"]]
    assert len(top) == 24 and top == sorted(top, reverse=True)
    assert sum(s["suspects"]["label_issues_per_class"].values()) == s["suspects"]["num_label_issues"]
    assert set(s["run"]["audit_timings"]) >= {"features", "influence", "total"}
    assert set(s["run"]["report_timings"]) >= {"read", "figures", "explanations"}
    md = (out / "summary.md").read_text()
    assert "## Detection quality against the truth" in md and "| corruption_score |" in md


@pytest.mark.slow
@requires_shared
def test_summary_numbers_are_the_audits_and_evaluates(seed):
    ds, results = seed["ds"], seed["results"]
    s = json.loads((seed["out"] / "summary.json").read_text())
    assert s["overview"]["n_samples"] == 1100
    assert s["overview"]["num_label_issues"] == results.num_label_issues
    assert s["overview"]["label_error_rate"] == results.num_label_issues / 1100
    fields = na.audit_fields("noise_audit")
    for name, suffix in SIGNALS.items():
        expected = na.evaluate(ds, fields[suffix], "label_flipped", label_field="ground_truth_noisy", cleaning=False)
        assert s["truth"]["metrics"][name] == expected
        plain = na.evaluate(ds, fields[suffix], "label_flipped")
        cleaning = plain.pop("cleaning", None)  # the report shows it once, in the Truth section
        assert {k: s["truth"]["metrics"][name][k] for k in plain} == plain
        if name == "corruption_score":
            assert cleaning == s["truth"]["cleaning"] and cleaning["suspects"] >= cleaning["random"]
            assert s["truth"]["calibration"] == plain["calibration"]
    assert s["truth"]["n_flipped"] == 100
    # the page prints those numbers (rounded) from the same summary
    page = (seed["out"] / "report.html").read_text()
    m = s["truth"]["metrics"]["corruption_score"]
    assert f"{m['auroc']:.3f}" in page and f"{m['average_precision']:.3f}" in page
    assert f"{results.num_label_issues}" in page
    # quality of the real pipeline, not a constant
    assert m["auroc"] > 0.95 and s["truth"]["n_flagged_and_flipped"] >= 0.8 * s["truth"]["n_flagged"]


@pytest.mark.slow
@requires_shared
def test_report_only_reads_the_dataset_and_is_fast(seed):
    assert _fields_digest(seed["ds"], "noise_audit") == seed["before"]
    # seconds beyond the audit on 2 shared cores (idle: a few seconds; mostly the
    # influence model of the explanations and the figures)
    assert seed["seconds"] < 90


@pytest.mark.slow
@requires_shared
def test_report_renders_in_headless_chromium(seed, tmp_path):
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright package is not installed"
    if not reason and not os.path.exists(CHROMIUM):
        reason = f"Chromium not found at {CHROMIUM}"
    if reason:
        if ON_CI:
            pytest.fail(f"CI must render the report: {reason}")
        pytest.skip(reason)
    png = tmp_path / "seed-report.png"
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1320, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:100]}"))
            page.goto((seed["out"] / "report.html").as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(png), full_page=True)
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.complete && e.naturalWidth > 0, e.naturalWidth, e.clientWidth,"
                " getComputedStyle(e).imageRendering, e.closest('figure.card') !== null])")
        finally:
            browser.close()
    print(f"\nscreenshot of the seed report: {png}")
    assert problems == []
    assert images and all(loaded for loaded, *_ in images)
    cards = [i for i in images if i[4]]
    assert cards and all(client >= 128 for _, _, client, _, _ in cards)
    # 64 px images are enlarged without blur
    assert all(rendering == "pixelated" for _, natural, client, rendering, _ in cards if natural < client)
    with Image.open(png) as im:
        assert im.width >= 1280 and im.height > 5000


@pytest.mark.slow
@requires_shared
def test_bad_input_raises_before_writing(seed, tmp_path):
    ds = seed["ds"]
    out = tmp_path / "report"
    cases = [
        (dict(key="nope"), "No noise audit"),
        (dict(truth_field="missing"), "not found"),
        (dict(truth_field="ground_truth"), "not a BooleanField"),
        (dict(truth_field="noise_audit_influence"), "not a BooleanField"),
        (dict(top_n=-1), "top_n"),
    ]
    for kwargs, message in cases:
        args = dict(key="noise_audit", truth_field=None, progress=False) | kwargs
        with pytest.raises(na.NoiseAuditError, match=message):
            na.report(ds, args.pop("key"), out, **args)
        assert not out.exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(na.NoiseAuditError, match="not a folder"):
        na.report(ds, "noise_audit", a_file, progress=False)
    assert a_file.read_text() == "x"
    clean_only = ds.match(fo.ViewField("label_flipped") == False)  # noqa: E712
    with pytest.raises(na.NoiseAuditError, match="both True and False"):
        na.report(clean_only, "noise_audit", out, truth_field="label_flipped", progress=False)
    assert not out.exists()


@pytest.mark.slow
@requires_shared
def test_report_without_truth_and_of_a_view(seed, tmp_path):
    ds = seed["ds"]
    view = ds.match_tags("val")
    s = na.report(view, "noise_audit", tmp_path, n_explained=0, progress=False)
    assert s["truth"] is None and s["explanations"] == []
    assert s["overview"]["n_in_report"] == 100 and s["overview"]["n_samples"] == 1100
    page = (tmp_path / "report.html").read_text()
    parser = PageParser()
    parser.feed(page)
    assert parser.sections == [sid for sid, _ in SECTIONS]
    assert "No truth field was given" in page


# The gate's tests need an audit, not a good one: the cheapest settings.
FAST_CLI = ["--folds", "2", "--method", "ekfac"]


@pytest.fixture
def small_audited(make_small_dataset):
    ds = make_small_dataset()
    ds.persistent = True  # the CLI runs in another process; the factory deletes it afterwards
    na.inject_label_noise(ds.match_tags("train"), fraction=0.1, seed=0)
    return ds


def test_cli_audit_report_and_gate_both_ways(small_audited, tmp_path):
    """The unattended path, as a pipeline runs it: a process per command, its exit code."""
    name = small_audited.name
    common = ["audit", "--dataset", name, "--label-field", "ground_truth_noisy", "--image-size", "64",
              *FAST_CLI, "--truth-field", "label_flipped", "--explain", "0"]
    # a rate that passes: exit 0, report written, gate in the JSON
    ok = cli(*common, "--report", str(tmp_path / "pass"), "--fail-above", "0.5", "--json", check=False)
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["gate"]["passed"] and out["gate"]["rate"] == out["num_label_issues"] / 150
    assert 0 < out["gate"]["rate"] <= 0.5
    summary = json.loads((tmp_path / "pass" / "summary.json").read_text())
    assert summary["overview"]["num_label_issues"] == out["num_label_issues"]
    assert summary["truth"]["field"] == "label_flipped"
    # a rate that fails: exit 3, the audit and the report are still written
    bad = cli(*common, "--overwrite", "--report", str(tmp_path / "fail"), "--fail-above", "0.01", check=False)
    assert bad.returncode == 3, bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("gate failed: estimated share of label errors")
    assert "gate FAILED" in bad.stdout and "report:" in bad.stdout
    assert sorted(os.listdir(tmp_path / "fail")) == sorted(FILES.values())
    small_audited.reload()
    assert na.list_audits(small_audited) == ["noise_audit"]


def run_main(capsys, *args):
    """The CLI in this process (cheaper than a subprocess for quick checks)."""
    from noise_audit.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_report_command_and_bad_input(small_audited, tmp_path, capsys):
    name = small_audited.name
    # bad input: exit 2 with one message, nothing written, nothing audited
    code, _, err = run_main(capsys, "report", "--dataset", name, "--out", str(tmp_path / "r"))
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: No noise audit")
    code, _, err = run_main(capsys, "audit", "--dataset", name, "--label-field", "ground_truth_noisy",
                            "--report", str(tmp_path / "r"), "--fail-above", "2")
    assert code == 2 and "--fail-above" in err
    code, _, err = run_main(capsys, "audit", "--dataset", name, "--label-field", "ground_truth_noisy",
                            "--report", str(tmp_path / "r"), "--truth-field", "ground_truth")
    assert code == 2 and "BooleanField" in err
    assert not (tmp_path / "r").exists()
    small_audited.reload()
    assert na.list_audits(small_audited) == []
    # the report command on an existing audit, with the gate both ways
    na.audit(small_audited, "ground_truth_noisy", image_size=64, folds=2, method="ekfac", progress=False)
    code, out, _ = run_main(capsys, "report", "--dataset", name, "--out", str(tmp_path / "r"), "--explain", "0",
                            "--truth-field", "label_flipped", "--fail-above", "0.5")
    assert code == 0 and "report.html" in out and "gate passed" in out
    code, out, err = run_main(capsys, "report", "--dataset", name, "--out", str(tmp_path / "r2"), "--explain", "0",
                              "--fail-above", "0.01", "--json")
    assert code == 3 and json.loads(out)["gate"]["passed"] is False and "gate failed" in err
    assert (tmp_path / "r2" / "report.html").is_file()
