"""Study, round 6 (issues 9 and 11): keep the clean-and-refit step only when it predicts the held-out labels better.

Step 2 of the score (noise_audit.core.scores) fits the folds again without the first ranking's top
suspects, as many as cleanlab estimates are wrong, and both the ranking's loss view and step 3's noise
model then read these cleaner folds. Where the flips are systematic this is what beats cleanlab. Under a
weak head cleanlab's count is far above the truth (cifar32: 26% of the training images on the clean
audit, 30% at 5% uniform flips), and the refit throws away a quarter or more of the clean images.

Where the idea came from, said plainly: ``bench/limits_study.py``, run on the *reported* cells with the
truth, found that on cifar32 no weight of the two views reaches cleanlab's label quality under uniform
and pair flips at 5-10% (oracle weight AP 0.190 against 0.246 at 5% uniform); the cleaner folds' view is
the weak one, not the weighting. That is why this candidate exists; it was not found on the tuning cells.

The candidate has no parameter to tune. The held-out rows' given labels, which the audit already takes
as right (average influence and step 3's recalibration are measured on them), say whether the refit
made the folds better: their out-of-fold log loss under the first folds and under the cleaner ones.

PRE-REGISTRATION (written and committed before any cell of this round was scored)
---------------------------------------------------------------------------------
  old: today's score: the cleaner folds' logits wherever the score reads them (the ranking's loss view,
       step 3's noise model);
  new: the same, except that when the audit has at least MIN_HELD_OUT (100) held-out rows and the
       cleaner folds' mean log loss of the held-out rows' given labels (raw logits, as fit) is higher than
       the first folds', the first folds' logits are used in their place (both views, both steps).
       Fewer held-out rows: as old.
Stored arrays only (.cache/grid, the final code's cells): the heads are not refit, so the study is exact
for both. Rule: tuning cells (ten64, seeds 0-1) first; new is adopted unless, there, its mean AP is lower
than old's by more than 0.002 or its pooled ECE higher by more than 0.002 (it would then be dropped
unscored). If adopted, the reported cells are scored once and reported whatever they show, and the
library takes the change only if the reported mean AP is not lower (one-sided: the idea came from
reported cells, so a loss there is not explained away).

    python bench/refit_gate_study.py tuning
    python bench/refit_gate_study.py reported
"""
import argparse
import json

import numpy as np

import quality_grid as qg
from _common import ROOT

MIN_HELD_OUT = 100
RESULTS = ROOT / "bench" / "results" / "refit_gate_study.json"


def held_out_log_loss(logits, y, test):
    from noise_audit.core import scores

    return float(scores.given_label_loss(np.asarray(logits, float)[test], y[test]).mean())


def gated(c):
    """The cell with the candidate's logits in ``clean_oos_logits`` (and whether the refit was kept)."""
    c = dict(c)
    y, test = c["y_noisy"], c["is_test"].astype(bool)
    first, clean = held_out_log_loss(c["oos_logits"], y, test), held_out_log_loss(c["clean_oos_logits"], y, test)
    keep = test.sum() < MIN_HELD_OUT or clean <= first
    if not keep:
        c["clean_oos_logits"] = c["oos_logits"]
    return c, {"kept_refit": bool(keep), "held_out_loss_first": first, "held_out_loss_clean": clean}


def score_with_loss_temperature(choose_t):
    """``scores.corruption_score`` as it stood for rounds 6 and 7, with the loss view read at
    ``choose_t(labels, clean_oos_logits, t, is_test)`` (``t``: the first folds' temperature). Frozen
    here, not the library's current function, so that rerunning a round scores what it declared."""
    from noise_audit.core import scores

    def corruption_score(labels, oos_logits, clean_oos_logits, average_influence, is_test=None,
                         influence_weight=0.5):
        labels = np.asarray(labels)
        t = choose_t(labels, clean_oos_logits, scores.temperature(oos_logits, labels), is_test)
        clean_loss = scores.given_label_loss(np.asarray(clean_oos_logits, dtype=float) / t, labels)
        ranking = scores.ranking_score(average_influence, clean_loss, influence_weight)
        target = scores.wrong_label_posterior(labels, oos_logits, clean_oos_logits, is_test)
        return scores.calibrate(ranking, target), ranking

    return corruption_score


def first_folds_temperature(labels, clean_oos_logits, t, is_test):
    return t


BEFORE_ROUND_7 = score_with_loss_temperature(first_folds_temperature)


