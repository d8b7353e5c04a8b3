"""Reports: one audit as a page people can look at, plus the numbers behind it.

:func:`report` reads an audit (its run and fields; it never writes to the
dataset) and writes three files into ``out_dir``:

- ``report.html``: a self-contained page (figures and thumbnails embedded as
  ``data:`` URIs; no network, no JavaScript) that opens from disk;
- ``summary.json``: every number the page shows, and the data behind its plots;
- ``summary.md``: the tables of the page, for a pull request or a chat.

The page has these sections, each a question about the audit:

``overview``
    How many samples, how many label errors are estimated (the sum of the
    corruption scores, ``num_label_issues``) and their share of the
    data, which is what ``noise-audit audit --fail-above RATE`` gates on.
``data``
    What was audited: class counts per split, how the held-out set was
    chosen, and a few training images per given label.
``model``
    Whether the classifier head the influence functions rest on is sound: its
    training and validation loss per L-BFGS step (influence theory assumes a
    minimum, so the training loss should flatten), and its confusion matrix
    and F1 on the held-out set.
``scores``
    How the signals are distributed: average influence of training samples
    by given label (the seed notebook's ``plot_influence_distribution_by_label``;
    flips tend to sit in the negative tail) and the corruption score of
    every sample, with the cut-off above which samples are flagged.
``influence``
    Per label, the training images with the lowest and the highest average
    influence (the seed's ``plot_lowest_highest_influence_images``): the
    lowest are often mislabeled or atypical, the highest are clean prototypes.
``explanations``
    For a few held-out images, the training images that helped their
    prediction most and hurt it most (:func:`noise_audit.core.explain.most_influential`).
``suspects``
    The top-ranked samples with given label, out-of-sample prediction and
    scores, and the estimated number of label errors per class.
``truth`` (with ``truth_field``)
    How well the scores find known flips: clean vs flipped distributions per
    label (the seed's ``plot_corrupted_influences_distribution``), the seed's
    table of mean score per label split clean/flipped, and AUROC, AP,
    precision@k and precision-recall curves for the corruption score and each
    single signal (the numbers are :func:`noise_audit.metrics.evaluate`'s).
``run``
    The audit's configuration and the seconds each stage of the audit and of
    the report took.

The figures live in :mod:`noise_audit.reports.plots`, the page in
:mod:`noise_audit.reports.html`.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm


from noise_audit.reports import plots
from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.metrics import calibration, evaluate, flag_metrics, pr_curve
from noise_audit.signals import SHOWN, suspicion
from noise_audit.store.runs import audit_fields, load_audit

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection

REPORT_VERSION = 1
FILES = {"html": "report.html", "json": "summary.json", "markdown": "summary.md"}
# The signals the report compares: name -> audit field suffix (noise_audit.signals).
SIGNALS = {s.name: s.field for s in SHOWN}
STAGES = ("read", "evaluate", "figures", "explanations", "images", "write")
PR_POINTS = 400  # precision-recall curves are thinned to this many points in summary.json


# ----------------------------------------------------------------- checks


def check_out_dir(out_dir: str | os.PathLike[str]) -> str:
    """Raises unless ``out_dir`` is, or can be made, a writable folder for the report's files."""
    return validation.out_dir(out_dir, FILES.values())


def _audited_view(samples, key):
    """``(dataset, config, results, view)``: the audit and its samples within ``samples``."""
    if samples is None or not hasattr(samples, "_dataset"):
        raise NoiseAuditError("samples must be a FiftyOne dataset or view")
    dataset = samples._dataset
    config, results = load_audit(dataset, key)
    view = samples.select(list(results.ids), ordered=True)
    if len(view) == 0:
        raise NoiseAuditError(f"None of the samples audited under {key!r} are in this view")
    schema = dataset.get_field_schema()
    missing = [f for f in audit_fields(key).values() if f not in schema]
    if missing:
        raise NoiseAuditError(f"The audit {key!r} lacks its fields {missing}; re-run the audit")
    return dataset, config, results, view


def label_error_rate(samples: SampleCollection, key: str = "noise_audit") -> dict[str, Any]:
    """The audit's estimated share of label errors, ``num_label_issues / n``.

    Returns:
        ``{"num_label_issues", "n_samples", "rate"}`` from the run's results:
        what ``noise-audit audit --fail-above RATE`` compares with ``RATE``.
    """
    _, results = load_audit(samples._dataset, key)
    n = len(results.ids)
    return {"num_label_issues": int(results.num_label_issues), "n_samples": n,
            "rate": float(results.num_label_issues / n) if n else 0.0}


