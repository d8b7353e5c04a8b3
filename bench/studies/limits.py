"""What the quality grid's remaining misses would need (issues 9 and 11): bounds computed with the truth.

Not a tuning round: nothing here changes the method. It reads the stored reported cells
(``.cache/grid``, the final code's audits) and asks two questions with the flipped labels in hand,
so its answers are upper bounds that no truth-free rule can beat.

1. **Ranking (issue 9's per-row AP and AUROC targets).** The score ranks by
   ``w * harm + (1 - w) * clean-fold loss``, each in units of its spread, with ``w = 0.5`` (the loss at the
   temperature the audit chooses, ``scores.loss_view_temperature``). For every
   reported row, the *oracle* weight is the one of ``w = 0, 0.05, ..., 1`` with the highest mean AP,
   picked on that row's own flips. A row whose oracle still misses the target cannot be met by any
   weighting of the two views, however clever the rule that picks it; a row met only by an oracle
   weight far from 0.5 needs a rule that recognises that regime without the truth.
2. **Calibration (issue 11's ECE on cifar32).** For the clean audit and each rate of cifar32's
   confusion and uniform flips: what a truth-free estimator can see (the head's held-out accuracy,
   cleanlab's estimated share of wrong labels, the mean label quality) against what it should report
   (the share flipped). If the inputs do not move while the share flipped goes from 0 to 25%, no
   estimator of that share can be calibrated there. And the pooled ECE without those cells.

The grid's cells, their rows, the pooled calibration and the constants come from
``bench/quality_grid.py`` (``stored_cells``, ``by_row``, ``pooled``), so both read the grid one way.

    python bench/studies/limits.py      # prints tables, writes bench/results/limits_study.json
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common and quality_grid
from _common import table, write_json  # noqa: E402
import quality_grid as qg  # noqa: E402
from quality_grid import DATA, GRID, HIGH, STRATEGIES, by_row, pooled, stored_cells  # noqa: E402

WEIGHTS = np.round(np.linspace(0, 1, 21), 2)
SINGLES = {s: HIGH[s] for s in qg.SINGLES}  # each single signal, oriented high = suspicious


def reported_cells():
    """(data, strategy, rate, seed) -> stored arrays, the tuning cells left out."""
    return {(data, strategy, float(rate), seed): dict(np.load(f))
            for data, strategy, rate, seed, f in stored_cells("reported")}


def weighted_rankings(c):
    """The score's ranking at every weight of :data:`WEIGHTS` (as ``scores.corruption_score`` builds it)."""
    from noise_audit.core import noise_model, scores

    y = c["y_noisy"]
    t = scores.loss_view_temperature(y, c["clean_oos_logits"], noise_model.temperature(c["oos_logits"], y), c["is_test"])
    clean_loss = scores.given_label_loss(np.asarray(c["clean_oos_logits"], float) / t, y)
    return {w: scores.ranking_score(c["average_influence"], clean_loss, w) for w in WEIGHTS}


def ranking_bounds(cells):
    from noise_audit.metrics import detection_metrics

    per_cell = {}
    for key, c in cells.items():
        t = c["flipped"].astype(bool)
        m = {f"w={w}": detection_metrics(r, t) for w, r in weighted_rankings(c).items()}
        m.update({s: detection_metrics(sign * c[s], t) for s, sign in SINGLES.items()})
        per_cell[key] = m
    rows = []
    for (data, strategy, rate), members in by_row(per_cell.items()).items():
        mean = lambda name, metric: float(np.mean([m[name][metric] for m in members]))  # noqa: E731
        best_ap = max(mean(s, "average_precision") for s in SINGLES)
        best_auroc = max(mean(s, "auroc") for s in SINGLES)
        ap = {w: mean(f"w={w}", "average_precision") for w in WEIGHTS}
        auroc = {w: mean(f"w={w}", "auroc") for w in WEIGHTS}
        oracle = max(WEIGHTS, key=ap.get)
        rows.append({
            "data": data, "strategy": strategy, "rate": rate, "seeds": len(members),
            "best_single_ap": best_ap, "best_single_auroc": best_auroc,
            "ap_at_0.5": ap[0.5], "oracle_weight": float(oracle), "ap_at_oracle": ap[oracle],
            "auroc_at_oracle": auroc[oracle],
            "ap_met_at_0.5": ap[0.5] >= best_ap - 0.005,
            "ap_met_by_some_weight": any(v >= best_ap - 0.005 for v in ap.values()),
            "both_met_by_some_weight": any(ap[w] >= best_ap - 0.005 and auroc[w] >= best_auroc - 0.002
                                           for w in WEIGHTS),
            "best_single_auroc_is_near_chance": best_auroc < 0.6,
        })
    return rows


