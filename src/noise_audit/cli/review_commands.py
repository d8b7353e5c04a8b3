"""The review loop's commands: ``review`` (decide on samples), ``apply-review`` (write the
corrected label field), ``annotate`` (send the top suspects to an annotation tool) and
``load-annotations``. Each calls one library function and formats its result."""

from __future__ import annotations

import argparse
import json
from typing import Any

from noise_audit.cli.output import fmt, table


def _dataset(name: str) -> Any:
    from noise_audit.cli.commands import _load_dataset

    return _load_dataset(name)


def _estimates_text(e: dict[str, Any]) -> str:
    r = e["review"]
    err, left = e["errors"], r["errors_left"]
    lines = [
        f"estimated wrong labels: {err['expected']:.1f} of {e['n_samples']} ({e['rate']:.1%}), "
        f"95% interval {err['low']:.1f}-{err['high']:.1f}",
        f"reviewed {r['reviewed']} ({r['unsure']} unsure): {r['confirmed_errors']} errors confirmed, {r['kept']} kept; "
        f"precision {fmt(r['precision'])} (the audit expected {fmt(r['expected_precision'])})",
        f"errors still left: {left['expected']:.1f} (95% interval {left['low']:.1f}-{left['high']:.1f})",
    ]
    rows = [[c["class"], c["n"], fmt(c["noise_rate"]), fmt(c["difficulty"]), f"{c['expected_errors']:.1f}",
             c["confirmed_errors"]] for c in e["per_class"]]
    return "\n".join(lines + ["", table(rows, ["class", "samples", "noise rate", "difficulty", "expected errors",
                                               "confirmed"])])


def cmd_review(args: argparse.Namespace) -> str:
    import noise_audit as na

    from noise_audit.errors import NoiseAuditError

    ds = _dataset(args.dataset)
    if args.ids and not (args.undo or args.decision):
        raise NoiseAuditError("--ids needs --decision (or --undo)")
    if args.undo:
        out: dict[str, Any] = na.undo_review(ds, args.key, args.ids, reviewer=args.reviewer)
        text = f"undone {len(out['undone'])}; skipped {len(out['skipped'])} (no decision, or another reviewer's)"
    elif args.decision:
        rec = na.review(ds, args.key, args.ids, args.decision, label=args.label, reviewer=args.reviewer)
        out = {"key": rec["key"], "decision": rec["decision"], "n": rec["n"],
               "labels": {i: e["label"] for i, e in rec["entries"].items()}}
        text = f"recorded {rec['decision']!r} for {rec['n']} samples of audit {args.key!r}"
    else:
        out, text = {}, ""
    out["estimates"] = na.review_estimates(ds, args.key)
    if args.json:
        return json.dumps(out, indent=2, default=str)
    return (text + "\n" if text else "") + _estimates_text(out["estimates"])


def cmd_apply_review(args: argparse.Namespace) -> str:
    import noise_audit as na

    ds = _dataset(args.dataset)
    out: dict[str, Any] = na.apply_review(ds, args.key, out_field=args.out_field)
    text = (f"wrote {out['out_field']!r}: {out['source_field']!r} with {out['corrected']} corrections "
            f"({out['kept']} kept, {out['unsure']} unsure, {out['stale']} stale decisions) on {out['n_samples']} samples")
    if args.reaudit:
        new_key = args.reaudit_key or f"{args.key}_reviewed"
        r = na.reaudit(ds, args.key, out["out_field"], new_key=new_key, overwrite=True, progress=not args.json)
        out["reaudit"] = {"key": new_key, "num_label_issues": int(r.num_label_issues), "timings_s": r.timings}
        text += (f"\nre-audited {out['out_field']!r} under key {new_key!r} in {r.timings.get('total', 0):.1f} s "
                 f"(warm start from {args.key!r}): {r.num_label_issues} estimated label issues")
    return json.dumps(out, indent=2) if args.json else text


def add_review_commands(add: Any) -> None:
    """Adds the commands with ``add(name, func, help)`` (:func:`noise_audit.cli.parser.build_parser`'s)."""
    from noise_audit.validation import REVIEW_DECISIONS

    rv = add("review", cmd_review, "Record review decisions on audited samples (never in the audited label field); "
                                   "prints the review's estimates.")
    rv.add_argument("--dataset", required=True)
    rv.add_argument("--key", default="noise_audit")
    rv.add_argument("--ids", nargs="+", default=[], metavar="ID", help="the samples decided on")
    rv.add_argument("--decision", choices=REVIEW_DECISIONS,
                    help="accept: the suggested label; keep: the given label; relabel: --label; unsure")
    rv.add_argument("--label", help="the class, with --decision relabel")
    rv.add_argument("--reviewer", help="who decided (default $NOISE_AUDIT_REVIEWER or the login name)")
    rv.add_argument("--undo", action="store_true", help="revert your current decision on --ids instead")

    ap = add("apply-review", cmd_apply_review, "Write a new label field: the audited labels with the review's "
                                               "corrections (unsure and kept samples tagged).")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--key", default="noise_audit")
    ap.add_argument("--out-field", default="ground_truth_reviewed", help="the new field (default ground_truth_reviewed)")
    ap.add_argument("--reaudit", action="store_true",
                    help="then audit the new field with the audit's settings, warm-started from it (cached features)")
    ap.add_argument("--reaudit-key", help="the re-audit's key (default KEY_reviewed; replaced if it exists)")