# ------------------------------------------------------------------ reading


class _Audit:
    """The audited samples as arrays (view order) plus the run's config and results."""

    def __init__(self, dataset, config, results, view, key, truth_field):
        f = audit_fields(key)
        self.dataset, self.key, self.results, self.view = dataset, key, results, view
        serial = json.loads(json.dumps(config.serialize(), default=str))  # OrderedDicts -> plain JSON
        self.config = {k: v for k, v in serial.items() if k not in ("cls", "type", "method")}
        self.classes = list(results.classes)
        names = ["id", "filepath", f["influence"], f["self_influence"], f["label_quality"],
                 f["corruption_score"], f["suspect"], f"{f['prediction']}.label", f"{f['prediction']}.confidence"]
        if truth_field:
            names.append(truth_field)
        values = view.values(names)
        self.ids = np.array(values[0])
        self.filepaths = np.array(values[1])
        self.signals = {
            "average_influence": np.array(values[2], float), "self_influence": np.array(values[3], float),
            "label_quality": np.array(values[4], float), "corruption_score": np.array(values[5], float),
        }
        self.suspect = np.array([bool(v) for v in values[6]])
        self.predicted = np.array([p if p is not None else "" for p in values[7]], dtype=object)
        self.confidence = np.array([c if c is not None else np.nan for c in values[8]], float)
        self.truth = np.array([bool(v) for v in values[9]]) if truth_field else None
        pos = {i: k for k, i in enumerate(results.ids)}
        idx = np.array([pos[i] for i in self.ids])
        self.labels = np.array(results.labels)[idx]
        self.is_test = np.array(results.is_test, dtype=bool)[idx]
        self.index = {i: k for k, i in enumerate(self.ids)}

    def __len__(self):
        return len(self.ids)

    def label_name(self, i):
        return self.classes[int(self.labels[i])]

    def entry(self, i):
        """One sample as shown on the page (and stored in summary.json)."""
        e = {
            "id": str(self.ids[i]), "filepath": str(self.filepaths[i]),
            "split": "held-out" if self.is_test[i] else "train",
            "label": self.label_name(i), "predicted": str(self.predicted[i]),
            "confidence": _num(self.confidence[i]),
            **{name: _num(v[i]) for name, v in self.signals.items()},
            "suspect": bool(self.suspect[i]),
        }
        if self.truth is not None:
            e["flipped"] = bool(self.truth[i])
        return e


def _num(x):
    x = float(x)
    return None if np.isnan(x) else x


def _stats(values):
    v = np.asarray(values, float)
    if not len(v):
        return {"n": 0, "mean": None, "median": None, "std": None, "min": None, "max": None}
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max())}


# ---------------------------------------------------------------- sections


def _overview(a, results):
    n = len(results.ids)
    out = {
        "dataset": a.dataset.name, "key": a.key, "label_field": a.config.get("label_field"),
        "n_samples": n, "n_in_report": len(a), "n_train": int((~a.is_test).sum()), "n_held_out": int(a.is_test.sum()),
        "n_classes": len(a.classes), "classes": a.classes,
        "num_label_issues": int(results.num_label_issues),
        "label_error_rate": float(results.num_label_issues / n) if n else 0.0,
        "influence_method": a.config.get("influence_method"),
        "test_accuracy": float(results.test_accuracy), "test_f1_macro": float(results.test_f1_macro),
    }
    return out


def _data(a, per_class):
    counts = {}
    for k, c in enumerate(a.classes):
        m = a.labels == k
        counts[c] = {"train": int((m & ~a.is_test).sum()), "held_out": int((m & a.is_test).sum()), "total": int(m.sum())}
    rng = np.random.default_rng(0)
    examples = {}
    for k, c in enumerate(a.classes):
        members = np.flatnonzero((a.labels == k) & ~a.is_test)
        if not len(members):
            members = np.flatnonzero(a.labels == k)
        chosen = np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False)) if len(members) else []
        examples[c] = [a.entry(i) for i in chosen]
    return {"class_counts": counts, "split": a.config.get("split"), "examples": examples}