def identifiability(cells):
    """cifar32: what a truth-free estimator sees against the share flipped (clean audit = rate 0)."""
    from scipy.special import softmax

    from noise_audit.core import scores

    def seen(c):
        y, test = c["y_noisy"], c["is_test"].astype(bool)
        audited = ~test
        probs = softmax(np.asarray(c["oos_logits"], float), axis=1)
        return {
            "share_flipped": float((c["y_noisy"] != c["y"])[audited].mean()) if "y" in c else 0.0,
            "held_out_accuracy": float((c["test_pred"] == y[test]).mean()),
            "cleanlab_share": scores.estimate_num_issues(y[audited], probs[audited]) / int(audited.sum()),
            "mean_label_quality": float(c["label_quality"][audited].mean()),
            "mean_score": float(c["corruption_score"][audited].mean()),
        }

    clean = dict(np.load(GRID / "cifar32" / "clean.npz"))
    clean["y_noisy"] = clean["y"]
    rows = [{"strategy": "none (clean audit)", "rate": 0.0, **seen(clean)}]
    cifar32 = by_row((k, c) for k, c in cells.items() if k[0] == "cifar32")
    for strategy in ("confusion", "uniform", "influential"):
        for (_, s, rate), stored in cifar32.items():
            if s == strategy:
                members = [seen(c) for c in stored]
                rows.append({"strategy": strategy, "rate": rate,
                             **{k: float(np.mean([m[k] for m in members])) for k in members[0]}})
    return rows


def temperature_against_raw():
    """Mean AP of the ranking's loss view at the first folds' temperature and at the raw logits, per data
    set and strategy (all rates and seeds; tuning and reported cells apart)."""
    from noise_audit.core import noise_model, scores
    from noise_audit.metrics import detection_metrics

    acc = {}
    for data, strategy, _, seed, f in stored_cells():
        part = "tuning" if qg.is_tuning(data, seed) else "reported"
        c = np.load(f)
        y, t = c["y_noisy"], c["flipped"].astype(bool)
        temp = noise_model.temperature(c["oos_logits"], y)
        for view, logits in (("at temperature", c["clean_oos_logits"] / temp), ("raw", c["clean_oos_logits"])):
            ap = detection_metrics(scores.given_label_loss(logits, y), t)["average_precision"]
            acc.setdefault((data, part, strategy, view), []).append(ap)
    rows = []
    for (data, part, strategy, view), aps in acc.items():
        if view == "raw":
            continue
        rows.append({"data": data, "part": part, "strategy": strategy, "ap_at_temperature": float(np.mean(aps)),
                     "ap_raw": float(np.mean(acc[data, part, strategy, "raw"]))})
    return rows


def noise_prior_on_tuning_cells(alphas=(0.0, 0.1, 0.25, 0.5, 1.0)):
    """Pooled ECE of the tuning cells when step 3's noise matrix has a prior toward no noise."""
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities
    from scipy.special import softmax

    from noise_audit.core import noise_model

    scored = {a: {} for a in alphas}
    for _, strategy, _, _, f in stored_cells("tuning"):
        c = np.load(f)
        y, test = c["y_noisy"], c["is_test"].astype(bool)
        _, start, _, _ = estimate_py_and_noise_matrices_from_probabilities(y, softmax(c["oos_logits"], axis=1))
        probs = noise_model.recalibrated_probs(c["clean_oos_logits"], y, test)
        for a in alphas:
            noise = noise_model.fit_noise_matrix(y[~test], probs[~test], start, prior=a)
            score = noise_model.calibrate(c["ranking"], noise_model.noise_posterior(y, probs, noise))
            scored[a].setdefault(strategy, []).append((score, c["flipped"].astype(bool)))
    rows = []
    for a, per in scored.items():
        row = {"alpha": a, "ece": pooled(pair for v in per.values() for pair in v)["ece"]}
        for strategy, v in per.items():
            cal = pooled(v)
            row[strategy] = {"ece": cal["ece"], "mean_score": cal["mean_score"], "error_rate": cal["error_rate"]}
        rows.append(row)
    return rows


