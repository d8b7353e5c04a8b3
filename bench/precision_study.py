"""bf16 features against fp32 features on the quality grid, cell by cell: may ``precision="auto"`` pick bf16?

Reads two grids of stored cells (``bench/grid_signals.py``): the fp32 one
(default ``.cache/grid``) and one computed with bfloat16 features
(``grid_signals.py --precision bf16 --flips-from <the fp32 grid>``, default
``.cache/grid-bf16``), so both audited the very same noisy labels (checked
here, cell by cell). Both are rescored by this checkout's ``scores``
(``quality_grid.rescore``: the heads are not refit), so only the features
differ. For every row (data x strategy x rate, mean over the seeds both grids
have) it reports the change of the corruption score's AP and of each single
signal's AP, bf16 minus fp32.

The rule, declared before the bf16 grid was computed (issue 23): ``auto`` may
pick bf16 only if the score's AP moves by no more than 0.005 in every row.

    python bench/precision_study.py --fp32 /work/main/.cache/grid --bf16 .cache/grid-bf16
"""

import argparse
import time
from pathlib import Path

import numpy as np

from _common import ROOT, machine, table, write_json
from quality_grid import HIGH, SINGLES, STRATEGIES, rescore

SIGNALS = ("corruption_score", *SINGLES)
RULE_MAX_SCORE_AP_CHANGE = 0.005


def cell_aps(stored):
    """AP of the score and of each single signal in one stored cell, rescored."""
    from noise_audit.metrics import detection_metrics

    c = rescore(stored)
    truth = c["flipped"].astype(bool)
    return {s: detection_metrics(HIGH[s] * c[s], truth)["average_precision"] for s in SIGNALS}


def paired_cells(fp32_root, bf16_root, data_sets):
    """``{(data, strategy, rate, seed): (fp32 APs, bf16 APs)}`` of the cells both grids hold."""
    out = {}
    for data in data_sets:
        for f in sorted((bf16_root / data).glob("*-*-*.npz")):
            ref = fp32_root / data / f.name
            if not ref.is_file():
                continue
            a, b = np.load(ref), np.load(f)
            if not (np.array_equal(a["y_noisy"], b["y_noisy"]) and np.array_equal(a["is_test"], b["is_test"])):
                raise SystemExit(f"{data}/{f.name}: the two grids audited different labels (use --flips-from)")
            strategy, rate, seed = f.stem.split("-")
            out[(data, strategy, float(rate), int(seed))] = (cell_aps(a), cell_aps(b))
    return out


def rows_of(cells):
    """Per data x strategy x rate: mean AP of each signal under fp32 and the change under bf16."""
    groups = {}
    for (data, strategy, rate, seed), aps in cells.items():
        groups.setdefault((data, strategy, rate), []).append((seed, aps))
    rows = []
    for (data, strategy, rate), members in sorted(groups.items(), key=lambda kv: (kv[0][0], STRATEGIES.index(kv[0][1]),
                                                                                  kv[0][2])):
        fp32 = {s: float(np.mean([m[1][0][s] for m in members])) for s in SIGNALS}
        bf16 = {s: float(np.mean([m[1][1][s] for m in members])) for s in SIGNALS}
        worst_cell = max(abs(m[1][1]["corruption_score"] - m[1][0]["corruption_score"]) for m in members)
        rows.append({"data": data, "strategy": strategy, "rate": rate, "seeds": sorted(m[0] for m in members),
                     "fp32_ap": fp32, "bf16_ap": bf16, "change": {s: bf16[s] - fp32[s] for s in SIGNALS},
                     "score_worst_cell_change": worst_cell})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32", type=Path, default=ROOT / ".cache" / "grid")
    p.add_argument("--bf16", type=Path, default=ROOT / ".cache" / "grid-bf16")
    p.add_argument("--data", nargs="+", default=["pair224", "ten64"])
    args = p.parse_args()
    t0 = time.perf_counter()
    cells = paired_cells(args.fp32, args.bf16, args.data)
    if not cells:
        raise SystemExit(f"no cell is in both {args.fp32} and {args.bf16}")
    rows = rows_of(cells)
    short = {"corruption_score": "score", "average_influence": "avg infl", "self_influence": "self infl",
             "label_quality": "cleanlab", "loss": "loss", "loo_loss": "loo loss"}
    print(table([[r["data"], r["strategy"], f"{r['rate']:.0%}", "".join(map(str, r["seeds"])),
                  f"{r['fp32_ap']['corruption_score']:.4f}"] + [f"{r['change'][s]:+.4f}" for s in SIGNALS]
                 for r in rows],
                ["data", "strategy", "rate", "seeds", "score AP fp32"] + [f"d {short[s]}" for s in SIGNALS]))
    worst = max(abs(r["change"]["corruption_score"]) for r in rows)
    allowed = worst <= RULE_MAX_SCORE_AP_CHANGE
    print(f"\n{len(cells)} cells in {len(rows)} rows; largest |change| of the score's mean AP in a row: {worst:.4f} "
          f"(rule: <= {RULE_MAX_SCORE_AP_CHANGE}): auto {'may' if allowed else 'may NOT'} pick bf16")
    print("mean change over rows: " + ", ".join(f"{short[s]} {np.mean([r['change'][s] for r in rows]):+.4f}"
                                                 for s in SIGNALS))
    write_json("precision_study", {
        "description": __doc__.split("\n\n")[0], "rule": f"|score AP change| <= {RULE_MAX_SCORE_AP_CHANGE} in every row",
        "fp32_grid": str(args.fp32), "bf16_grid": str(args.bf16), "machine": machine(),
        "n_cells": len(cells), "largest_row_change_score_ap": worst, "auto_may_pick_bf16": bool(allowed),
        "mean_change": {s: float(np.mean([r["change"][s] for r in rows])) for s in SIGNALS},
        "rows": rows, "wall_s": round(time.perf_counter() - t0, 1),
    })


if __name__ == "__main__":
    main()
