"""The report's ``review`` section: what the review found, what is left, what it bought.

Its numbers (:func:`review_section`): the estimates of
:mod:`noise_audit.core.review_stats` (wrong labels expected with their
interval, per-class noise rate and difficulty, reviewed, confirmed, the
review's precision, the errors left), the decisions by kind and reviewer,
the reviewed samples (most suspicious first), and the head's held-out
accuracy before and after the corrections (:mod:`noise_audit.core.review_gain`).
Rendered by :func:`review_html` and :func:`review_markdown`; user data
(class and reviewer names) goes through one escaping helper per format.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from noise_audit.errors import NoiseAuditError
from noise_audit.reports.numbers import fnum

TOP_REVIEWED = 24  # reviewed samples shown as cards


def review_section(a: Any, results: Any, top_n: int = TOP_REVIEWED) -> dict[str, Any]:
    """The section's numbers for the audit read by ``a`` (:class:`~noise_audit.reports.audit_data.AuditedSamples`)."""
    from noise_audit.core.review_gain import correction_gain
    from noise_audit.core.review_stats import review_estimates
    from noise_audit.store.review import decisions

    try:
        decided = decisions(a.dataset, a.key)
    except NoiseAuditError as e:
        return {"unavailable": str(e)}
    estimates = review_estimates(results.corruption_score, results.labels, results.is_test, list(results.classes),
                                 [str(i) for i in results.ids], decided, getattr(results, "test_confusion", None))
    order = [i for i in np.argsort(-a.signals["corruption_score"], kind="stable") if str(a.ids[i]) in decided]
    shown = [dict(a.entry(i), review=_entry(decided[str(a.ids[i])])) for i in order[:top_n]]
    out: dict[str, Any] = {
        "estimates": estimates, "n_decisions": len(decided),
        "by_decision": dict(Counter(d["decision"] for d in decided.values())),
        "by_reviewer": dict(Counter(d["reviewer"] for d in decided.values())),
        "reviewed": shown, "gain": None,
    }
    if decided:
        try:
            out["gain"] = correction_gain(a.dataset, a.config, results, decided)
        except NoiseAuditError as e:
            out["gain"] = {"unavailable": str(e)}
    return out


def _entry(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if k == "reviewed_at" and v is not None else v) for k, v in d.items()}


# -- rendering -------------------------------------------------------------------


def esc_html(x: object) -> str:
    """User data for the HTML page (one helper, so a stricter one can replace it)."""
    return html.escape(str(x), quote=True)




def _num(x: Any, kind: str = "g") -> str:
    return fnum(x, kind)


def _lines(s: Mapping[str, Any]) -> list[str]:
    """The section's sentences (plain text, numbers only: no user data)."""
    e, r = s["estimates"], s["estimates"]["review"]
    err, left = e["errors"], r["errors_left"]
    lines = [f"Estimated wrong labels: {err['expected']:.1f} of {_num(e['n_samples'])} ({_num(e['rate'], 'pct')}), "
             f"95% interval {err['low']:.1f} to {err['high']:.1f} (Poisson-binomial variance of the scores, "
             "normal approximation).",
             f"Reviewed {_num(r['reviewed'])} ({_num(r['unsure'])} unsure): {_num(r['confirmed_errors'])} errors "
             f"confirmed, {_num(r['kept'])} kept."]
    if r["precision"] is not None:
        lines.append(f"Precision of the review so far {_num(r['precision'], 'f')} (the audit expected "
                     f"{_num(r['expected_precision'], 'f')}).")
    lines.append(f"Errors still left among the undecided samples: {left['expected']:.1f} (95% interval "
                 f"{left['low']:.1f} to {left['high']:.1f}).")
    g = s.get("gain") or {}
    if "before" in g:
        lines.append(f"Held-out accuracy of the head: {_num(g['before'], 'pct')} before the corrections, "
                     f"{_num(g['after'], 'pct')} refit on the {_num(g['n_corrected_train'])} corrected training "
                     f"labels ({_num(g['n_corrected'])} corrections in all; held-out labels corrected too).")
    elif "unavailable" in g:
        lines.append(f"What the corrections buy: {g['unavailable']}")
    return lines


def _class_rows(s: Mapping[str, Any], esc: Any) -> list[list[str]]:
    return [[esc(c["class"]), _num(c["n"]), _num(c["noise_rate"], "pct"), _num(c["difficulty"], "pct"),
             f"{c['expected_errors']:.1f}", _num(c["reviewed"]), _num(c["confirmed_errors"])]
            for c in s["estimates"]["per_class"]]


CLASS_HEADERS = ["given label", "samples", "noise rate", "difficulty", "expected errors", "reviewed", "confirmed"]


def review_html(s: Mapping[str, Any] | None, card: Any, table: Any) -> str:
    """The section's HTML (``card`` and ``table`` are the page's own helpers)."""
    lead = ('<p class="lead">What the review of the suspects found and what is left. Noise rate: the mean corruption '
            "score of a given label; difficulty: the share of its held-out samples the head gets wrong.</p>")
    if not s or "unavailable" in s:
        return lead + f'<p class="muted">{esc_html((s or {}).get("unavailable", "No review."))}</p>'
    body = "".join(f"<p>{esc_html(line)}</p>" for line in _lines(s))
    who = ", ".join(f"{esc_html(k)} {_num(v)}" for k, v in s["by_reviewer"].items()) or "none yet"
    cards = "".join(card(e, [f"{esc_html(e['review']['decision'])} → <b>{esc_html(e['review']['label'] or '?')}</b>",
                             f"by {esc_html(e['review']['reviewer'])} · score {_num(e['corruption_score'], 'f')}"])
                    for e in s["reviewed"])
    return "".join([lead, body, f"<p>Decisions by reviewer: {who}.</p>",
                    table(CLASS_HEADERS, _class_rows(s, esc_html)),
                    f'<h3>Reviewed samples, most suspicious first</h3><div class="grid">{cards}</div>' if cards else ""])


def review_markdown(s: Mapping[str, Any] | None, md_table: Any, esc_md: Any) -> list[str]:
    """The section's Markdown lines (``md_table`` is the Markdown renderer's table helper,
    ``esc_md`` its escape of user data: :func:`noise_audit.reports.markdown.md`)."""
    out = ["## Review", ""]
    if not s or "unavailable" in s:
        return out + [esc_md((s or {}).get("unavailable", "No review.")), ""]
    out += [f"- {esc_md(line)}" for line in _lines(s)] + [""]
    out += [md_table(CLASS_HEADERS, _class_rows(s, esc_md)), ""]
    if s["reviewed"]:
        out += [md_table(["given", "decision", "label", "reviewer", "score"],
                         [[esc_md(e["label"]), esc_md(e["review"]["decision"]), esc_md(e["review"]["label"] or "-"),
                           esc_md(e["review"]["reviewer"]), _num(e["corruption_score"], "f")] for e in s["reviewed"]]), ""]
    return out
