"""Offline study (issue 11): which suspect flag follows from the calibrated score.

The score is an estimated probability that the given label is wrong, so its sum over the audited rows is
the expected number of wrong labels. Three flags, all without the truth:
  count:     the top ``num_issues`` by score, cleanlab's confident-learning count (today's flag);
  threshold: ``score >= 0.5``, labels more likely wrong than right;
  expected:  the top ``round(sum of the audited rows' scores)`` by score.

PRE-REGISTRATION. The tuning cells (ten64, seeds 0-1) were scored before this was written, under the
calibration of round 3 (bench/vector_scaling_study.py): mean F1 count 0.7116, threshold 0.6642,
expected 0.7209. Rule: the flag with the best tuning F1 is adopted (``expected``); the reported cells
(everything else) are then scored once, by this script, and reported whatever they show.

    python bench/flag_study.py tuning
    python bench/flag_study.py reported
"""
import argparse
import json

import numpy as np

import quality_grid as qg
from _common import ROOT
from noise_audit.core import scores
from noise_audit.metrics import flag_metrics

FLAGS = ("count", "threshold", "expected")


def flags(c):
    s = c["corruption_score"]
    audited = ~np.asarray(c["is_test"], bool)
    return {"count": c["suspect"], "threshold": s >= 0.5,
            "expected": scores.flag_top(s, int(round(float(s[audited].sum()))))}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=("tuning", "reported"))
    args = p.parse_args()
    rows = {}
    for data in qg.DATA:
        for f in sorted((qg.GRID / data).glob("*-*-*.npz")):
            strategy, rate, seed = f.stem.split("-")
            if qg.is_tuning(data, int(seed)) != (args.which == "tuning"):
                continue
            c = qg.rescore(np.load(f))
            t = np.asarray(c["flipped"], bool)
            row = rows.setdefault(f"{data}/{strategy}/{rate}", {k: [] for k in FLAGS})
            for k, v in flags(c).items():
                row[k].append(flag_metrics(v, t)["f1"])
    table = {key: {k: float(np.mean(v)) for k, v in r.items()} for key, r in rows.items()}
    summary = {}
    for data in (*qg.DATA, "all"):
        rs = [v for k, v in table.items() if data == "all" or k.startswith(data + "/")]
        if rs:
            summary[data] = {k: float(np.mean([r[k] for r in rs])) for k in FLAGS}
            print(f"{data:8s} rows {len(rs):2d}  " + "  ".join(f"{k} {summary[data][k]:.4f}" for k in FLAGS))
    path = ROOT / "bench" / "results" / "flag_study.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old[args.which] = {"rows": table, "summary": summary}
    old["declared"] = __doc__
    path.write_text(json.dumps(old, indent=1))


if __name__ == "__main__":
    main()