def load(tuning, candidate=None, corruption_score=BEFORE_ROUND_7):
    """The tuning or the reported cells, rescored with ``corruption_score`` in the place of the library's;
    ``candidate(stored) -> (stored, info)`` first changes each cell's arrays (and may note what it chose
    in ``info``)."""
    from noise_audit.core import scores

    library, scores.corruption_score = scores.corruption_score, corruption_score
    try:
        return _load(tuning, candidate)
    finally:
        scores.corruption_score = library


def _load(tuning, candidate):
    cells, gates = {}, {}
    for data in qg.DATA:
        for f in sorted((qg.GRID / data).glob("*-*-*.npz")):
            strategy, rate, seed = f.stem.split("-")
            if qg.is_tuning(data, int(seed)) != tuning:
                continue
            stored = dict(np.load(f))
            if candidate is not None:
                stored, gates[f"{data}/{strategy}/{rate}/{seed}"] = candidate(stored)
            c = qg.rescore(stored)
            m = qg.cell_metrics(c)
            m.update(data=data, strategy=strategy, rate=float(rate), seed=int(seed), tuning=tuning)
            m["_arrays"] = (c["corruption_score"], c["flipped"].astype(bool))
            cells[f"{data}/{strategy}/{rate}/{seed}"] = m
    return cells, gates


def pooled(cells):
    from noise_audit.metrics import calibration

    out = {}
    for data in qg.DATA:
        arrays = [c["_arrays"] for c in cells.values() if c["data"] == data]
        if arrays:
            cal = calibration(np.concatenate([a[0] for a in arrays]), np.concatenate([a[1] for a in arrays]))
            out[data] = {"ece": cal["ece"], "mean_score": cal["mean_score"], "error_rate": cal["error_rate"]}
    return out


def summary(cells, tuning):
    rows = qg.summarize(cells, tuning)
    return {
        "mean_ap": float(np.mean([r["ap"]["corruption_score"] for r in rows])),
        "ap_ok": sum(r["ap_ok"] for r in rows), "auroc_ok": sum(r["auroc_ok"] for r in rows),
        "mean_f1_suspect": float(np.mean([r["f1_suspect"] for r in rows])),
        "per_data": {d: {"mean_ap": float(np.mean([r["ap"]["corruption_score"] for r in rows if r["data"] == d])),
                         "ap_ok": sum(r["ap_ok"] for r in rows if r["data"] == d),
                         "auroc_ok": sum(r["auroc_ok"] for r in rows if r["data"] == d)}
                     for d in qg.DATA if any(r["data"] == d for r in rows)},
        "pooled": pooled(cells),
        "rows": [{k: r[k] for k in ("data", "strategy", "rate", "ap", "auroc", "ap_ok", "auroc_ok", "ece",
                                    "mean_score", "error_rate", "f1_suspect")} for r in rows],
    }


def run_round(doc, results, candidate, info_key, flag, label, corruption_score=BEFORE_ROUND_7):
    """The command line of rounds 6 and 7: old and new scored on the tuning or the reported cells,
    printed, and kept in ``results`` beside the round's declaration, with each cell's ``info`` under
    ``info_key``; ``flag`` names the ``info`` entry counted per data set and strategy."""
    p = argparse.ArgumentParser()
    p.add_argument("part", choices=("tuning", "reported"))
    args = p.parse_args()
    tuning = args.part == "tuning"
    res = json.loads(results.read_text()) if results.is_file() else {"declared": doc}
    old, _ = load(tuning)
    new, infos = load(tuning, candidate, corruption_score)
    res[args.part] = {"old": summary(old, tuning), "new": summary(new, tuning), info_key: infos}
    for name in ("old", "new"):
        r = res[args.part][name]
        print(f"{args.part} {name}: mean AP {r['mean_ap']:.4f}, AP ok {r['ap_ok']}, AUROC ok {r['auroc_ok']}, "
              f"F1 {r['mean_f1_suspect']:.4f}, "
              f"{ {d: (round(v['mean_ap'], 4), v['ap_ok'], v['auroc_ok']) for d, v in r['per_data'].items()} } "
              f"ECE { {d: round(v['ece'], 4) for d, v in r['pooled'].items()} } "
              f"mean/rate { {d: (round(v['mean_score'], 3), round(v['error_rate'], 3)) for d, v in r['pooled'].items()} }")
    counts = {}
    for key, info in infos.items():
        counts.setdefault("/".join(key.split("/")[:2]), []).append(info[flag])
    print(f"{label}: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in counts.items()))
    results.write_text(json.dumps(res, indent=1, default=float))


def main():
    run_round(__doc__, RESULTS, gated, "gates", "kept_refit", "refit kept")


if __name__ == "__main__":
    main()