def _model(a, results):
    cm = np.asarray(results.test_confusion)
    per_class = {}
    for k, c in enumerate(a.classes):
        tp, pred, true = cm[k, k], cm[:, k].sum(), cm[k].sum()
        p = float(tp / pred) if pred else 0.0
        r = float(tp / true) if true else 0.0
        per_class[c] = {"precision": p, "recall": r, "f1": (2 * p * r / (p + r)) if p + r else 0.0, "support": int(true)}
    history = dict(results.history or {})
    return {
        "history": {"train_loss": list(history.get("train_loss", [])), "val_loss": list(history.get("val_loss", [])),
                    "grad_norm": history.get("grad_norm"), "steps_per_point": 10,
                    # the linear head starts from zero weights: uniform predictions, loss ln C
                    "initial_loss": None if a.config.get("train_last_block") else float(np.log(len(a.classes)))},
        "regularization": a.config.get("regularization"), "n_parameters": a.config.get("n_parameters"),
        "test_accuracy": float(results.test_accuracy), "test_f1_macro": float(results.test_f1_macro),
        "test_confusion": cm.tolist(), "per_class": per_class,
    }


def _scores(a):
    infl, score = a.signals["average_influence"], a.signals["corruption_score"]
    threshold = float(score[a.suspect].min()) if a.suspect.any() else None
    return {
        "average_influence_train_by_label": {
            c: _stats(infl[(a.labels == k) & ~a.is_test]) for k, c in enumerate(a.classes)},
        "corruption_score_by_label": {c: _stats(score[a.labels == k]) for k, c in enumerate(a.classes)},
        "suspect_threshold": threshold,
        "n_suspects": int(a.suspect.sum()),
    }


def _influence_extremes(a, k):
    out = {}
    infl = a.signals["average_influence"]
    for c_idx, c in enumerate(a.classes):
        members = np.flatnonzero((a.labels == c_idx) & ~a.is_test)
        order = members[np.argsort(infl[members], kind="stable")]
        out[c] = {"lowest": [a.entry(i) for i in order[:k]], "highest": [a.entry(i) for i in order[::-1][:k]]}
    return out


def _suspects(a, results, top_n):
    order = np.argsort(-a.signals["corruption_score"], kind="stable")[:top_n]
    top = [dict(a.entry(i), rank=r + 1) for r, i in enumerate(order)]
    per_class = {c: int(results.label_issues_per_class.get(c, 0)) for c in a.classes}
    out = {"num_label_issues": int(results.num_label_issues), "label_issues_per_class": per_class, "top": top}
    if a.truth is not None:
        out["flipped_per_class"] = {c: int((a.truth & (a.labels == k)).sum()) for k, c in enumerate(a.classes)}
        out["flagged_and_flipped_per_class"] = {
            c: int((a.truth & a.suspect & (a.labels == k)).sum()) for k, c in enumerate(a.classes)}
    return out


def _choose_explained(a, n):
    """Up to ``n`` held-out samples, one per class in turn, drawn with a fixed seed."""
    rng = np.random.default_rng(0)
    pools = [list(rng.permutation(np.flatnonzero((a.labels == k) & a.is_test))) for k in range(len(a.classes))]
    chosen = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop(0)))
    return chosen


def _explanations(a, n, k):
    from noise_audit.core.explain import most_influential_many

    chosen = _choose_explained(a, n)
    if not chosen:
        return []

    def enrich(e):
        j = a.index.get(e["id"])
        base = a.entry(j) if j is not None else {key: e[key] for key in ("id", "filepath", "label")}
        return dict(base, influence_on_target=e["influence"])

    explained = most_influential_many(a.dataset, [str(a.ids[i]) for i in chosen], a.key, k=k)
    return [{"target": a.entry(i), "most": [enrich(e) for e in ex["most"]], "least": [enrich(e) for e in ex["least"]]}
            for i, ex in zip(chosen, explained)]


def _thin(curve, n=PR_POINTS):
    m = len(curve["recall"])
    if m <= n:
        return curve
    keep = np.unique(np.linspace(0, m - 1, n).round().astype(int))
    return {k: [v[i] for i in keep] for k, v in curve.items()}


