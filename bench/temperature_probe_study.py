"""Study, round 7 (issue 9): the held-out rows choose the loss view's temperature, by flips planted on them.

The ranking reads the cleaner folds' loss of the given label at the first folds' temperature ``t``
(noise_audit.core.scores.corruption_score), a choice made on the tuning cells. ``bench/limits_study.py``
(run on the *reported* cells with the truth; that is where this idea comes from) found that the choice
pulls the data sets opposite ways: at ``t`` ten64's loss view is better (tuning and reported cells alike:
AP 0.911 against 0.897 at the raw logits under pair flips), cifar32's worse (0.384 against 0.441 under
uniform flips). A fixed choice cannot serve both; the audit has to see which one its data wants.

It can, without the truth. A held-out row's out-of-fold logits do not depend on its own label, and its
given label is taken as right (the audit already does so for average influence and step 3). Give every
held-out row, as well, one planted wrong label (uniform over the other classes, seed 0): a view that ranks
wrong labels above right ones ranks the planted labels' losses above the given ones'. Its AUROC there
is measured for the loss at ``t`` and at the raw logits.

PRE-REGISTRATION (written and committed before any reported cell of this round was scored)
------------------------------------------------------------------------------------------
  old: today's score (the loss view at ``t``);
  new: the loss view at the raw logits when, on the held-out rows with their planted labels, the raw
       logits' AUROC is higher than ``t``'s; otherwise at ``t``. Fewer than 100 held-out rows (or none):
       as old. Only the final ranking changes (step 2's first ranking and step 3's noise model do not),
       so the study on the stored arrays is exact; the stored "what cleaning buys" accuracies are the old
       suspects' and are not compared.
Tuning cells, computed before this was written (a scratch probe, the same rule): the planted-label AUROC
prefers ``t`` in all 32 (0.982-0.984 against 0.979-0.982), as the flips themselves do in all 32, so new
and old are the same there. Rule: as round 6. new goes on to the reported cells unless its tuning mean
AP is lower than old's by more than 0.002 or its pooled ECE higher by more than 0.002; the reported cells
are then scored once and reported whatever they show; the library takes it only if the reported mean AP
is not lower and no data set's pooled ECE is higher by more than 0.005 (one-sided, the idea having come
from reported cells).

    python bench/temperature_probe_study.py tuning
    python bench/temperature_probe_study.py reported
"""
import argparse
import json

import numpy as np

import refit_gate_study as study
from _common import ROOT

MIN_HELD_OUT = 100
RESULTS = ROOT / "bench" / "results" / "temperature_probe_study.json"


def planted_auroc(logits, labels, held_out, seed=0):
    """AUROC of the given-label loss at separating a planted wrong label from the given one, on the held-out rows."""
    from sklearn.metrics import roc_auc_score

    from noise_audit.core import scores

    z, y = np.asarray(logits, float)[held_out], np.asarray(labels)[held_out]
    n_classes = z.shape[1]
    planted = (y + np.random.default_rng(seed).integers(1, n_classes, size=len(y))) % n_classes
    right, wrong = scores.given_label_loss(z, y), scores.given_label_loss(z, planted)
    return float(roc_auc_score(np.r_[np.zeros(len(y)), np.ones(len(y))], np.r_[right, wrong]))


def prefers_raw(labels, clean_oos_logits, t, is_test):
    if is_test is None or np.asarray(is_test, bool).sum() < MIN_HELD_OUT:
        return False, {}
    held_out = np.asarray(is_test, bool)
    auroc = {"temperature": planted_auroc(np.asarray(clean_oos_logits, float) / t, labels, held_out),
             "raw": planted_auroc(clean_oos_logits, labels, held_out)}
    return auroc["raw"] > auroc["temperature"], auroc


def candidate_corruption_score(labels, oos_logits, clean_oos_logits, average_influence, is_test=None,
                               influence_weight=0.5):
    """``scores.corruption_score`` of today, with the loss view's temperature chosen by :func:`prefers_raw`."""
    from noise_audit.core import scores

    labels = np.asarray(labels)
    t = scores.temperature(oos_logits, labels)
    raw, _ = prefers_raw(labels, clean_oos_logits, t, is_test)
    clean_loss = scores.given_label_loss(np.asarray(clean_oos_logits, dtype=float) / (1.0 if raw else t), labels)
    ranking = scores.ranking_score(average_influence, clean_loss, influence_weight)
    target = scores.wrong_label_posterior(labels, oos_logits, clean_oos_logits, is_test)
    return scores.calibrate(ranking, target), ranking


def choice(stored):
    """The stored cell unchanged, and what the probe chose for it."""
    from noise_audit.core import scores

    y = stored["y_noisy"]
    raw, auroc = prefers_raw(y, stored["clean_oos_logits"], scores.temperature(stored["oos_logits"], y),
                             stored["is_test"])
    return stored, {"raw": bool(raw), **{f"auroc_{k}": v for k, v in auroc.items()}}


def main():
    from noise_audit.core import scores

    p = argparse.ArgumentParser()
    p.add_argument("part", choices=("tuning", "reported"))
    args = p.parse_args()
    tuning = args.part == "tuning"
    res = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"declared": __doc__}
    old, _ = study.load(tuning)
    today = scores.corruption_score
    scores.corruption_score = candidate_corruption_score
    try:
        new, picks = study.load(tuning, choice)
    finally:
        scores.corruption_score = today
    res[args.part] = {"old": study.summary(old, tuning), "new": study.summary(new, tuning), "picks": picks}
    for name in ("old", "new"):
        r = res[args.part][name]
        print(f"{args.part} {name}: mean AP {r['mean_ap']:.4f}, AP ok {r['ap_ok']}, AUROC ok {r['auroc_ok']}, "
              f"F1 {r['mean_f1_suspect']:.4f}, "
              f"{ {d: (round(v['mean_ap'], 4), v['ap_ok'], v['auroc_ok']) for d, v in r['per_data'].items()} } "
              f"ECE { {d: round(v['ece'], 4) for d, v in r['pooled'].items()} }")
    raw = {}
    for key, g in picks.items():
        raw.setdefault("/".join(key.split("/")[:2]), []).append(g["raw"])
    print("raw logits chosen: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in raw.items()))
    RESULTS.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
