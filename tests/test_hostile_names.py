"""Issue 25.1: names from the data are shown, never obeyed, in every output.

Label names, field names, dataset names and file paths are untrusted input:
they come from folder names, annotation tools and other people's datasets.
One real audit (the committed CIFAR-10 JPEGs, the test database) is made of
names as hostile as FiftyOne allows: classes named ``<img src=x onerror=...>``,
``[click](javascript:...)`` and ``**b** _i_ | ESC[2J NEWLINE $\\frac{$``; a
dataset, a label field and a truth field named with HTML, Markdown links,
``|``, a terminal escape and a newline; image files under such folders; a
run key as hostile as noise-audit's key rule allows (``nax_y``: letters,
digits and single underscores; the rule itself is tested below). The class
folders are imported with ``na.load_image_folder`` (what ``noise-audit
import`` runs), then audited and reported.

Each output is then read back with a parser of its format:

- ``summary.json``: plain JSON, every name unchanged;
- ``report.html``: ``html.parser`` finds each name as text (or as an
  attribute value), and no tag or attribute that a name spelled;
- ``summary.md`` and the panel's Markdown: the raw text holds each name only
  escaped (no control character at all), and markdown-it (CommonMark with
  GitHub's tables) renders each name as literal text: no link, image,
  emphasis, HTML or broken table row;
- the CLI's tables and messages: control characters shown as ``\\x1b``,
  never written raw; ``--json`` values unchanged;
- plotly's legend in the panel (which reads trace names as HTML): escaped.
"""

import json
import os
import re
import shutil
import unicodedata
from html.parser import HTMLParser

import fiftyone as fo
import pytest

import noise_audit as na
from noise_audit.app import views
from noise_audit.store.ownership import audit_fields

from audit_state import FAST
from conftest import FIXTURES, unique_name

ESC = "\x1b[2J"  # clears the screen when a terminal obeys it
CLASSES = ["<img src=x onerror=alert(1)>", "[click](javascript:alert(1))", f"**b** _i_ | {ESC}\nx $\\frac{{$"]
SOURCES = ("airplane", "frog", "truck")  # the fixture images behind each class
LABEL_FIELD = f"<b>gt</b> [f](javascript:q) |{ESC}\nz"
TRUTH_FIELD = "flip <i>x |"
KEY = "nax_y"
FOLDER = f"im [x](javascript:y) <b>{ESC}\nü"


class Parsed(HTMLParser):
    """Text runs (between any two tags), attribute values and tags of an HTML document."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.runs, self.attrs, self.tags = [""], [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.attrs += [v for _, v in attrs if v is not None]
        self.runs.append("")

    def handle_endtag(self, tag):
        self.runs.append("")

    def handle_data(self, data):
        self.runs[-1] += data

    def shows(self, text):
        return any(text in run for run in self.runs)


def rendered(text):
    """How markdown-it shows ``text`` written with our escape: C0/C1 controls other than
    tab and newline come out as U+FFFD (CommonMark: not valid in a character reference)."""
    return "".join("\ufffd" if unicodedata.category(ch) == "Cc" and ch not in "\t\n" else ch for ch in text)


def markdown_to_html(text):
    mdit = pytest.importorskip("markdown_it", reason="markdown-it-py (a dev dependency) renders the Markdown")
    return mdit.MarkdownIt("commonmark").enable("table").render(text)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The hostile dataset imported, two labels per training class flipped, audited and reported."""
    tmp = tmp_path_factory.mktemp("hostile")
    root = tmp / FOLDER
    for split, n in (("train", 20), ("val", 6)):
        for c, source in zip(CLASSES, SOURCES):
            (root / split / c).mkdir(parents=True)
            for k, path in enumerate(sorted((FIXTURES / split / source).iterdir())[:n]):
                shutil.copy(path, root / split / c / f"{k} <i>{source}{ESC}\n.jpg")
    name = f"<img src=x onerror=alert(1)> [d](javascript:z) |{ESC}\n{unique_name()}"
    ds = na.load_image_folder(root, name=name)
    ds.clone_sample_field("ground_truth", LABEL_FIELD)
    ds.add_sample_field(TRUTH_FIELD, fo.BooleanField)
    flipped = {}
    for c in CLASSES:  # the first two training images of each class get the next class's label
        ids = ds.match_tags("train").match(fo.ViewField(f"{LABEL_FIELD}.label") == c).sort_by("filepath").limit(2).values("id")
        flipped.update(dict.fromkeys(ids, CLASSES[(CLASSES.index(c) + 1) % 3]))
    for sample in ds.iter_samples(autosave=True):
        sample[TRUTH_FIELD] = sample.id in flipped
        if sample.id in flipped:
            sample[LABEL_FIELD] = fo.Classification(label=flipped[sample.id])
    na.audit(ds, LABEL_FIELD, key=KEY, cache_dir=str(tmp / "cache"), **FAST)
    out = tmp / f"report <b>{ESC}"
    na.report(ds, KEY, out, truth_field=TRUTH_FIELD, n_explained=1, progress=False)
    yield {"ds": ds, "out": out, "tmp": tmp, "paths": ds.values("filepath")}
    ds.delete()