def _truth(a, truth_field):
    f = audit_fields(a.key)
    label_field = a.config.get("label_field")
    metrics = {name: evaluate(a.view, f[suffix], truth_field, label_field=label_field, cleaning=False)
               for name, suffix in SIGNALS.items()}
    curves = {}
    for name, suffix in SIGNALS.items():
        curves[name] = _thin(pr_curve(suspicion(name, a.signals[name]), a.truth))
    flagged = a.suspect
    flags = flag_metrics(flagged, a.truth)  # sklearn's precision and recall
    return {
        "field": truth_field, "n_flipped": int(a.truth.sum()), "n_clean": int((~a.truth).sum()),
        "n_flagged": int(flagged.sum()), "n_flagged_and_flipped": int((flagged & a.truth).sum()),
        "flagged_precision": flags["precision"] if flagged.any() else None,
        "flagged_recall": flags["recall"],
        "metrics": metrics, "pr_curves": curves,
        "calibration": calibration(a.signals["corruption_score"], a.truth),
        "cleaning": _cleaning(a),
    }


def _cleaning(a):
    """What cleaning buys (see :mod:`noise_audit.core.cleaning`), or None where it cannot be measured."""
    from noise_audit.core.cleaning import audit_cleaning_gain

    try:
        return audit_cleaning_gain(a.dataset, a.config, a.results, a.truth, a.suspect, ids=a.ids)
    except NoiseAuditError as e:
        return {"unavailable": str(e)}


def _run(a):
    timings = dict(a.config.get("timings") or {})
    config = {k: v for k, v in a.config.items() if k not in ("timings", "fields")}
    return {"config": config, "fields": a.config.get("fields"), "audit_timings": timings}


# ------------------------------------------------------------------ figures


def _figures(a, s):
    classes = a.classes
    figs = {
        "class_counts": plots.class_counts(classes, s["data"]["class_counts"]),
        "loss_curves": plots.loss_curves(s["model"]["history"]),
        "confusion": plots.confusion(classes, s["model"]["test_confusion"]),
        "influence_by_label": plots.influence_by_label(
            classes, {c: a.signals["average_influence"][(a.labels == k) & ~a.is_test] for k, c in enumerate(classes)}),
        "corruption_histogram": plots.corruption_histogram(
            classes, {c: a.signals["corruption_score"][a.labels == k] for k, c in enumerate(classes)},
            s["scores"]["suspect_threshold"]),
        "issues_per_class": plots.issues_per_class(
            classes, s["suspects"]["label_issues_per_class"], s["suspects"].get("flipped_per_class")),
    }
    if a.truth is not None:
        t, tr = a.truth, ~a.is_test
        by = lambda name, mask, flip: {c: a.signals[name][mask & (a.labels == k) & (t == flip)]  # noqa: E731
                                       for k, c in enumerate(classes)}
        figs["truth_influence"] = plots.clean_vs_flipped(
            classes, by("average_influence", tr, False), by("average_influence", tr, True),
            "Average influence of training samples", "average influence")
        everyone = np.ones(len(a), bool)
        figs["truth_score"] = plots.clean_vs_flipped(
            classes, by("corruption_score", everyone, False), by("corruption_score", everyone, True),
            "Corruption score", "corruption score")
        m = s["truth"]["metrics"]
        figs["pr_curves"] = plots.pr_curves(s["truth"]["pr_curves"], {n: m[n]["average_precision"] for n in m})
        figs["reliability"] = plots.reliability(s["truth"]["calibration"])
    return figs


