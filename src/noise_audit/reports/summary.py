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
``review``
    What the review of the suspects found (:mod:`noise_audit.reports.review_section`):
    the estimated wrong labels with an interval, per-class noise rate and
    difficulty, reviewed and confirmed, the review's precision, the errors
    left, and the head's held-out accuracy before and after the corrections.
``truth`` (with ``truth_field``)
    How well the scores find known flips: clean vs flipped distributions per
    label (the seed's ``plot_corrupted_influences_distribution``), the seed's
    table of mean score per label split clean/flipped, and AUROC, AP,
    precision@k and precision-recall curves for the corruption score and each
    single signal (the numbers are :func:`noise_audit.metrics.evaluate`'s).
``run``
    The audit's configuration and the seconds each stage of the audit and of
    the report took.

Each section's numbers are computed in :mod:`noise_audit.reports.sections`
from the audit as read by :mod:`noise_audit.reports.audit_data`; the figures
live in :mod:`noise_audit.reports.plots`, the page in
:mod:`noise_audit.reports.html`, the tables in :mod:`noise_audit.reports.markdown`.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.reports import plots, sections
from noise_audit.reports.audit_data import AuditedSamples, audited_view
from noise_audit.reports.review_section import review_section
from noise_audit.store.runs import load_audit

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection

REPORT_VERSION = 1
FILES = {"html": "report.html", "json": "summary.json", "markdown": "summary.md"}
STAGES = ("read", "evaluate", "figures", "explanations", "images", "write")


def check_out_dir(out_dir: str | os.PathLike[str]) -> str:
    """Raises unless ``out_dir`` is, or can be made, a writable folder for the report's files."""
    return validation.out_dir(out_dir, FILES.values())


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

    walk({k: s[k] for k in ("data", "influence", "explanations", "suspects", "review") if s.get(k)})
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
    dataset, config, results, view = audited_view(samples, key)
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
    a = AuditedSamples(dataset, config, results, view, key, truth_field)
    n_classes = len(a.classes)
    per_class = opts["examples_per_class"] or max(2, min(8, 96 // n_classes))
    summary = {
        "report_version": REPORT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "overview": dict(sections.overview(a, results), truth_field=truth_field),
        "data": sections.data(a, per_class),
        "model": sections.model(a, results),
        "scores": sections.scores(a),
        "influence": sections.influence_extremes(a, opts["k_influential"] if n_classes <= 10 else min(opts["k_influential"], 3)),
        "suspects": sections.suspects(a, results, opts["top_n"]),
    }
    done("read")

    stage("evaluate")
    summary["truth"] = sections.truth(a, truth_field) if truth_field else None
    summary["review"] = review_section(a, results, opts["top_n"])
    done("evaluate")

    stage("figures")
    figures = _figures(a, summary)
    done("figures")

    stage("explanations")
    summary["explanations"] = sections.explanations(a, opts["n_explained"], opts["k_explained"]) if opts["n_explained"] else []
    done("explanations")

    stage("images")
    thumbs = _thumbnails(summary)
    summary["run"] = sections.run(a)
    done("images")
    return summary, figures, thumbs


def _write_files(path, summary, figures, thumbs):
    from noise_audit.reports.html import render_html
    from noise_audit.reports.markdown import render_markdown

    os.makedirs(path, exist_ok=True)
    files = {kind: os.path.join(path, name) for kind, name in FILES.items()}
    summary["files"] = dict(FILES)
    _replace_together(files, {"json": json.dumps(summary, indent=2, default=_json_default),
                              "markdown": render_markdown(summary), "html": render_html(summary, figures, thumbs)})
    return files


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _replace_together(files, texts):
    """Writes ``texts[kind]`` to ``files[kind]``; a failed write leaves every previous file as it was.

    All three files are written in full to temporary files beside them
    (``.<name>.<random>.tmp``, flushed to disk) before the first is renamed
    over its old copy, so a full disk, a size limit or any error while
    writing changes none of the previous report's files (and removes the
    temporary ones). Each rename is atomic; the three together are not: a
    process killed between them (a few microseconds) can leave new and old
    files side by side, which the ``created`` stamp in each file tells apart.
    A temporary file is created new (``O_EXCL``, a random name), so a file or
    link planted in a shared folder under a predictable name is never
    written through; the rename replaces a link at the final name, never
    its target.
    """
    tmps = {}
    try:
        for kind, text in texts.items():
            folder, name = os.path.split(files[kind])
            tmps[kind] = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
            fd = os.open(tmps[kind], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to open()
            with open(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        for kind in texts:
            os.replace(tmps[kind], files[kind])
    finally:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.remove(tmp)
