"""What the panel's review shows: the suspect queue, one suspect, the review's estimates.

The panel (``plugin/review_panel.py``) lays these out and turns its buttons
into :func:`noise_audit.review` calls; everything it displays is computed
here, so it is tested without the App:

- :func:`queue` lists the undecided suspects, most suspicious first (what
  the panel moves through), and :func:`next_suspect` the one after a given
  sample;
- :func:`suspect` is one sample as a review row: given label, suggested
  label and its confidence, score, the current decision;
- :func:`explanation` the training images that support and oppose its label;
- :func:`header_md` the estimates a reviewer plans with (Markdown; class and
  reviewer names escaped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from fiftyone import ViewField as F

from noise_audit.reports.markdown import md as esc_md  # user data in the panel's Markdown (noqa: the plugin uses it)
from noise_audit.store.ownership import config_fields
from noise_audit.store.review import known_classes, review_field
from noise_audit.store.runs import load_audit

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection
    from fiftyone.core.view import DatasetView

QUEUE_N = 10


def _fields(samples: SampleCollection, key: str) -> dict[str, str]:
    config, _ = load_audit(samples._dataset, key)
    return config_fields(config, key) | {"label_field": config.label_field}


def undecided(samples: SampleCollection, key: str) -> DatasetView:
    """The audited samples of ``samples`` without a review decision, most suspicious first."""
    f = _fields(samples, key)
    review = review_field(samples._dataset, key)
    return (samples.exists(f["corruption_score"]).match(~F(f"{review}.decision").exists())
            .sort_by(f["corruption_score"], reverse=True))


def _rows(view: DatasetView, f: Mapping[str, str], review: str) -> list[dict[str, Any]]:
    paths = ["id", "filepath", f"{f['label_field']}.label", f"{f['suggested_label']}.label",
             f"{f['suggested_label']}.confidence", f["corruption_score"], f"{review}.decision", f"{review}.label",
             f"{review}.reviewer"]
    names = ["id", "filepath", "given", "suggested", "confidence", "score", "decision", "decided_label", "reviewer"]
    return [dict(zip(names, row)) for row in zip(*view.values(paths))]


def queue(samples: SampleCollection, key: str, n: int = QUEUE_N, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The next ``n`` undecided suspects (rows of :func:`suspect`), leaving out ``skip``."""
    skip = list(skip)
    view = undecided(samples, key)
    if skip:
        view = view.exclude(skip)
    return _rows(view.limit(n), _fields(samples, key), review_field(samples._dataset, key))


def next_suspect(samples: SampleCollection, key: str, skip: Iterable[str] = ()) -> str | None:
    """The most suspicious undecided sample not in ``skip``, or ``None`` when the queue is empty."""
    rows = queue(samples, key, 1, skip)
    return rows[0]["id"] if rows else None


def suspect(samples: SampleCollection, key: str, sample_id: str) -> dict[str, Any]:
    """One sample as a review row: ``id``, ``filepath``, ``given``, ``suggested``,
    ``confidence``, ``score``, ``decision``, ``decided_label``, ``reviewer``, ``rank``
    (its place by score among the audited samples, 1 = most suspicious)."""
    f = _fields(samples, key)
    review = review_field(samples._dataset, key)
    row = _rows(samples._dataset.select([sample_id]), f, review)[0]
    higher = samples._dataset.match(F(f["corruption_score"]) > row["score"]).count()
    return dict(row, rank=higher + 1)


def classes(samples: SampleCollection, key: str) -> list[str]:
    """The classes a reviewer may set: the audited field's label schema."""
    config, results = load_audit(samples._dataset, key)
    return known_classes(samples._dataset, config.label_field, results)


def explanation(samples: SampleCollection, key: str, sample_id: str, k: int = 3) -> dict[str, Any]:
    """The ``k`` training images that most support and most oppose the sample's given label
    (:func:`noise_audit.most_influential`): ``{"label", "support": [...], "oppose": [...]}``,
    each ``{"id", "filepath", "label", "influence"}``."""
    from noise_audit.core.explain import most_influential

    out = most_influential(samples._dataset, sample_id, key, k=k)
    return {"label": out["label"], "support": out["most"], "oppose": out["least"]}


def header_md(estimates: Mapping[str, Any]) -> str:
    """The review's estimates as the panel's header (see :mod:`noise_audit.core.review_stats`)."""
    e, r = estimates, estimates["review"]
    err, left = e["errors"], r["errors_left"]
    precision = (f"precision so far **{r['precision']:.0%}** (the audit expected {r['expected_precision']:.0%})"
                 if r["precision"] is not None else "no decision yet")
    lines = [
        f"**{err['expected']:.0f}** wrong labels estimated among {e['n_samples']} ({e['rate']:.1%}; 95% interval "
        f"{err['low']:.0f}-{err['high']:.0f}). Reviewed **{r['reviewed']}**: **{r['confirmed_errors']}** errors "
        f"confirmed, {r['kept']} kept, {r['unsure']} unsure; {precision}. "
        f"Errors still left: **{left['expected']:.0f}** ({left['low']:.0f}-{left['high']:.0f}).",
        "Noise rate / difficulty per class: " + "; ".join(
            f"{esc_md(c['class'])} {_pct(c['noise_rate'])} / {_pct(c['difficulty'])}" for c in e["per_class"]) + ".",
    ]
    return "\n\n".join(lines)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"
