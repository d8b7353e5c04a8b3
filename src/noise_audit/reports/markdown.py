"""``summary.md``: the tables of a noise-audit report as Markdown.

For places where a page with images does not fit (a pull-request comment, a
chat message, a CI log). Rendered from the same summary as ``report.html``
and ``summary.json``; figures and images stay in the HTML page.

Every name that comes from the data (dataset, label field, class names, file
paths, the run key, config values) goes through :func:`md`, the one Markdown
escape of noise-audit (the panel's text uses it too); noise-audit's own names
(signals, stages, config keys) are written as they are.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from typing import Any

from noise_audit.reports.numbers import fnum, influence_weight_text
from noise_audit.reports.review_section import review_markdown

_PUNCTUATION = frozenset(string.punctuation)  # ASCII punctuation: every character Markdown may read as syntax


def md(text: object) -> str:
    r"""``text`` as literal Markdown: it renders as itself, never as markup.

    Label names, field names and paths are untrusted: a class named
    ``[click](javascript:alert(1))`` or ``<img src=x onerror=...>`` must not
    become a link or HTML in a pull request. CommonMark lets a backslash
    escape any ASCII punctuation character, and an escaped character is
    always literal text, so every one is escaped: no link, image, emphasis,
    code span, HTML, table cell break (``|``), heading or list can start in
    the text. Characters that are not printable (newline, tab, terminal
    escapes such as ``\x1b``, bidi overrides) become numeric character
    references (``&#10;``): a line or table row cannot be broken, the raw file
    holds no control character (``cat summary.md`` in a CI log obeys none),
    and a renderer shows newline and tab as such (others as it decodes
    them; markdown-it shows C0/C1 controls as U+FFFD).

    Not covered: GitHub's own post-processing of rendered text (bare URLs
    such as ``www.example.com`` become links, ``@name`` mentions, ``#12``
    references); the link text is then the visible name itself.
    """
    out = []
    for ch in str(text):
        if ch in _PUNCTUATION:
            out.append("\\" + ch)
        elif ch == " " or ch.isprintable():
            out.append(ch)
        else:
            out.append(f"&#{ord(ch)};")
    return "".join(out)


def _value(v: object) -> str:
    """A config value for the Run table: JSON for structures, escaped."""
    return md(json.dumps(v) if isinstance(v, (dict, list)) else v)


def _table(headers, rows):
    """A Markdown table; cells are Markdown already (user data escaped with :func:`md` by the caller)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(s: Mapping[str, Any]) -> str:
    """Markdown for the summary of :func:`noise_audit.reports.summary.report`."""
    o, d, m, su, t, r = s["overview"], s["data"], s["model"], s["suspects"], s.get("truth"), s["run"]
    out = [
        f"# Noise audit: {md(o['dataset'])} / {md(o['key'])}",
        "",
        *([f"> **Warning:** {md(o['labels_changed'])}", ""] if o.get("labels_changed") else []),
        f"- label field: {md(o['label_field'])}; {fnum(o['n_samples'])} samples ({fnum(o['n_train'])} train, "
        f"{fnum(o['n_held_out'])} held-out), {fnum(o['n_classes'])} classes",
        f"- **estimated label errors: {fnum(o['num_label_issues'])} ({fnum(o['label_error_rate'], 'pct')})**",
        f"- head: held-out accuracy {fnum(m['test_accuracy'], 'f')}, F1 (macro) {fnum(m['test_f1_macro'], 'f')}",
        f"- influence solver: {md(o['influence_method'])}",
        f"- {md(influence_weight_text(m))}",
    ]
    if t:
        out.append(f"- truth {md(t['field'])}: {fnum(t['n_flipped'])} flipped; corruption score AUROC "
                   f"{fnum(t['metrics']['corruption_score']['auroc'], 'f')}; {fnum(t['n_flagged_and_flipped'])} of "
                   f"{fnum(t['n_flagged'])} flagged suspects are flips")
    out += ["", f"Written {s['created']}. Figures and images: `report.html`; every number: `summary.json`.", ""]

    out += ["## Data", "", _table(["class", "train", "held-out", "total"],
                                  [[md(c), v["train"], v["held_out"], v["total"]] for c, v in d["class_counts"].items()]), ""]
    out += ["## Model (held-out)", "", _table(
        ["class", "precision", "recall", "F1", "support"],
        [[md(c), fnum(v["precision"], "f"), fnum(v["recall"], "f"), fnum(v["f1"], "f"), v["support"]]
         for c, v in m["per_class"].items()]), ""]

    truth = "flipped_per_class" in su
    out += ["## Estimated label errors per class", "", _table(
        ["given label", "estimated errors"] + (["actually flipped", "flagged and flipped"] if truth else []),
        [[md(c), v] + ([su["flipped_per_class"][c], su["flagged_and_flipped_per_class"][c]] if truth else [])
         for c, v in su["label_issues_per_class"].items()]), ""]

    out += [f"## Top {len(su['top'])} suspects", "", _table(
        ["rank", "given", "predicted", "confidence", "score", "label quality", "avg influence", "split"]
        + (["flipped"] if truth else []) + ["file"],
        [[e["rank"], md(e["label"]), md(e["predicted"]), fnum(e["confidence"], "pct"), fnum(e["corruption_score"], "f"),
          fnum(e["label_quality"], "f"), fnum(e["average_influence"]), e["split"]]
         + ([fnum(e["flipped"])] if truth else []) + [md(e["filepath"])] for e in su["top"]]), ""]

    out += review_markdown(s.get("review"), _table, md)

    if t:
        keys = ("auroc", "average_precision", "precision_at_k", "recall_at_10pct")
        out += ["## Detection quality against the truth", "", _table(
            ["signal", "AUROC", "AP", "P@k", "recall@10%"],
            [[n] + [fnum(mt[k], "f") for k in keys] for n, mt in t["metrics"].items()]), ""]
        cal, cl = t["calibration"], t.get("cleaning") or {}
        out += [f"Calibration: mean corruption score {fnum(cal['mean_score'], 'f')} vs error rate "
                f"{fnum(cal['error_rate'], 'f')}; expected calibration error {fnum(cal['ece'], 'f')}.", ""]
        if "none" in cl:
            out += ["What cleaning buys (held-out accuracy of the head refit without):", "", _table(
                ["removed", "samples", "held-out accuracy"],
                [[name, cl["removed"].get(key, 0), fnum(cl[key], "pct")] for key, name in (
                    ("none", "nothing"), ("suspects", "flagged suspects"), ("random", "random samples"),
                    ("flipped", "exactly the flipped"))]), ""]
        for n in ("average_influence", "corruption_score"):
            fmt = "g" if n == "average_influence" else "f"
            out += [f"Mean {n.replace('_', ' ')} per given label:", "", _table(
                ["given label", "clean", "flipped", "mean clean", "mean flipped"],
                [[md(row["label"]), row["n_clean"], row["n_flipped"], fnum(row["mean_clean"], fmt),
                  fnum(row["mean_flipped"], fmt)] for row in t["metrics"][n]["per_label"]]), ""]

    out += ["## Run", "", _table(["setting", "value"], [[k, _value(v)] for k, v in r["config"].items()]), ""]
    out += [_table(["stage", "seconds"],
                   [[f"audit: {k}", fnum(v, "s")] for k, v in r["audit_timings"].items()]
                   + [[f"report: {k}", fnum(v, "s")] for k, v in r["report_timings"].items()]), ""]
    return "\n".join(out)