def _names(h):
    """Every name from the data that the outputs show."""
    return {"dataset": h["ds"].name, "label field": LABEL_FIELD, "truth field": TRUTH_FIELD, "key": KEY,
            **{f"class {i}": c for i, c in enumerate(CLASSES)}}


def test_the_names_are_as_hostile_as_promised(hostile):
    ds = hostile["ds"]
    assert sorted(ds.distinct(f"{LABEL_FIELD}.label")) == sorted(CLASSES)
    assert all(FOLDER in p and ESC in p and "\n" in p for p in hostile["paths"])
    assert sum(ds.values(TRUTH_FIELD)) == 6


def test_summary_json_keeps_every_name_unchanged(hostile):
    s = json.loads((hostile["out"] / "summary.json").read_text())
    o = s["overview"]
    assert (o["dataset"], o["key"], o["label_field"], s["truth"]["field"]) == (hostile["ds"].name, KEY, LABEL_FIELD,
                                                                                TRUTH_FIELD)
    assert sorted(o["classes"]) == sorted(CLASSES) and sorted(s["data"]["class_counts"]) == sorted(CLASSES)
    shown = [e["filepath"] for e in s["suspects"]["top"]]
    assert shown and set(shown) <= set(hostile["paths"])
    assert {e["label"] for e in s["suspects"]["top"]} <= set(CLASSES)


def test_report_html_shows_every_name_as_text_and_nothing_more(hostile):
    raw = (hostile["out"] / "report.html").read_text()
    page = Parsed(raw)
    for what, name in _names(hostile).items():
        assert page.shows(name), what
    s = json.loads((hostile["out"] / "summary.json").read_text())
    for e in s["suspects"]["top"]:
        assert e["filepath"] in page.attrs  # the card's title
    # nothing a name spelled became markup
    assert "<img src=x" not in raw and "<i>" not in raw and "<b>gt" not in raw
    assert not any(k.startswith("on") for _, attrs in page.tags for k in attrs)
    assert all(a.get("src", "data:").startswith("data:") for t, a in page.tags if t == "img")
    assert all(a.get("href", "#").startswith(("#", "data:")) for t, a in page.tags if t in ("a", "link"))
    assert not [t for t, _ in page.tags if t in ("i", "script", "iframe")]
    for name in CLASSES + [LABEL_FIELD, TRUTH_FIELD]:
        if "<" in name:
            assert name not in raw


def test_summary_md_escapes_every_name_and_renders_it_literally(hostile):
    raw = (hostile["out"] / "summary.md").read_text()
    assert not any(unicodedata.category(ch) == "Cc" and ch != "\n" for ch in raw)  # no terminal escape to obey
    for name in [LABEL_FIELD, TRUTH_FIELD, hostile["ds"].name, *CLASSES]:
        assert name not in raw
    assert not re.search(r"(?<!\\)[<\[]", raw)  # every < and [ is escaped (the report writes none of its own)
    for bad in ("<b>", "<i>", "](javascript", "**b**", "_i_"):
        assert bad not in raw
    # the escaped forms: every ASCII punctuation backslashed, the newline and ESC as references
    assert r"\[click\]\(javascript\:alert\(1\)\)" in raw and r"\<img src\=x onerror\=alert\(1\)\>" in raw
    assert r"\*\*b\*\* \_i\_ \| &#27;\[2J&#10;x \$\\frac\{\$" in raw
    html = markdown_to_html(raw)
    page = Parsed(html)
    tags = {t for t, _ in page.tags}
    assert tags <= {"h1", "h2", "p", "ul", "li", "strong", "code", "table", "thead", "tbody", "tr", "th", "td"}, tags
    assert [t for t, _ in page.tags].count("strong") == 1  # ours: the estimated number of label errors
    for what, name in _names(hostile).items():
        assert page.shows(rendered(name)), what
    # each table row is one row: the class table has exactly its three classes in the first column
    first_table = html.split("<table>")[1].split("</table>")[0]
    cells = Parsed(first_table.split("<tbody>")[1])
    assert [r for r in cells.runs if r.strip()][::4] == [rendered(c) for c in sorted(CLASSES)]


