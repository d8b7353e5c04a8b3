"""The HTML page of a noise-audit report, rendered from its summary.

:func:`render_html` turns the summary built by :mod:`noise_audit.reports.summary`
(the same dict that becomes ``summary.json``), the figures of
:mod:`noise_audit.reports.plots` and the embedded thumbnails into one
self-contained page: inline CSS, no JavaScript, no external resource, so it
opens from disk and shows the same offline. Every number printed here comes
from the summary, so ``summary.json`` holds every number of the page.

Images are shown at 128 px or more; images smaller than that (Tiny ImageNet's
64 px) are enlarged with ``image-rendering: pixelated`` so a label can be
judged by eye without blur. Each image has its given label under it; red
marks a known flip (with a truth field) and an orange frame a flagged suspect.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from typing import Any

from noise_audit.reports.numbers import fnum, influence_weight_text  # noqa: F401 (the page's number format, used here and re-exported)
from noise_audit.reports.review_section import review_html

# Box sizes in CSS px, including a 3 px frame: 128 and 192 px of image (2x and 3x of 64 px).
CARD, TARGET = 134, 198

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; --accent:#3b75af;
        --flip:#c53a32; --clean:#2f8a3b; --suspect:#e08a00; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color:var(--fg); background:var(--bg); }
header { background:#1f2d3d; color:#fff; padding:22px 32px 16px; }
header h1 { margin:0 0 4px; font-size:24px; }
header .sub { color:#c9d4df; font-size:13px; }
nav { position:sticky; top:0; z-index:2; background:#fff; border-bottom:1px solid var(--line); padding:8px 32px; }
nav a { margin-right:16px; color:var(--accent); text-decoration:none; font-weight:600; font-size:14px; }
main { max-width:1320px; margin:0 auto; padding:8px 24px 48px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:18px 24px; margin:20px 0; }
h2 { margin:0 0 6px; font-size:20px; }
h3 { margin:18px 0 6px; font-size:16px; }
p.lead { color:var(--muted); margin:0 0 12px; max-width:900px; }
.tiles { display:flex; flex-wrap:wrap; gap:12px; }
.tile { flex:1 1 160px; border:1px solid var(--line); border-radius:8px; padding:10px 14px; background:var(--bg); }
.tile .v { font-size:26px; font-weight:700; }
.tile .k { color:var(--muted); font-size:13px; }
.tile.alert .v { color:var(--flip); }
.row { display:flex; flex-wrap:wrap; gap:18px; align-items:flex-start; }
img.plot { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
table { border-collapse:collapse; margin:6px 0 12px; font-size:14px; }
th, td { border-bottom:1px solid var(--line); padding:4px 12px 4px 0; text-align:right; }
th:first-child, td:first-child { text-align:left; }
th { color:var(--muted); font-weight:600; }
.grid { display:flex; flex-wrap:wrap; gap:10px; }
figure.card { margin:0; width:@CARD@px; }
figure.card img { width:@CARD@px; height:@CARD@px; object-fit:contain; background:#eee; border-radius:4px;
                  border:3px solid transparent; display:block; }
figure.card.big, figure.card.big img { width:@TARGET@px; }
figure.card.big img { height:@TARGET@px; }
figure.card.suspect img { border-color:var(--suspect); }
figure.card.flipped img { border-color:var(--flip); }
img.px { image-rendering:pixelated; }
figcaption { font-size:12px; line-height:1.35; padding-top:3px; word-wrap:break-word; }
figcaption .lab { font-size:13.5px; font-weight:700; }
.tag { display:inline-block; font-size:11px; font-weight:700; border-radius:3px; padding:0 4px; color:#fff; margin-right:3px; }
.tag.flip { background:var(--flip); } .tag.clean { background:var(--clean); } .tag.sus { background:var(--suspect); }
.tag.rank { background:#444; }
p.warn { background:#fff4e0; border-left:4px solid var(--suspect); padding:8px 12px; margin:0 0 12px; font-weight:600; }
.muted { color:var(--muted); }
.pair { display:flex; gap:28px; flex-wrap:wrap; margin-bottom:10px; }
.pair > div > h4 { margin:4px 0 6px; font-size:13px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.explain { display:flex; gap:24px; align-items:flex-start; border-top:1px solid var(--line); padding:12px 0; flex-wrap:wrap; }
.legend { font-size:13px; color:var(--muted); margin:4px 0 10px; }
code { background:var(--bg); padding:0 4px; border-radius:3px; }
""".replace("@CARD@", str(CARD)).replace("@TARGET@", str(TARGET))

