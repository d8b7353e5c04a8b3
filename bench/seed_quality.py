"""Detection quality on the seed scenario, 5 seeds: corruption score vs single signals.

dining_table vs gondola from ../shared/data/tiny-imagenet-10, train/ as train,
val/ as test, 10% uniform flips of the training labels, default backbone.
For every seed all signals come from the same audit, so they are compared on
the same model and the same flips.

    python bench/seed_quality.py [--seeds 0 1 2 3 4]
"""

import argparse
import time

import numpy as np

from _common import METRICS, SEED_CLASSES, TINY, machine, require_data, table, write_json


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--fraction", type=float, default=0.1)
    args = p.parse_args()
    require_data()
    import noise_audit as na
    from noise_audit.metrics import detection_metrics

    ds = na.load_image_folder(TINY, name="bench-seed-quality", overwrite=True, classes=SEED_CLASSES)
    per_seed = []
    for seed in args.seeds:
        info = na.inject_label_noise(ds.match_tags("train"), fraction=args.fraction, seed=seed)
        t = time.perf_counter()
        r = na.audit(ds, info["noisy_field"], seed=seed, overwrite=True, progress=False)
        truth = np.array(ds.select(list(r.ids), ordered=True).values(info["flag_field"]), dtype=bool)
        row = {name: detection_metrics(v, truth) for name, v in r.suspicion().items()}
        per_seed.append({"seed": seed, "audit_s": time.perf_counter() - t, "metrics": row})
        print(f"seed {seed}: " + ", ".join(f"{n} {m['auroc']:.4f}/{m['precision_at_k']:.2f}" for n, m in row.items()))
    signals = list(per_seed[0]["metrics"])
    summary = {
        s: {m: {"mean": float(np.mean([ps["metrics"][s][m] for ps in per_seed])),
                "std": float(np.std([ps["metrics"][s][m] for ps in per_seed]))} for m in METRICS}
        for s in signals
    }
    rows = [[s] + [f"{summary[s][m]['mean']:.4f} ± {summary[s][m]['std']:.4f}" for m in METRICS] for s in signals]
    print()
    print(table(rows, ["signal", "AUROC", "AP", "P@k", "recall@10%"]))
    best_single = {m: max(summary[s][m]["mean"] for s in signals if s != "corruption_score") for m in METRICS}
    beats = {m: summary["corruption_score"][m]["mean"] > best_single[m] for m in METRICS}
    print("\ncorruption score above every single signal: " + ", ".join(f"{m} {'yes' if b else 'NO'}" for m, b in beats.items()))
    ds.delete()
    write_json("seed_quality", {"scenario": "tiny-imagenet-10 dining_table vs gondola, 10% uniform flips of train",
                                "seeds": args.seeds, "machine": machine(), "summary": summary,
                                "beats_every_single_signal": beats, "per_seed": per_seed})


if __name__ == "__main__":
    main()
