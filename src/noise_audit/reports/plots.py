"""Figures and thumbnails of a noise-audit report, as embeddable PNG/JPEG data.

Every function here takes plain numbers (the report's summary, see
:mod:`noise_audit.reports.summary`) and returns a ``data:`` URI, so the HTML page
opens from disk with no network and no JavaScript. Figures are drawn with
matplotlib's object API on an Agg canvas (no ``pyplot``: a report never
touches the caller's global plotting state or opens a window).

Each figure has a title, labelled axes and a legend wherever it shows more
than one series; colours are fixed per role so the page reads the same from
one report to the next: blue = clean / training, orange = held-out, red =
flipped / suspect.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CLEAN, HELD_OUT, FLIPPED, GREY = "#3b75af", "#ef8636", "#c53a32", "#8c8c8c"
PALETTE = ["#3b75af", "#ef8636", "#519e3e", "#c53a32", "#8d69b8", "#84584e", "#d57dbf", "#7f7f7f", "#bcbc45", "#58bbcc"]
DPI = 110


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax, title, xlabel, ylabel):
    ax.set_title(title, fontsize=11, fontweight="bold", loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.25, linewidth=0.6)
    ax.set_axisbelow(True)


def to_data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plot_text(text: object) -> str:
    r"""``text`` as literal figure text: the one escape for matplotlib.

    matplotlib reads text between two ``$`` as TeX math: a class named
    ``$\frac{$`` would raise while the figure is drawn, and ``$x^2$`` would
    show as a formula. An escaped ``\$`` is shown as ``$``. A legend also
    drops every label that starts with ``_`` (matplotlib's mark for "no
    legend"), so such a name is led by an invisible zero-width space. A
    character that is not printable (other than a newline) is shown as its
    Python escape (``\x1b``): fonts have no glyph for it. Every class name in
    a figure goes through this.
    """
    text = "".join(ch if ch.isprintable() or ch in " \n" else repr(ch)[1:-1] for ch in str(text))
    text = text.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def _color(i):
    return PALETTE[i % len(PALETTE)]


def _bins(*arrays, n=40):
    present = [np.asarray(a, float) for a in arrays if len(a)]
    values = np.concatenate(present) if present else np.zeros(0)
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n + 1)


# --------------------------------------------------------------------- data


def class_counts(classes: Sequence[str], counts: Mapping[str, Mapping[str, int]]) -> str:
    """Grouped horizontal bars: training and held-out samples per class."""
    fig = _figure(7.0, 0.8 + 0.42 * len(classes))
    ax = fig.add_subplot()
    y = np.arange(len(classes))
    train = [counts[c]["train"] for c in classes]
    test = [counts[c]["held_out"] for c in classes]
    ax.barh(y - 0.2, train, height=0.4, color=CLEAN, label="training")
    ax.barh(y + 0.2, test, height=0.4, color=HELD_OUT, label="held-out")
    for yi, a, b in zip(y, train, test):
        ax.text(a, yi - 0.2, f" {a}", va="center", fontsize=8)
        ax.text(b, yi + 0.2, f" {b}", va="center", fontsize=8)
    ax.set_yticks(y, [plot_text(c) for c in classes])
    ax.invert_yaxis()
    ax.margins(x=0.12)
    _style(ax, "Samples per class and split", "samples", "given label")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return to_data_uri(fig)


# -------------------------------------------------------------------- model


def loss_curves(history: Mapping[str, Any]) -> str:
    """Training and validation loss of the head along its L-BFGS steps.

    The head starts from zero weights (uniform predictions, loss ``ln C``),
    drawn at iteration 0 when known; L-BFGS then usually reaches the minimum
    within the first recorded chunk of iterations, so a flat curve after it
    is the expected picture.
    """
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    train, val = list(history.get("train_loss") or []), list(history.get("val_loss") or [])
    steps = history.get("steps_per_point", 10)
    start = history.get("initial_loss")
    x0 = [0] if start is not None else []
    s0 = [start] if start is not None else []
    ax.plot(x0 + list(np.arange(1, len(train) + 1) * steps), s0 + train, "-o", ms=3, color=CLEAN, label="training loss")
    if val:
        ax.plot(x0 + list(np.arange(1, len(val) + 1) * steps), s0 + val, "-o", ms=3, color=HELD_OUT,
                label="validation (held-out) loss")
    ax.set_ylim(bottom=0)
    _style(ax, "Head training: cross-entropy per L-BFGS step", "L-BFGS iterations", "mean cross-entropy")
    ax.legend(frameon=False)
    return to_data_uri(fig)


def confusion(classes: Sequence[str], matrix: npt.ArrayLike) -> str:
    """Confusion matrix on the held-out set, counts in the cells."""
    m = np.asarray(matrix)
    side = 2.6 + 0.45 * len(classes)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues")
    top = m.max() or 1
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=9,
                    color="white" if m[i, j] > top / 2 else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, [plot_text(c) for c in classes], rotation=35, ha="right")
    ax.set_yticks(ticks, [plot_text(c) for c in classes])
    ax.set_title("Held-out confusion matrix", fontsize=11, fontweight="bold", loc="left")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("given label")
    fig.colorbar(im, ax=ax, shrink=0.8, label="samples")
    return to_data_uri(fig)


# ------------------------------------------------------------------- scores


def influence_by_label(classes: Sequence[str], values_by_class: Mapping[str, npt.ArrayLike]) -> str:
    """The seed's ``plot_influence_distribution_by_label``: one histogram per label."""
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    bins = _bins(*values_by_class.values())
    for i, c in enumerate(classes):
        ax.hist(values_by_class[c], bins=bins, alpha=0.55, color=_color(i), label=plot_text(c), edgecolor="white", linewidth=0.3)
    ax.axvline(0, color="black", linewidth=0.8, linestyle="--")
    _style(ax, "Average influence of training samples on the held-out set, by given label",
           "average influence (positive = helpful)", "training samples")
    ax.legend(title="given label", frameon=False, fontsize=8)
    return to_data_uri(fig)


def corruption_histogram(classes: Sequence[str], values_by_class: Mapping[str, npt.ArrayLike],
                         threshold: float | None) -> str:
    """Stacked histogram of the corruption score by label, suspect cut-off marked."""
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 41)
    data = [values_by_class[c] for c in classes]
    ax.hist(data, bins=bins, stacked=True, color=[_color(i) for i in range(len(classes))],
            label=[plot_text(c) for c in classes], edgecolor="white", linewidth=0.3)
    if threshold is not None:
        ax.axvline(threshold, color=FLIPPED, linewidth=1.2, linestyle="--", label=f"suspect cut-off ({threshold:.3f})")
    ax.set_yscale("log")
    _style(ax, "Corruption score of every audited sample", "corruption score (higher = more likely mislabeled)",
           "samples (log scale)")
    ax.legend(title="given label", frameon=False, fontsize=8)
    return to_data_uri(fig)


def issues_per_class(classes: Sequence[str], estimated: Mapping[str, int],
                     flipped: Mapping[str, int] | None = None) -> str:
    """Estimated label errors per class, beside the injected truth when known."""
    fig = _figure(7.0, 0.8 + 0.42 * len(classes))
    ax = fig.add_subplot()
    y = np.arange(len(classes))
    h = 0.4 if flipped is not None else 0.7
    est = [estimated.get(c, 0) for c in classes]
    ax.barh(y - (0.2 if flipped is not None else 0), est, height=h, color=GREY, label="suspects (estimated errors)")
    for yi, v in zip(y, est):
        ax.text(v, yi - (0.2 if flipped is not None else 0), f" {v}", va="center", fontsize=8)
    if flipped is not None:
        fl = [flipped.get(c, 0) for c in classes]
        ax.barh(y + 0.2, fl, height=h, color=FLIPPED, label="actually flipped (truth)")
        for yi, v in zip(y, fl):
            ax.text(v, yi + 0.2, f" {v}", va="center", fontsize=8)
    ax.set_yticks(y, [plot_text(c) for c in classes])
    ax.invert_yaxis()
    ax.margins(x=0.12)
    _style(ax, "Estimated label errors per given label", "samples", "given label")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return to_data_uri(fig)


# -------------------------------------------------------------------- truth


def clean_vs_flipped(classes: Sequence[str], clean_by_class: Mapping[str, npt.ArrayLike],
                     flipped_by_class: Mapping[str, npt.ArrayLike],
                     what: str, xlabel: str) -> str:
    """The seed's ``plot_corrupted_influences_distribution``: per label, clean vs flipped."""
    n = len(classes)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig = _figure(3.4 * cols + 0.4, 2.7 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, c in enumerate(classes):
        ax = axes[k // cols][k % cols]
        clean, flip = np.asarray(clean_by_class[c], float), np.asarray(flipped_by_class[c], float)
        bins = _bins(clean, flip, n=30)
        ax.hist(clean, bins=bins, alpha=0.6, color=CLEAN, label=f"clean ({len(clean)})", density=True)
        if len(flip):
            ax.hist(flip, bins=bins, alpha=0.6, color=FLIPPED, label=f"flipped ({len(flip)})", density=True)
        _style(ax, f"given label: {plot_text(c)}", xlabel, "density")
        ax.title.set_fontsize(10)
        ax.legend(frameon=False, fontsize=8)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.suptitle(f"{what}: clean vs flipped samples", fontsize=11, fontweight="bold", x=0.01, ha="left")
    return to_data_uri(fig)


def pr_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], aps: Mapping[str, float]) -> str:
    """Precision-recall curves of the corruption score (bold) and each single signal."""
    fig = _figure(5.4, 4.2)
    ax = fig.add_subplot()
    others = iter(c for c in PALETTE if c != FLIPPED)
    for name, curve in curves.items():
        main = name == "corruption_score"
        ax.step(curve["recall"], curve["precision"], where="post", color=FLIPPED if main else next(others),
                linewidth=2.6 if main else 1.4, label=f"{name} (AP {aps[name]:.3f})", zorder=3 if main else 2)
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.03)
    _style(ax, "Precision-recall: finding the flipped labels", "recall (share of flips found)",
           "precision (share of flagged that are flips)")
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    return to_data_uri(fig)