def _thumbnails(s):
    """Every image the page shows, embedded once per file."""
    thumbs = plots.Thumbnails()
    paths = set()

    def walk(x):
        if isinstance(x, dict):
            if "filepath" in x and "id" in x:
                paths.add(x["filepath"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk({k: s[k] for k in ("data", "influence", "explanations", "suspects")})
    return {p: thumbs.get(p) for p in sorted(paths)}


# -------------------------------------------------------------------- entry


def report(samples: SampleCollection, key: str = "noise_audit", out_dir: str | os.PathLike[str] = "noise-audit-report",
           truth_field: str | None = None, top_n: int = 24, n_explained: int = 3, k_explained: int = 3,
           k_influential: int = 4, examples_per_class: int | None = None, progress: bool = True,
           on_progress: Callable[[str, float], Any] | None = None) -> dict[str, Any]:
    """Writes ``report.html``, ``summary.json`` and ``summary.md`` for an audit.

    Reads the audit ``key`` (its FiftyOne run and fields) and never writes to
    the dataset. Every argument is checked, and a :class:`NoiseAuditError`
    raised, before any file is written.

    Args:
        samples: the audited dataset, or a view of it (the report then covers
            the audited samples in the view; run-level numbers such as the
            estimated number of label errors stay the audit's).
        key: the audit's run key.
        out_dir: folder for the three files (created if needed; the files are
            replaced, nothing else in it is touched).
        truth_field: optional boolean field, ``True`` where a label is known
            to be wrong (e.g. ``label_flipped`` from
            :func:`noise_audit.inject_label_noise`); adds the ``truth`` section.
        top_n: suspects shown in the grid.
        n_explained: held-out images explained by their most and least
            influential training images (``0`` skips the section).
        k_explained: most helpful and most harmful training images shown per
            explained image.
        k_influential: lowest and highest influence images shown per class.
        examples_per_class: example images per class (default 8, fewer for
            many classes).
        progress: show a progress bar.
        on_progress: optional ``f(stage, fraction)`` callback.

    Returns:
        the summary (what ``summary.json`` holds), with ``files`` replaced by
        the absolute paths of the three files and ``seconds``, the time the
        report took.
    """
    path = check_out_dir(out_dir)
    dataset, config, results, view = _audited_view(samples, key)
    validation.truth_field(view, truth_field, both_values=True, optional=True)
    for name, v in (("top_n", top_n), ("n_explained", n_explained), ("k_explained", k_explained),
                    ("k_influential", k_influential)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise NoiseAuditError(f"{name} must be a non-negative integer, not {v!r}")

    timings: dict[str, float] = {}
    bar = tqdm(total=len(STAGES), desc="report", disable=not progress, unit="stage")
    clock = {"t": time.perf_counter()}

    def stage(name):
        if on_progress:
            on_progress(name, STAGES.index(name) / len(STAGES))
        bar.set_postfix_str(name)

    def done(name):
        now = time.perf_counter()
        timings[name] = round(now - clock["t"], 4)
        clock["t"] = now
        bar.update(1)

    t0 = time.perf_counter()
    try:
        summary, figures, thumbs = _build(dataset, config, results, view, key, truth_field, stage, done,
                                          dict(top_n=top_n, n_explained=n_explained, k_explained=k_explained,
                                               k_influential=k_influential, examples_per_class=examples_per_class))
        stage("write")
        summary["run"]["report_timings"] = dict(timings)
        figures["timings"] = plots.timings(summary["run"]["audit_timings"], timings)
        files = _write_files(path, summary, figures, thumbs)
        done("write")
    finally:
        bar.close()
    if on_progress:
        on_progress("done", 1.0)
    return dict(summary, files=files, seconds=round(time.perf_counter() - t0, 4))


def _build(dataset, config, results, view, key, truth_field, stage, done, opts):
    """The summary, the figures and the thumbnails, stage by stage."""
    stage("read")
    a = _Audit(dataset, config, results, view, key, truth_field)
    n_classes = len(a.classes)
    per_class = opts["examples_per_class"] or max(2, min(8, 96 // n_classes))
    summary = {
        "report_version": REPORT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "overview": dict(_overview(a, results), truth_field=truth_field),
        "data": _data(a, per_class),
        "model": _model(a, results),
        "scores": _scores(a),
        "influence": _influence_extremes(a, opts["k_influential"] if n_classes <= 10 else min(opts["k_influential"], 3)),
        "suspects": _suspects(a, results, opts["top_n"]),
    }
    done("read")

    stage("evaluate")
    summary["truth"] = _truth(a, truth_field) if truth_field else None
    done("evaluate")

    stage("figures")
    figures = _figures(a, summary)
    done("figures")

    stage("explanations")
    summary["explanations"] = _explanations(a, opts["n_explained"], opts["k_explained"]) if opts["n_explained"] else []
    done("explanations")

    stage("images")
    thumbs = _thumbnails(summary)
    summary["run"] = _run(a)
    done("images")
    return summary, figures, thumbs


def _write_files(path, summary, figures, thumbs):
    from noise_audit.reports.html import render_html
    from noise_audit.reports.markdown import render_markdown

    os.makedirs(path, exist_ok=True)
    files = {kind: os.path.join(path, name) for kind, name in FILES.items()}
    summary["files"] = dict(FILES)
    _write(files["json"], json.dumps(summary, indent=2, default=_json_default))
    _write(files["markdown"], render_markdown(summary))
    _write(files["html"], render_html(summary, figures, thumbs))
    return files


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _write(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
