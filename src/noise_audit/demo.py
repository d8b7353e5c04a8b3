"""The demo: import -> inject flips -> audit -> evaluate, on real images.

With no data folder it writes scikit-learn's handwritten digits (real scans,
shipped inside scikit-learn, so it works offline) as PNGs in an
``ImageClassificationDirectoryTree`` with ``train/`` and ``val/`` splits.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from noise_audit.core.auditing import audit
from noise_audit.core.data import load_image_folder
from noise_audit.core.feature_cache import default_cache_dir
from noise_audit.metrics import detection_metrics
from noise_audit.noise import inject_label_noise

if TYPE_CHECKING:
    from fiftyone.core.dataset import Dataset


def write_digits_tree(root: str | None = None, val_fraction: float = 0.1, seed: int = 0) -> str:
    """Writes sklearn's 8x8 digits as PNGs under ``root`` (idempotent)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = root or os.path.join(default_cache_dir(), "digits")
    if os.path.isfile(os.path.join(root, ".complete")):
        return root
    digits = load_digits()
    idx = np.arange(len(digits.target))
    train, val = train_test_split(idx, test_size=val_fraction, stratify=digits.target, random_state=seed)
    for split, members in (("train", train), ("val", val)):
        for i in members:
            folder = os.path.join(root, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(os.path.join(folder, f"{i:04d}.png"))
    open(os.path.join(root, ".complete"), "w").close()
    return root


def _demo_dataset(data: str, name: str, classes: list[str] | None) -> Dataset:
    """The demo's dataset: re-imported unless an earlier demo imported the same files.

    A demo dataset records its source in ``dataset.info``; when name, folder,
    classes and every file's modification time match, it is reused (its
    noise-audit fields are rewritten by the next steps) instead of imported again.
    """
    import fiftyone as fo

    root = os.path.abspath(data)
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if not f.startswith(".")
    )
    source = {"root": root, "classes": sorted(classes) if classes else None,
              "n_files": len(files), "mtime": max(os.stat(f).st_mtime_ns for f in files) if files else 0}
    if fo.dataset_exists(name):
        existing = fo.load_dataset(name)
        if existing.info.get("noise_audit_demo_source") == source:
            return existing
    dataset = load_image_folder(root, name=name, overwrite=True, classes=classes)
    dataset.info["noise_audit_demo_source"] = source
    dataset.save()
    return dataset


def run_demo(data: str | None = None, classes: list[str] | None = None, fraction: float = 0.1,
             strategy: str = "uniform", seed: int = 0, name: str | None = None,
             backbone: str = "efficientnet_lite0", method: str = "auto", image_size: int | None = None,
             key: str = "noise_audit", progress: bool = True,
             cache_dir: str | Literal[False] | None = None) -> dict[str, Any]:
    """Runs the whole pipeline and returns the demo's result dict."""
    if data is None:
        data = write_digits_tree()
        image_size = image_size or 96
        name = name or "noise-audit-demo-digits"
    image_size = image_size or 224
    name = name or f"noise-audit-demo-{os.path.basename(os.path.abspath(data))}"
    dataset = _demo_dataset(data, name, classes)
    train = dataset.match_tags("train") if "train" in dataset.distinct("tags") else dataset
    injected = inject_label_noise(train, "ground_truth", fraction=fraction, seed=seed, strategy=strategy)
    results = audit(dataset, injected["noisy_field"], key=key, backbone=backbone, method=method,
                    image_size=image_size, seed=seed, progress=progress, cache_dir=cache_dir, overwrite=True)
    truth = np.array(dataset.select(list(results.ids), ordered=True).values(injected["flag_field"]), dtype=bool)
    signals = results.suspicion()

    def summary(v: np.ndarray) -> dict[str, Any]:
        m = detection_metrics(v, truth)
        return {k: m[k] for k in ("auroc", "average_precision", "precision_at_k", "recall_at_10pct")}

    return {
        "dataset": dataset.name,
        "n_samples": int(len(results.ids)),
        "n_flipped": int(truth.sum()),
        "num_label_issues_estimated": results.num_label_issues,
        "influence_method": results.config["influence_method"],
        "corruption_score": summary(signals["corruption_score"]),
        "baselines": {b: summary(v) for b, v in signals.items() if b != "corruption_score"},
        "features_computed": results.features_computed,
        "timings_s": results.timings,
    }