def reliability(calibration: Mapping[str, Any]) -> str:
    """Reliability diagram: per score bin, the share of flipped samples against the
    bin's mean score (on the diagonal = calibrated); marker area ~ samples."""
    fig = _figure(4.6, 4.2)
    ax = fig.add_subplot()
    pts = [(b["mean_score"], b["share_flipped"], b["n"]) for b in calibration["bins"] if b["n"]]
    ax.plot([0, 1], [0, 1], color="#9aa0a6", linewidth=1, linestyle="--", label="calibrated")
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=FLIPPED, linewidth=1.6)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[12 + 30 * np.log10(p[2]) for p in pts], color=FLIPPED,
               zorder=3, label="corruption score")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    _style(ax, f"Reliability: expected calibration error {calibration['ece']:.3f}", "corruption score (bin mean)",
           "share of the bin's labels that are wrong")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    return to_data_uri(fig)


# ------------------------------------------------------------------ timings


def timings(audit_timings: Mapping[str, float], report_timings: Mapping[str, float]) -> str:
    """Seconds per stage of the audit and of the report."""
    items = [(f"audit: {k}", v) for k, v in audit_timings.items() if k != "total"]
    items += [(f"report: {k}", v) for k, v in report_timings.items() if k != "total"]
    fig = _figure(5.6, 0.8 + 0.32 * len(items))
    ax = fig.add_subplot()
    y = np.arange(len(items))
    vals = [v for _, v in items]
    ax.barh(y, vals, color=[CLEAN if n.startswith("audit") else HELD_OUT for n, _ in items])
    for yi, v in zip(y, vals):
        ax.text(v, yi, f" {v:.2f} s", va="center", fontsize=8)
    ax.set_yticks(y, [n for n, _ in items])
    ax.invert_yaxis()
    ax.margins(x=0.15)
    _style(ax, "Time per stage", "seconds", "")
    return to_data_uri(fig)


