"""Detection quality: the corruption score against every single signal.

Three parts, all on real Tiny ImageNet images (``../shared/data/tiny-imagenet-10``,
``train/`` = training set, ``val/`` = held-out set, flips only in ``train/``):

- ``grid``: scenarios ``pair`` (the seed's dining_table vs gondola, 1,100
  images) and ``ten`` (all ten classes, 5,500 images) x noise strategies
  ``uniform``, ``pair``, ``influential`` x rates 5%, 10%, 20% x seeds 0-4.
  Every cell is one ``na.audit`` with default settings; the corruption score
  and the single signals (average influence, self-influence, cleanlab
  out-of-sample label quality, in-sample loss, the influence estimate of the
  leave-one-out loss, and FiftyOne Brain's ``compute_mistakenness`` on the
  head's out-of-sample and on its in-sample predictions) are all taken from
  that audit, so they are compared on the same flips and the same model.
- ``estimators``: the same audit with each pyDVL influence solver (direct,
  cg, lissa, arnoldi, ekfac, nystroem), 10% uniform flips.
- ``backbones``: EfficientNet-Lite0 (ImageNet) and ResNet18 with random init
  (and with ImageNet weights where a local copy exists), 10% uniform flips.

Metrics (``noise_audit.metrics.detection_metrics``) cover all samples of the
scenario, held-out ones included (never flipped): AUROC, average precision,
precision@k (k = number of flips) and recall after inspecting the top 10%.
Mean and standard deviation over seeds.

The ``influential`` strategy is the seed notebook's: per class, the samples
with the highest average influence in an audit of the *clean* labels are
flipped. That audit is run once per scenario.

    python bench/quality.py                         # everything (see docs/benchmarks.md for times)
    python bench/quality.py --parts grid --classes pair --seeds 0 1
    python bench/quality.py --quick                 # pair, 10% uniform, seeds 0-1, a minute or two
    python bench/quality.py --merge ...             # add cells to bench/results/quality.json

Features are cached on disk, so only the first run over a scenario pays for
the backbone (about 10 images/s for EfficientNet-Lite0 on two CPU cores).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from _common import (METRIC_NAMES, METRICS, RESULTS, TINY, fmt_ms, machine, mean_std, require_data,
                     table, tiny_classes, write_json)

STRATEGIES = ("uniform", "pair", "influential")
RATES = (0.05, 0.1, 0.2)
SEEDS = (0, 1, 2, 3, 4)
ESTIMATORS = ("direct", "cg", "lissa", "arnoldi", "ekfac", "nystroem")
BACKBONES = ("efficientnet_lite0", "resnet18_random", "resnet18_imagenet")
SIGNALS = ("corruption_score", "average_influence", "self_influence", "label_quality", "loss", "loo_loss",
           "mistakenness_oos", "mistakenness_in_sample")
SIGNAL_NAMES = {
    "corruption_score": "corruption score",
    "average_influence": "average influence",
    "self_influence": "self-influence",
    "label_quality": "cleanlab label quality (out-of-sample)",
    "loss": "in-sample loss",
    "loo_loss": "influence LOO loss",
    "mistakenness_oos": "Brain mistakenness (out-of-sample logits)",
    "mistakenness_in_sample": "Brain mistakenness (in-sample logits)",
}
NOISY, FLAG, KEY, CLEAN_KEY = "gt_noisy", "gt_flipped", "q", "clean"


def resnet18_imagenet_weights(path=None):
    """A local ResNet18 ImageNet state dict, or None (nothing is downloaded)."""
    if path:
        return path if os.path.isfile(path) else None
    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(hub.glob("resnet18-*.pth")) if hub.is_dir() else []
    return str(found[0]) if found else None


def backbone_kwargs(name, resnet_weights, image_size):
    if name == "efficientnet_lite0":
        return {"backbone": "efficientnet_lite0", "image_size": image_size}
    if name == "resnet18_random":
        return {"backbone": "resnet18", "weights": "random", "image_size": image_size}
    return {"backbone": "resnet18", "weights": resnet_weights, "image_size": image_size}


def mistakenness(logits, given):
    """FiftyOne Brain's classification mistakenness with logits, in numpy.

    Brain (``fiftyone.brain.internal.core.mistakenness``): ``c = exp(-entropy(softmax(logits)))``;
    ``(1 + c) / 2`` when the predicted label differs from the given one, else ``(1 - c) / 2``.
    """
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    ent = -(p * np.log(np.clip(p, 1e-300, None))).sum(1)
    c = np.exp(-ent)
    wrong = logits.argmax(1) != np.asarray(given)
    return np.where(wrong, (1 + c) / 2, (1 - c) / 2)


class Scenario:
    """One FiftyOne dataset of Tiny ImageNet classes, audited many times."""

    def __init__(self, which, image_size=224):
        import noise_audit as na

        self.which, self.image_size = which, image_size
        self.classes = tiny_classes(which)
        self.ds = na.load_image_folder(TINY, name=f"bench-quality-{which}", overwrite=True, classes=self.classes)
        self.train = self.ds.match_tags("train")
        self._clean_done = False
        self._features = {}

    def clean_audit(self):
        """Audit of the clean labels: the average influence ``influential`` flips by."""
        import noise_audit as na

        if not self._clean_done:
            t = time.perf_counter()
            na.audit(self.ds, "ground_truth", key=CLEAN_KEY, overwrite=True, progress=False,
                     image_size=self.image_size)
            print(f"[{self.which}] clean audit for the influential strategy: {time.perf_counter() - t:.1f} s",
                  flush=True)
            self._clean_done = True
        return f"{CLEAN_KEY}_influence"

    def inject(self, strategy, rate, seed):
        import noise_audit as na

        kw = {"influence_field": self.clean_audit()} if strategy == "influential" else {}
        return na.inject_label_noise(self.train, "ground_truth", fraction=rate, seed=seed, noisy_field=NOISY,
                                     flag_field=FLAG, strategy=strategy, **kw)

    def in_sample_logits(self, results, audit_kwargs, seed):
        """The audit head's in-sample logits, rebuilt from its run results and the feature cache."""
        from noise_audit.core import features, head as heads

        doc = self.ds.load_run_results(KEY, load_view=False)
        name, weights = audit_kwargs.get("backbone", "efficientnet_lite0"), audit_kwargs.get("weights")
        size = audit_kwargs.get("image_size", 224)
        bb_key = (name, weights, size, seed if name == "resnet18" and weights == "random" else None)  # random init is seeded
        if bb_key not in self._features:
            bb = features.get_backbone(name, weights, image_size=size, seed=seed)
            paths = self.ds.values("filepath")
            raw, _ = features.extract_features(paths, bb, progress=False)
            self._features[bb_key] = dict(zip(self.ds.values("id"), raw))
        by_id = self._features[bb_key]
        raw = np.stack([by_id[i] for i in results.ids])
        x = (raw - np.array(doc.feature_mean)) / np.array([np.inf if v is None else v for v in doc.feature_std])
        head = heads.LinearHead.from_state(doc.head)
        return heads.predict_logits(head, x)

    def brain_mistakenness(self, pred_field, results):
        """FiftyOne Brain's ``compute_mistakenness`` on a Classification field with logits."""
        import fiftyone.brain as fob

        field = f"{pred_field}_mistakenness"
        if self.ds.has_brain_run(field):
            self.ds.delete_brain_run(field)
        fob.compute_mistakenness(self.ds, pred_field, label_field=NOISY, mistakenness_field=field,
                                 use_logits=True, progress=False)
        values = np.array(self.ds.select(list(results.ids), ordered=True).values(field), dtype=float)
        self.ds.delete_brain_run(field)
        if self.ds.has_sample_field(field):
            self.ds.delete_sample_field(field)
        return values

    def audit_cell(self, strategy, rate, seed, brain="brain", **audit_kwargs):
        """Injects flips, audits, returns the per-signal detection metrics of the cell."""
        import fiftyone as fo

        import noise_audit as na
        from noise_audit.metrics import detection_metrics

        info = self.inject(strategy, rate, seed)
        t = time.perf_counter()
        r = na.audit(self.ds, NOISY, key=KEY, seed=seed, overwrite=True, progress=False, **audit_kwargs)
        audit_s = time.perf_counter() - t
        view = self.ds.select(list(r.ids), ordered=True)
        truth = np.array(view.values(FLAG), dtype=bool)
        suspicion = r.suspicion()
        suspicion["loo_loss"] = r.signals["loo_loss"]
        t = time.perf_counter()
        brain_diff = None
        if brain:
            oos_logits = np.array([p.logits for p in view.values(f"{KEY}_prediction")], dtype=float)
            ins_logits = self.in_sample_logits(r, audit_kwargs, seed)
            given = np.array(r.labels)
            suspicion["mistakenness_oos"] = mistakenness(oos_logits, given)
            suspicion["mistakenness_in_sample"] = mistakenness(ins_logits, given)
            if brain == "brain":
                # The real thing; the numpy copy of its formula must agree.
                field = f"{KEY}_in_sample_prediction"
                preds = [fo.Classification(label=r.classes[int(lg.argmax())], logits=lg.tolist()) for lg in ins_logits]
                view.set_values(field, preds)
                got = {"mistakenness_oos": self.brain_mistakenness(f"{KEY}_prediction", r),
                       "mistakenness_in_sample": self.brain_mistakenness(field, r)}
                self.ds.delete_sample_field(field)
                brain_diff = max(float(np.abs(got[k] - suspicion[k]).max()) for k in got)
                suspicion.update(got)
        brain_s = time.perf_counter() - t
        metrics = {name: detection_metrics(v, truth) for name, v in suspicion.items()}
        return {
            "n": int(len(truth)), "n_flipped": int(truth.sum()), "num_label_issues": int(r.num_label_issues),
            "image_size": r.config["image_size"], "backbone": r.config["backbone"],
            "influence_method": r.config["influence_method"], "n_parameters": r.config["n_parameters"],
            "audit_s": round(audit_s, 3), "brain_s": round(brain_s, 3), "timings": r.timings,
            "flips_requested": info["num_flipped"], "metrics": metrics,
            "mistakenness_by": {"brain": "fiftyone.brain.compute_mistakenness", "formula": "numpy copy of Brain's formula",
                                False: None}[brain],
            "brain_vs_formula_max_abs_diff": brain_diff,
        }

    def delete(self):
        self.ds.delete()