def test_cli_shows_control_characters_and_keeps_json_values(hostile, capsys):
    from noise_audit.cli import main

    ds = hostile["ds"]
    code = main(["evaluate", "--dataset", ds.name, "--key", KEY, "--truth-field", TRUTH_FIELD])
    out = capsys.readouterr().out
    assert code == 0 and "\x1b" not in out
    for c in CLASSES:  # the per-label table, one line per class
        shown = c.replace("\x1b", "\\x1b").replace("\n", "\\n")
        assert sum(line.startswith(shown) for line in out.splitlines()) == 1, shown
    code = main(["evaluate", "--dataset", ds.name, "--key", KEY, "--truth-field", TRUTH_FIELD, "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and sorted(r["label"] for r in data["corruption_score"]["per_label"]) == sorted(CLASSES)
    # a path in a result line, and a name in an error message
    code = main(["report", "--dataset", ds.name, "--key", KEY, "--out", str(hostile["out"]), "--explain", "0"])
    captured = capsys.readouterr()
    assert code == 0 and "\x1b" not in captured.out and f"report <b>\\x1b[2J{os.sep}report.html" in captured.out
    code = main(["evaluate", "--dataset", ds.name, "--key", KEY, "--truth-field", LABEL_FIELD])
    err = capsys.readouterr().err
    assert code == 2 and "\x1b" not in err and err.count("\n") == 1 and err.startswith("error: ")
    gone = hostile["tmp"] / f"gone{ESC}\nx"
    code = main(["import", str(gone)])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: Image folder not found: {hostile['tmp']}{os.sep}gone\\x1b[2J\nx\n"


def test_panel_markdown_and_legends_show_every_name_literally(hostile):
    ds = hostile["ds"]
    summary = views.summary(ds, KEY, TRUTH_FIELD)
    text = views.summary_markdown(summary)
    assert LABEL_FIELD not in text and TRUTH_FIELD not in text and "\x1b" not in text
    page = Parsed(markdown_to_html(text))
    assert {t for t, _ in page.tags} <= {"p", "strong"}
    assert page.shows(rendered(LABEL_FIELD)) and page.shows(TRUTH_FIELD)
    traces = views.histogram_traces(views.histogram(ds, KEY, "corruption_score", TRUTH_FIELD))
    for trace in traces:  # plotly reads a trace name as HTML
        legend = Parsed(trace["name"])
        assert not legend.tags and any(legend.runs[0].startswith(f"{c} · ") for c in CLASSES), trace["name"]


def test_the_audit_key_rule_keeps_field_names_valid(make_small_dataset):
    """Keys prefix field names: FiftyOne refuses a leading ``_`` and mongoengine reads ``__``
    as an operator (an audit keyed ``a__b`` failed while renaming its fields)."""
    ds = make_small_dataset(n_train=6, n_val=2)
    for key in ("_a", "a_", "a__b", "1a", "a-b", "a b", "<b>"):
        with pytest.raises(na.NoiseAuditError, match="letters, digits and single underscores"):
            na.audit(ds, "ground_truth", key=key, **FAST)
    assert ds.list_runs() == [] and not [f for f in ds.get_field_schema() if f.startswith(("a_", "_a"))]
    for key in ("a", "a_b", "A1_2b"):
        assert audit_fields(key)["corruption_score"].startswith(key + "_")


def test_operator_forms_show_messages_as_literal_markdown(hostile, plugins_dir):
    """The App renders a form notice's label as Markdown: a message that names a key or a field
    from the data must not become a link there."""
    from test_plugin import form

    bad_key = "[click](javascript:alert(1))<img src=x>"
    properties = form("run_noise_audit", hostile["ds"], label_field=LABEL_FIELD, key=bad_key)
    label = properties["error"].view.label
    assert label.startswith("key must be letters") and bad_key not in label
    page = Parsed(markdown_to_html(label))
    assert {t for t, _ in page.tags} == {"p"} and page.shows(repr(bad_key))