SECTIONS = [
    ("overview", "Overview"), ("data", "Data"), ("model", "Model"), ("scores", "Scores"),
    ("influence", "Influence"), ("explanations", "Explanations"), ("suspects", "Suspects"),
    ("review", "Review"), ("truth", "Truth"), ("run", "Run"),
]


def esc(x: object) -> str:
    """``x`` as HTML text or attribute value: the one HTML escape of noise-audit.

    Every name from the data (dataset, label field, class names, file paths,
    the run key, config values) goes through it before it reaches the page
    (``&``, ``<``, ``>``, ``"`` and ``'`` become character references), so a
    class named ``<img src=x onerror=...>`` shows as that text. The App's
    histogram legends use it too (plotly reads trace names as HTML).
    """
    return html.escape(str(x), quote=True)


def table(headers: Iterable[object], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def plot(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{esc(alt)}">'


class _Cards:
    """Image cards: the thumbnail, its given label under it, and a few numbers."""

    def __init__(self, thumbs):
        self.thumbs = thumbs

    def __call__(self, e, lines=(), big=False, rank=None):
        uri, w, h = self.thumbs.get(e["filepath"], (None, 0, 0))
        size = TARGET if big else CARD
        classes = ["card"] + (["big"] if big else [])
        if e.get("flipped"):
            classes.append("flipped")
        elif e.get("suspect"):
            classes.append("suspect")
        tags = ""
        if rank is not None:
            tags += f'<span class="tag rank">#{rank}</span>'
        if "flipped" in e:
            tags += '<span class="tag flip">flipped</span>' if e["flipped"] else '<span class="tag clean">clean</span>'
        if e.get("suspect"):
            tags += '<span class="tag sus">suspect</span>'
        px = ' class="px"' if uri and max(w, h) < size else ""
        img = (f'<img{px} src="{uri}" alt="{esc(e["label"])}" title="{esc(e["filepath"])}">' if uri
               else f'<img alt="image not found: {esc(e["filepath"])}" title="{esc(e["filepath"])}">')
        extra = "".join(f"<br>{line}" for line in lines)
        return (f'<figure class="{" ".join(classes)}">{img}<figcaption>{tags}{" " if tags else ""}'
                f'<span class="lab">{esc(e["label"])}</span>{extra}</figcaption></figure>')


def _pred(e):
    if not e.get("predicted"):
        return ""
    mark = "" if e["predicted"] == e["label"] else " ⚠"
    return f"pred {esc(e['predicted'])} ({fnum(e['confidence'], 'pct')}){mark}"


# --------------------------------------------------------------- sections


def _overview(s):
    o, t = s["overview"], s.get("truth")
    tiles = [
        (fnum(o["n_samples"]), f"samples audited ({fnum(o['n_train'])} train, {fnum(o['n_held_out'])} held-out)", False),
        (fnum(o["n_classes"]), "classes", False),
        (fnum(o["num_label_issues"]), "estimated label errors", o["num_label_issues"] > 0),
        (fnum(o["label_error_rate"], "pct"), "estimated share of label errors", o["label_error_rate"] > 0),
        (fnum(o["test_f1_macro"], "f"), "held-out F1 (macro) of the head", False),
    ]
    if t:
        tiles.append((fnum(t["metrics"]["corruption_score"]["auroc"], "f"), "AUROC of the corruption score vs truth", False))
        tiles.append((f"{fnum(t['n_flagged_and_flipped'])} / {fnum(t['n_flagged'])}", "flagged suspects that are known flips", False))
    html_tiles = "".join(f'<div class="tile{" alert" if alert else ""}"><div class="v">{v}</div><div class="k">{esc(k)}</div></div>'
                         for v, k, alert in tiles)
    note = (f"Scores of audit <code>{esc(o['key'])}</code> on label field <code>{esc(o['label_field'])}</code>, "
            f"influence by pyDVL's <code>{esc(o['influence_method'])}</code> solver. "
            "The estimated number of label errors is the sum of the corruption scores (each the estimated "
            "probability that a label is wrong); the samples with the "
            "highest corruption scores, that many of them, are flagged as suspects (field "
            f"<code>{esc(o['key'])}_suspect</code>).")
    if o["n_in_report"] != o["n_samples"]:
        note += f" This report shows the {fnum(o['n_in_report'])} audited samples in the given view."
    warn = f'<p class="warn">Warning: {esc(o["labels_changed"])}</p>' if o.get("labels_changed") else ""
    return f'{warn}<p class="lead">{note}</p><div class="tiles">{html_tiles}</div>'


def _data(s, figs, card):
    d = s["data"]
    split = d.get("split") or {}
    kind = split.get("kind")
    how = {"tags": f"samples tagged {', '.join(split.get('tags', []))}",
           "tag": f"samples tagged {split.get('tag')}",
           "view": "a view passed to the audit",
           "stratified_split": f"a stratified {fnum(split.get('fraction'), 'pct')} split (seed {split.get('seed')})"}.get(kind, str(split))
    rows = [[esc(c), fnum(v["train"]), fnum(v["held_out"]), fnum(v["total"])] for c, v in d["class_counts"].items()]
    out = [f'<p class="lead">What was audited. The held-out set (for average influence and the head\'s validation '
           f'curve) is {esc(how)}. Images below are random training samples of each given label.</p>',
           '<div class="row">', plot(figs["class_counts"], "samples per class and split"),
           table(["class", "train", "held-out", "total"], rows), "</div>"]
    for c, entries in d["examples"].items():
        out.append(f"<h3>{esc(c)}</h3><div class=\"grid\">" + "".join(card(e, [_pred(e)]) for e in entries) + "</div>")
    return "".join(out)


def _model(s, figs):
    m = s["model"]
    rows = [[esc(c), fnum(v["precision"], "f"), fnum(v["recall"], "f"), fnum(v["f1"], "f"), fnum(v["support"])]
            for c, v in m["per_class"].items()]
    hist = m["history"]
    lead = ("The softmax head the influence functions rest on, trained by L-BFGS on frozen backbone features with L2 "
            f"strength {fnum(m['regularization'])} ({fnum(m['n_parameters'])} parameters). Influence theory assumes a "
            "minimum: the training loss should flatten"
            + (f" (final gradient norm {fnum(hist['grad_norm'])})" if hist.get("grad_norm") is not None else "")
            + ". Held-out metrics use the audited labels. " + esc(influence_weight_text(m)[0].upper()
                                                                   + influence_weight_text(m)[1:]) + ".")
    return "".join([
        f'<p class="lead">{lead}</p>',
        '<div class="row">', plot(figs["loss_curves"], "training and validation loss"),
        plot(figs["confusion"], "confusion matrix"), "</div>",
        f"<h3>Held-out: accuracy {fnum(m['test_accuracy'], 'f')}, F1 (macro) {fnum(m['test_f1_macro'], 'f')}</h3>",
        table(["class", "precision", "recall", "F1", "support"], rows),
    ])


def _scores(s, figs):
    sc = s["scores"]
    rows = [[esc(c), fnum(v["n"]), fnum(v["mean"]), fnum(v["median"]), fnum(v["min"]), fnum(v["max"])]
            for c, v in sc["average_influence_train_by_label"].items()]
    rows2 = [[esc(c), fnum(v["n"]), fnum(v["mean"], "f"), fnum(v["median"], "f"), fnum(v["max"], "f")]
             for c, v in sc["corruption_score_by_label"].items()]
    cut = (f"{fnum(sc['n_suspects'])} samples score at or above the cut-off {fnum(sc['suspect_threshold'], 'f')} and are "
           "flagged as suspects." if sc["suspect_threshold"] is not None else "No sample is flagged.")
    return "".join([
        '<p class="lead">Average influence of a training sample is the mean change of held-out loss when it is '
        "up-weighted (positive = it helps). Mislabeled samples tend to sit in the negative tail, but the seed notebook's "
        "lesson holds: on its own it is a weak detector. The corruption score combines it with the out-of-sample "
        "loss of folds refit without the first suspects, and reads as the <b>estimated probability that the given "
        f"label is wrong</b> (0.7: seven in ten such labels are wrong); {cut}</p>",
        plot(figs["influence_by_label"], "average influence by label"),
        table(["given label", "training samples", "mean influence", "median", "min", "max"], rows),
        plot(figs["corruption_histogram"], "corruption score histogram"),
        table(["given label", "samples", "mean score", "median", "max"], rows2),
    ])


def _influence(s, card):
    out = ['<p class="lead">Per given label, the training images with the lowest average influence (they raise '
           "held-out loss: often mislabeled or atypical) and the highest (clean prototypes the model leans on). "
           "Numbers: average influence; corruption score.</p>"]
    for c, ex in s["influence"].items():
        def cards(entries):
            return "".join(card(e, [f"infl {fnum(e['average_influence'])}", f"score {fnum(e['corruption_score'], 'f')}"])
                           for e in entries)
        out.append(f"<h3>{esc(c)}</h3><div class=\"pair\"><div><h4>lowest influence</h4><div class=\"grid\">"
                   f"{cards(ex['lowest'])}</div></div><div><h4>highest influence</h4><div class=\"grid\">"
                   f"{cards(ex['highest'])}</div></div></div>")
    return "".join(out)


def _explanations(s, card):
    ex = s.get("explanations") or []
    out = ['<p class="lead">For a few held-out images, the training images whose up-weighting most lowers (helpful) '
           "and most raises (harmful) the loss of the image's given label, under the audit's head and solver "
           "(<code>noise_audit.most_influential</code>). Mislabeled training images have large loss gradients, so they "
           "tend to dominate both ends; harmful ones that look like the held-out image but carry another label are prime "
           "suspects. Numbers: influence on the held-out image.</p>"]
    if not ex:
        out.append('<p class="muted">No held-out image was explained.</p>')
    for item in ex:
        t = item["target"]

        def cards(entries):
            return "".join(card(e, [f"infl {fnum(e['influence_on_target'])}"]) for e in entries)

        out.append(f'<div class="explain"><div><h4 class="muted">held-out image</h4>{card(t, [_pred(t)], big=True)}</div>'
                   f'<div><h4 class="muted">most helpful</h4><div class="grid">{cards(item["most"])}</div></div>'
                   f'<div><h4 class="muted">most harmful</h4><div class="grid">{cards(item["least"])}</div></div></div>')
    return "".join(out)


def _suspects(s, figs, card):
    su = s["suspects"]
    truth = "flipped_per_class" in su
    headers = ["given label", "estimated errors"] + (["actually flipped", "flagged and flipped"] if truth else [])
    rows = [[esc(c), fnum(v)] + ([fnum(su["flipped_per_class"][c]), fnum(su["flagged_and_flipped_per_class"][c])] if truth else [])
            for c, v in su["label_issues_per_class"].items()]
    legend = ("Orange frame: flagged suspect; red frame and tag: a known flip; green tag: known clean."
              if truth else "Orange frame: flagged suspect (among the estimated number of label errors).")
    cards = "".join(
        card(e, [_pred(e), f"score {fnum(e['corruption_score'], 'f')} · LQ {fnum(e['label_quality'], 'f')}",
                 f"infl {fnum(e['average_influence'])} · {esc(e['split'])}"], rank=e["rank"])
        for e in su["top"])
    return "".join([
        f'<p class="lead">The {fnum(len(su["top"]))} samples with the highest corruption scores, most suspicious first: '
        "given label (bold), the out-of-sample prediction and its confidence, corruption score, cleanlab label quality "
        f"(LQ) and average influence. {legend}</p>",
        f'<div class="grid">{cards}</div>',
        f"<h3>Estimated label errors per class: {fnum(su['num_label_issues'])} in all</h3>",
        '<div class="row">', plot(figs["issues_per_class"], "estimated label errors per class"),
        table(headers, rows), "</div>",
    ])


def _calibration_and_cleaning(t, figs):
    cal, cl = t["calibration"], t.get("cleaning") or {}
    text = (f'<p class="lead">The corruption score is the estimated probability that the given label is wrong. '
            f"Here it averages {fnum(cal['mean_score'], 'f')} against a true error rate of "
            f"{fnum(cal['error_rate'], 'f')}; expected calibration error {fnum(cal['ece'], 'f')} (10 bins).</p>")
    if "none" in cl:
        rows = [[esc(name), fnum(cl["removed"].get(key, 0)) if key != "none" else "0", fnum(cl[key], "pct")]
                for key, name in (("none", "nothing"), ("suspects", "the flagged suspects"),
                                  ("random", "as many random training samples"), ("flipped", "exactly the flipped samples"))]
        text += ("<h3>What cleaning buys</h3><p>Held-out accuracy of the audit's head refit on the training samples "
                 "without:</p>" + table(["removed", "samples", "held-out accuracy"], rows))
    elif cl:
        text += f'<p class="muted">What cleaning buys: {esc(cl["unavailable"])}</p>'
    return '<div class="row">' + f"<div>{text}</div>" + plot(figs["reliability"], "reliability diagram") + "</div>"


def _truth(s, figs):
    t = s.get("truth")
    if not t:
        return ('<p class="lead muted">No truth field was given. With one (a boolean field, <code>True</code> where a '
                "label is known to be wrong, e.g. from <code>noise_audit.inject_label_noise</code>) this section "
                "measures how well each score finds the wrong labels.</p>")
    names = list(t["metrics"])
    rows = [[f"<b>{esc(n)}</b>" if n == "corruption_score" else esc(n)]
            + [fnum(t["metrics"][n][k], "f") for k in ("auroc", "average_precision", "precision_at_k",
                                                       "recall_at_5pct", "recall_at_10pct", "recall_at_20pct")]
            for n in names]
    k = t["metrics"]["corruption_score"]["k"]
    per_label = []
    for n, title in (("average_influence", "Mean average influence per given label (the seed notebook's table)"),
                     ("corruption_score", "Mean corruption score per given label")):
        fmt = "g" if n == "average_influence" else "f"
        prow = [[esc(r["label"]), fnum(r["n_clean"]), fnum(r["n_flipped"]), fnum(r["mean_clean"], fmt),
                 fnum(r["mean_flipped"], fmt)] for r in t["metrics"][n]["per_label"]]
        per_label.append(f"<h3>{esc(title)}</h3>" + table(["given label", "clean", "flipped", "mean clean", "mean flipped"], prow))
    flagged = (f"Of the {fnum(t['n_flagged'])} flagged suspects {fnum(t['n_flagged_and_flipped'])} are known flips "
               f"(precision {fnum(t['flagged_precision'], 'f')}, recall {fnum(t['flagged_recall'], 'f')}).")
    return "".join([
        f'<p class="lead">Against the truth field <code>{esc(t["field"])}</code>: {fnum(t["n_flipped"])} flipped and '
        f"{fnum(t['n_clean'])} clean samples. {flagged} Metrics are those of <code>noise_audit.evaluate</code>: "
        f"AUROC, average precision, precision among the top k = {fnum(k)} (the number of flips) and the share of flips "
        "found in the top 5/10/20% of samples.</p>",
        '<div class="row">',
        table(["signal", "AUROC", "AP", "P@k", "recall@5%", "recall@10%", "recall@20%"], rows),
        plot(figs["pr_curves"], "precision-recall curves"), "</div>",
        _calibration_and_cleaning(t, figs),
        plot(figs["truth_influence"], "average influence, clean vs flipped"),
        plot(figs["truth_score"], "corruption score, clean vs flipped"),
        *per_label,
    ])


def _run(s, figs):
    r = s["run"]
    def value(v):
        if isinstance(v, (dict, list)):
            return f"<code>{esc(json.dumps(v))}</code>"
        return esc(fnum(v) if isinstance(v, float) else v)

    rows = [[esc(k), value(v)] for k, v in r["config"].items()]
    trows = ([[f"audit: {esc(k)}", fnum(v, "s")] for k, v in r["audit_timings"].items()]
             + [[f"report: {esc(k)}", fnum(v, "s")] for k, v in r["report_timings"].items()])
    frows = [[esc(k), f"<code>{esc(v)}</code>"] for k, v in (r.get("fields") or {}).items()]
    return "".join([
        '<p class="lead">How the audit was computed (its FiftyOne run config) and the seconds each stage of the audit '
        "and of this report took.</p>",
        '<div class="row"><div>', table(["setting", "value"], rows), table(["signal", "field"], frows), "</div>",
        "<div>", plot(figs["timings"], "time per stage"), table(["stage", "seconds"], trows), "</div></div>",
    ])


def render_html(summary: Mapping[str, Any], figures: Mapping[str, str],
                thumbs: Mapping[str, tuple[str | None, int, int]]) -> str:
    """The page: ``summary`` (see :func:`noise_audit.reports.summary.report`), figure URIs, ``{path: (uri, w, h)}``."""
    card = _Cards(thumbs)
    o = summary["overview"]
    bodies = {
        "overview": _overview(summary), "data": _data(summary, figures, card), "model": _model(summary, figures),
        "scores": _scores(summary, figures), "influence": _influence(summary, card),
        "explanations": _explanations(summary, card), "suspects": _suspects(summary, figures, card),
        "truth": _truth(summary, figures), "run": _run(summary, figures),
        "review": review_html(summary.get("review"), card, table),
    }
    titles = dict(SECTIONS)
    titles.update(scores="Score distributions", influence="Lowest and highest influence per label",
                  explanations="Which training images drive a prediction", suspects="Suspects",
                  review="Review: what was decided, what is left",
                  truth="Detection quality against the truth", run="Run configuration and timings")
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{esc(titles[sid])}</h2>{bodies[sid]}</section>' for sid, _ in SECTIONS)
    title = f"Noise audit: {o['dataset']} / {o['key']}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><div class=\"sub\">label field <b>{esc(o['label_field'])}</b> · "
        f"{fnum(o['n_samples'])} samples · {fnum(o['n_classes'])} classes · report written {esc(summary['created'])}"
        "</div></header>"
        f"<nav>{nav}</nav><main>{sections}</main></body></html>\n"
    )