def summarize(cells, group_keys):
    """Mean and spread over seeds of every metric, grouped by ``group_keys``."""
    groups = {}
    for cell in cells.values():
        groups.setdefault(tuple(cell[k] for k in group_keys), []).append(cell)
    out = []
    for key, members in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        signals = [s for s in SIGNALS if all(s in m["metrics"] for m in members)]
        entry = dict(zip(group_keys, key))
        entry["seeds"] = sorted(m["seed"] for m in members)
        entry["audit_s"] = mean_std([m["audit_s"] for m in members])
        entry["metrics"] = {s: {m: mean_std([c["metrics"][s][m] for c in members]) for m in METRICS} for s in signals}
        base = [s for s in signals if s != "corruption_score"]
        if "corruption_score" in signals:
            cs = entry["metrics"]["corruption_score"]
            entry["baselines_above_score"] = {
                m: [s for s in base if entry["metrics"][s][m]["mean"] > cs[m]["mean"] + 1e-12] for m in METRICS}
        out.append(entry)
    return out


def print_summary(title, summary, group_keys, signals=SIGNALS):
    print(f"\n== {title}")
    for entry in summary:
        head = ", ".join(f"{k}={entry[k]}" for k in group_keys)
        print(f"\n{head} (seeds {entry['seeds']}, audit {entry['audit_s']['mean']:.1f} s)")
        rows = [[SIGNAL_NAMES[s]] + [fmt_ms(entry["metrics"][s][m], 3) for m in METRICS]
                for s in signals if s in entry["metrics"]]
        print(table(rows, ["signal", *METRIC_NAMES]))
        above = {m: v for m, v in entry.get("baselines_above_score", {}).items() if v}
        if above:
            print("baselines above the corruption score: " + "; ".join(f"{m}: {', '.join(v)}" for m, v in above.items()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=("grid", "estimators", "backbones"),
                   default=["grid", "estimators", "backbones"])
    p.add_argument("--classes", nargs="+", choices=("pair", "ten"), default=["pair", "ten"],
                   help="scenarios of the grid")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    p.add_argument("--estimator-classes", nargs="+", choices=("pair", "ten"), default=["pair"])
    p.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    p.add_argument("--backbone-classes", nargs="+", choices=("pair", "ten"), default=["pair"])
    p.add_argument("--image-size", type=int, default=224,
                   help="backbone input size (Tiny ImageNet's native size is 64)")
    p.add_argument("--resnet18-weights", help="local ResNet18 ImageNet state dict (default: torch hub cache)")
    p.add_argument("--brain", choices=("all", "first-seed", "none"), default="first-seed",
                   help="where to call FiftyOne Brain's compute_mistakenness (slow: it saves every sample); "
                        "elsewhere its formula is computed in numpy and checked equal where both ran")
    p.add_argument("--quick", action="store_true", help="pair, 10%% uniform, seeds 0-1, direct and cg, one backbone")
    p.add_argument("--merge", action="store_true", help="add to the cells already in the results file")
    p.add_argument("--skip-done", action="store_true",
                   help="with --merge: skip cells the results file already has (resume an interrupted grid)")
    p.add_argument("--out", default="quality", help="results file name under bench/results/")
    args = p.parse_args()
    if args.quick:
        args.classes, args.strategies, args.rates, args.seeds = ["pair"], ["uniform"], [0.1], [0, 1]
        args.estimators, args.backbones = ["direct", "cg"], ["efficientnet_lite0"]
    require_data()
    import fiftyone as fo  # noqa: F401  (after _common set the database)

    path = RESULTS / f"{args.out}.json"
    old = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    cells = {part: dict(old.get("cells", {}).get(part, {})) for part in ("grid", "estimators", "backbones")}
    for part in cells.values():
        for cell in part.values():
            cell.setdefault("image_size", 224)  # cells written before the option existed
    commands = list(old.get("commands", [])) + [" ".join(["python", "bench/quality.py", *sys.argv[1:]])]
    resnet_weights = resnet18_imagenet_weights(args.resnet18_weights)
    notes = dict(old.get("notes", {}))
    needed = set(args.classes if "grid" in args.parts else [])
    needed |= set(args.estimator_classes if "estimators" in args.parts else [])
    needed |= set(args.backbone_classes if "backbones" in args.parts else [])
    t_all = time.perf_counter()

    def brain_mode(seed):
        if args.brain == "none":
            return False
        return "brain" if args.brain == "all" or seed == min(args.seeds) else "formula"

    for which in [w for w in ("pair", "ten") if w in needed]:
        sc = Scenario(which, args.image_size)
        try:
            if "grid" in args.parts and which in args.classes:
                for strategy in args.strategies:
                    for rate in args.rates:
                        for seed in args.seeds:
                            key = f"{which}/{args.image_size}/{strategy}/{rate}/{seed}"
                            if args.skip_done and key in cells["grid"]:
                                continue
                            cell = sc.audit_cell(strategy, rate, seed, brain=brain_mode(seed), image_size=args.image_size)
                            cell.update(scenario=which, strategy=strategy, rate=rate, seed=seed)
                            cells["grid"][key] = cell
                            save(args, cells, commands, notes, t_all)
                            m = cell["metrics"]
                            print(f"[{which}] {strategy} {rate:.0%} seed {seed}: score AUROC "
                                  f"{m['corruption_score']['auroc']:.4f} AP {m['corruption_score']['average_precision']:.4f}"
                                  f" | cleanlab {m['label_quality']['auroc']:.4f} {m['label_quality']['average_precision']:.4f}"
                                  f" | audit {cell['audit_s']:.1f} s, brain {cell['brain_s']:.1f} s", flush=True)
            if "estimators" in args.parts and which in args.estimator_classes:
                for method in args.estimators:
                    for seed in args.seeds:
                        key = f"{which}/{args.image_size}/{method}/{seed}"
                        if args.skip_done and key in cells["estimators"]:
                            continue
                        cell = sc.audit_cell("uniform", 0.1, seed, brain=False, method=method,
                                            image_size=args.image_size)
                        cell.update(scenario=which, method=method, seed=seed)
                        cells["estimators"][key] = cell
                        save(args, cells, commands, notes, t_all)
                        m = cell["metrics"]
                        print(f"[{which}] estimator {method} seed {seed}: score AUROC {m['corruption_score']['auroc']:.4f}"
                              f", avg infl {m['average_influence']['auroc']:.4f}, self {m['self_influence']['auroc']:.4f}"
                              f", influence stage {cell['timings']['influence']:.1f} s", flush=True)
            if "backbones" in args.parts and which in args.backbone_classes:
                for name in args.backbones:
                    if name == "resnet18_imagenet" and not resnet_weights:
                        notes["resnet18_imagenet"] = ("not available offline: no local ResNet18 ImageNet weights "
                                                      "(pass --resnet18-weights or put them in torch hub's cache)")
                        print("resnet18 ImageNet weights not available offline; skipped", flush=True)
                        continue
                    for seed in args.seeds:
                        key = f"{which}/{args.image_size}/{name}/{seed}"
                        if args.skip_done and key in cells["backbones"]:
                            continue
                        cell = sc.audit_cell("uniform", 0.1, seed, brain=brain_mode(seed),
                                             **backbone_kwargs(name, resnet_weights, args.image_size))
                        cell.update(scenario=which, backbone=name, seed=seed)
                        cells["backbones"][key] = cell
                        save(args, cells, commands, notes, t_all)
                        m = cell["metrics"]
                        print(f"[{which}] backbone {name} seed {seed}: score AUROC {m['corruption_score']['auroc']:.4f}"
                              f", cleanlab {m['label_quality']['auroc']:.4f}, audit {cell['audit_s']:.1f} s", flush=True)
        finally:
            sc.delete()

    save(args, cells, commands, notes, t_all, final=True)


def save(args, cells, commands, notes, t_all, final=False):
    """Summaries and JSON; called after every cell, so an interrupted run keeps what it did."""
    summary = {
        "grid": summarize(cells["grid"], ("scenario", "image_size", "strategy", "rate")),
        "estimators": summarize(cells["estimators"], ("scenario", "image_size", "method")),
        "backbones": summarize(cells["backbones"], ("scenario", "image_size", "backbone")),
    }
    if final:
        print_summary("grid: corruption score vs single signals", summary["grid"],
                      ("scenario", "image_size", "strategy", "rate"))
        print_summary("influence estimators (10% uniform)", summary["estimators"], ("scenario", "image_size", "method"),
                      ("corruption_score", "average_influence", "self_influence"))
        print_summary("backbones (10% uniform)", summary["backbones"], ("scenario", "image_size", "backbone"))
    path = write_json(args.out, {
        "description": __doc__.split("\n\n")[0],
        "data": str(TINY), "commands": commands, "machine": machine(), "notes": notes,
        "wall_s_last_command": round(time.perf_counter() - t_all, 1), "complete": final,
        "summary": summary, "cells": cells,
    })
    return path


if __name__ == "__main__":
    main()
