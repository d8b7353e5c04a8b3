"""Shared set-up of the benchmarks: their own database, data paths, tables, JSON.

Importing this module sets the environment before FiftyOne is imported: the
benchmarks use the database ``noise_audit_bench`` (unless
``FIFTYONE_DATABASE_NAME`` says otherwise), never send usage data, and cache
features under ``.cache/noise_audit`` in the repository. ``src/`` is put on
``sys.path`` so the scripts run from a checkout without ``pip install``.
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FIFTYONE_DATABASE_NAME", "noise_audit_bench")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ.setdefault("NOISE_AUDIT_CACHE", str(ROOT / ".cache" / "noise_audit"))
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

SHARED = Path(os.environ.get("NOISE_AUDIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
TINY = SHARED / "tiny-imagenet-10"
CIFAR_TAR = SHARED / "cifar10-jpeg.tar.gz"
DATA = ROOT / ".data"  # git-ignored
CIFAR_DIR = DATA / "cifar10"
SEED_CLASSES = ["dining_table", "gondola"]
RESULTS = ROOT / "bench" / "results"
METRICS = ("auroc", "average_precision", "precision_at_k", "recall_at_10pct")
METRIC_NAMES = ("AUROC", "AP", "P@k", "recall@10%")


def require_data():
    if not TINY.is_dir():
        sys.exit(f"benchmark data not found at {TINY} (../shared/data beside the repo)")


def tiny_classes(which):
    """``"pair"`` -> the seed pair; ``"ten"`` -> all ten Tiny ImageNet classes."""
    if which == "pair":
        return list(SEED_CLASSES)
    return sorted(p.name for p in (TINY / "train").iterdir() if p.is_dir())


def image_tree(data, dest=None):
    """A folder of ``train/<class>/*`` beside ``test/`` or ``val/``: ``data`` itself, or the tarball
    ``data`` unpacked once into ``dest`` (default ``.data/<its name>``)."""
    data = Path(data)
    if data.is_dir():
        return data
    dest = Path(dest or DATA / data.name.split(".")[0])
    if (dest / "train").is_dir():
        return dest
    if not data.is_file():
        sys.exit(f"{data} not found (the shared data live in ../shared/data beside the repo)")
    dest.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    subprocess.run(["tar", "-xzf", str(data), "-C", str(dest)], check=True)
    # The archive may hold a top folder; move what is in the one with train/ up.
    if not (dest / "train").is_dir():
        inner = [p for p in dest.iterdir() if (p / "train").is_dir()]
        if inner:
            for sub in inner[0].iterdir():
                sub.rename(dest / sub.name)
    print(f"unpacked {data.name} into {dest} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return dest


def cifar_root():
    """CIFAR-10 JPEGs (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), unpacked once into ``.data/cifar10``."""
    return image_tree(CIFAR_TAR, CIFAR_DIR)


def split_files(root, split, n=None, seed=0, only=None):
    """``(paths, labels, classes)`` of an image tree's ``<split>/<class>/*`` (CIFAR-10's ``train``
    and ``test``, say); ``n`` = a stratified random subset; ``only`` = these classes."""
    import numpy as np

    root = Path(root)
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir() and (not only or p.name in only))
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(str(p) for p in (root / split / c).iterdir())
        paths += files
        labels += [i] * len(files)
    paths, labels = np.array(paths), np.array(labels)
    if n is not None and n < len(paths):
        rng = np.random.default_rng(seed)
        per = n // len(classes)
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == i))[:per] for i in range(len(classes))])
        keep = np.sort(keep)
        paths, labels = paths[keep], labels[keep]
    return paths, labels, classes


def tiny_files(classes):
    """``(paths, labels, is_test)`` of Tiny ImageNet's ``train/`` then ``val/`` (held out) images of
    ``classes``, labelled by their place in ``classes``."""
    import numpy as np

    paths, labels, test = [], [], []
    for split in ("train", "val"):
        for i, c in enumerate(classes):
            files = sorted(str(p) for p in (TINY / split / c).iterdir())
            paths += files
            labels += [i] * len(files)
            test += [split == "val"] * len(files)
    return np.array(paths), np.array(labels), np.array(test)


def machine():
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def mean_std(values):
    import numpy as np

    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(len(v))}


def fmt_ms(s, digits=4):
    """``mean ± std`` of a :func:`mean_std` dict."""
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def write_json(name, payload, results_dir=None):
    out = Path(results_dir or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    try:
        shown = path.relative_to(ROOT)
    except ValueError:
        shown = path
    print(f"\nwrote {shown}")
    return path