# --------------------------------------------------------------- thumbnails


class Thumbnails:
    """Images as small embedded JPEGs, each file read and encoded once.

    Images are downscaled to at most ``max_side`` pixels; smaller ones (Tiny
    ImageNet's 64 px) are kept as they are and enlarged by the browser with
    ``image-rendering: pixelated``, so they stay sharp instead of blurred.
    """

    max_side: int
    quality: int
    _cache: dict[str, tuple[str | None, int, int]]

    def __init__(self, max_side: int = 192, quality: int = 90) -> None:
        self.max_side, self.quality, self._cache = max_side, quality, {}

    def get(self, path: str) -> tuple[str | None, int, int]:
        """``(data_uri, width, height)``, or ``(None, 0, 0)`` for an unreadable file."""
        if path not in self._cache:
            self._cache[path] = self._encode(path)
        return self._cache[path]

    def _encode(self, path):
        from PIL import Image

        try:
            with warnings.catch_warnings():  # a decompression bomb is not shown (it is not decoded either)
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(path)
            with im:
                im = im.convert("RGB")
                im.thumbnail((self.max_side, self.max_side))
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=self.quality)
                size = im.size
        except Exception:  # noqa: BLE001 - a missing image is shown as missing, not fatal
            return None, 0, 0
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), size[0], size[1]
