"""Bigger than one machine: the audit's arithmetic for 1,000,000 samples on a Dask LocalCluster.

The features: CIFAR-10's 60,000 EfficientNet-Lite0 features (32 px, from the
feature cache that ``bench/speed.py`` fills), replicated to ``--n`` rows with a
small Gaussian jitter (sd = 5% of each feature's spread, seeded per block) so
no two rows are equal; labels are the originals', 10% of them flipped
uniformly (seed 0) and scored against the flips; every 6th row is held out.
Each worker **generates its own blocks** from the 60k base features, so the
features never pass through this process, as when a cluster computes them
from images (``na.audit(..., client=...)`` does that through the same
:class:`~noise_audit.core.blocks.Blocks`).

Then :func:`noise_audit.core.pipeline.linear_signals` (head, 5 folds, average and
self-influence, as in an audit) runs on the workers. Reported: wall time per
stage, each worker's peak resident memory, this process's, and detection
quality of each signal.

    python bench/scale_out.py --n 1000000 --workers 2
    python bench/scale_out.py --n 20000 --workers 2 --out scale_out_small   # minutes
"""

import argparse
import os
import resource
import sys
import time

import numpy as np
from scipy.special import softmax

from _common import cifar_root, machine, split_files, table, write_json

FOLDS, L2, JITTER = 5, 3.0, 0.05


class Clock:
    def __init__(self):
        self.timings, self._stage = {}, None

    def start(self, stage):
        self._stage, self._t = stage, time.perf_counter()
        print(f"  {stage}...", flush=True)

    def stop(self):
        self.timings[self._stage] = self.timings.get(self._stage, 0.0) + time.perf_counter() - self._t


def base_features():
    from noise_audit.core import features

    root = cifar_root()
    tp, tl, _ = split_files(root, "train")
    vp, vl, _ = split_files(root, "test")
    raw, computed = features.extract_features(list(tp) + list(vp), features.get_backbone(image_size=32), progress=True)
    return raw, np.concatenate([tl, vl])


def make_block(index, rows, n, base, base_y, mean, scale, flips_seed=0):
    """Rows ``[index * rows, ...)`` of the replicated data set, standardised (runs on a worker)."""
    start = index * rows
    stop = min(start + rows, n)
    ids = np.arange(start, stop)
    rng = np.random.default_rng(1000 + index)
    raw = base[ids % len(base)].astype(np.float64)
    raw += rng.normal(size=raw.shape) * (JITTER * np.where(np.isfinite(scale), scale, 0.0))
    x = (raw - mean) / scale
    y = base_y[ids % len(base)].copy()
    flip_rng = np.random.default_rng([flips_seed, index])
    flipped = flip_rng.random(len(ids)) < 0.1
    y[flipped] = (y[flipped] + flip_rng.integers(1, 10, flipped.sum())) % 10
    # folds: a seeded random assignment (stratification does not matter at this size)
    fold = np.random.default_rng([7, index]).integers(0, FOLDS, len(ids))
    return {"x": x, "y": y, "train": ids % 6 != 0, "fold": fold, "flipped": flipped}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="scale_out")
    args = p.parse_args()
    from dask.distributed import Client, LocalCluster

    import noise_audit as na
    from noise_audit.core import features, pipeline
    from noise_audit.core.blocks import BLOCK_ROWS, Blocks

    base, base_y = base_features()
    mean, scale = features.standardization(base)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=None)
    client = Client(cluster)
    try:
        t0 = time.perf_counter()
        shared = [client.scatter(a, broadcast=True) for a in (base, base_y, mean, scale)]
        n_blocks = -(-args.n // BLOCK_ROWS)
        parts = [client.submit(make_block, i, BLOCK_ROWS, args.n, *shared, pure=False) for i in range(n_blocks)]
        blocks = Blocks(parts, [min(BLOCK_ROWS, args.n - i * BLOCK_ROWS) for i in range(n_blocks)], client)
        blocks.map(_nothing)  # wait until every block exists
        t_blocks = time.perf_counter() - t0
        print(f"{args.n} rows in {n_blocks} blocks on {args.workers} workers ({t_blocks:.1f} s)", flush=True)
        clock = Clock()
        t = time.perf_counter()
        out = pipeline.linear_signals(blocks, base.shape[1], 10, L2, FOLDS, clock)
        wall = time.perf_counter() - t
        flipped = blocks.map_concat(_column, "flipped").astype(bool)
        y = blocks.map_concat(_column, "y")
        worker_rss = client.run(peak_rss_mb)
    finally:
        client.close()
        cluster.close()
    from noise_audit.core import scores

    quality = scores.label_quality(y, softmax(out.oos_logits, axis=1))
    metrics = {
        "average_influence": na.detection_metrics(-out.average_influence, flipped),
        "self_influence": na.detection_metrics(out.self_influence, flipped),
        "label_quality": na.detection_metrics(-quality, flipped),
        "loss": na.detection_metrics(out.loss, flipped),
    }
    result = {"n": args.n, "workers": args.workers, "block_rows": BLOCK_ROWS, "blocks": n_blocks,
              "features": "CIFAR-10 EfficientNet-Lite0 32 px features (60k) replicated with 5% jitter",
              "make_blocks_s": t_blocks, "pipeline_wall_s": wall, "stages_s": clock.timings,
              "worker_peak_rss_mb": worker_rss, "client_peak_rss_mb": peak_rss_mb(),
              "feature_array_mb_float64": args.n * base.shape[1] * 8 / 2**20, "metrics": metrics,
              "machine": machine(), "command": " ".join(["python", "bench/scale_out.py", *sys.argv[1:]])}
    rows = [[k, f"{v:.1f}"] for k, v in clock.timings.items()] + [["total (head, folds, influence)", f"{wall:.1f}"]]
    rows += [[f"peak RSS {w}", f"{m:.0f} MB"] for w, m in worker_rss.items()]
    rows += [["peak RSS of this process", f"{peak_rss_mb():.0f} MB"]]
    rows += [[f"AP {s}", f"{m['average_precision']:.4f}"] for s, m in metrics.items()]
    print(table(rows, ["stage / measure", "value"]))
    write_json(args.out, result)


def _nothing(block):
    return 0


def _column(block, name):
    return block[name]


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