def pooled_ece(cells, keep):
    return pooled((c["corruption_score"], c["flipped"].astype(bool)) for k, c in cells.items() if keep(k))["ece"]


def main():
    cells = reported_cells()
    rows = ranking_bounds(cells)
    print(table([[r["data"], r["strategy"], f"{r['rate']:.0%}", f"{r['best_single_ap']:.4f}", f"{r['ap_at_0.5']:.4f}",
                  f"{r['oracle_weight']:.2f}", f"{r['ap_at_oracle']:.4f}",
                  "yes" if r["ap_met_by_some_weight"] else "NO", "yes" if r["both_met_by_some_weight"] else "NO",
                  f"{r['best_single_auroc']:.3f}"] for r in rows],
                ["data", "strategy", "rate", "best single AP", "AP w=0.5", "oracle w", "AP oracle w",
                 "AP target reachable", "AP+AUROC reachable", "best single AUROC"]))
    summary = {d: {"rows": sum(r["data"] == d for r in rows),
                   "ap_met_at_0.5": sum(r["ap_met_at_0.5"] for r in rows if r["data"] == d),
                   "ap_met_by_some_weight": sum(r["ap_met_by_some_weight"] for r in rows if r["data"] == d),
                   "both_met_by_some_weight": sum(r["both_met_by_some_weight"] for r in rows if r["data"] == d),
                   "oracle_weights": sorted({r["oracle_weight"] for r in rows if r["data"] == d})}
               for d in DATA}
    for d, s in summary.items():
        print(f"{d}: AP target met at w=0.5 in {s['ap_met_at_0.5']}/{s['rows']} rows, by the row's oracle weight in "
              f"{s['ap_met_by_some_weight']}, AP and AUROC together in {s['both_met_by_some_weight']}; "
              f"oracle weights {s['oracle_weights']}")
    seen = identifiability(cells)
    print(table([[r["strategy"], f"{r['rate']:.0%}", f"{r['share_flipped']:.3f}", f"{r['held_out_accuracy']:.3f}",
                  f"{r['cleanlab_share']:.3f}", f"{r['mean_label_quality']:.3f}", f"{r['mean_score']:.3f}"]
                 for r in seen],
                ["cifar32 flips", "rate", "share flipped", "held-out acc", "cleanlab share", "mean label quality",
                 "mean score"]))
    ece = {"all": pooled_ece(cells, lambda k: k[0] == "cifar32"),
           "without confusion": pooled_ece(cells, lambda k: k[0] == "cifar32" and k[1] != "confusion"),
           "without confusion and influential": pooled_ece(
               cells, lambda k: k[0] == "cifar32" and k[1] not in ("confusion", "influential"))}
    print("cifar32 pooled ECE: " + ", ".join(f"{k} {v:.4f}" for k, v in ece.items()))
    temps = temperature_against_raw()
    print(table([[r["data"], r["part"], r["strategy"], f"{r['ap_at_temperature']:.4f}", f"{r['ap_raw']:.4f}"]
                 for r in temps], ["data", "cells", "strategy", "loss view AP at temperature", "raw logits"]))
    prior = noise_prior_on_tuning_cells()
    print(table([[r["alpha"], f"{r['ece']:.4f}"] + [f"{r[s]['ece']:.3f} ({r[s]['mean_score']:.3f}/{r[s]['error_rate']:.3f})"
                                                      for s in STRATEGIES] for r in prior],
                ["prior alpha", "tuning ECE", *(f"{s} ECE (mean/rate)" for s in STRATEGIES)]))
    write_json("limits_study", {"description": __doc__.split("\n\n")[0], "weights": WEIGHTS.tolist(),
                                "ranking": {"summary": summary, "rows": rows},
                                "cifar32_identifiability": seen, "cifar32_pooled_ece": ece,
                                "loss_view_temperature": temps, "noise_prior_on_tuning_cells": prior})


if __name__ == "__main__":
    main()
