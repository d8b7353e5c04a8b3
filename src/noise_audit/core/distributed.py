"""Bigger than one machine: an audit's features and arithmetic on Dask workers.

With ``na.audit(..., client=dask.distributed.Client(...))`` (CLI:
``--dask ADDRESS`` or ``--dask local:N``):

- the images are cut into partitions of :data:`~noise_audit.core.blocks.BLOCK_ROWS`
  rows and each worker computes the features of its partitions (through the
  feature cache, so workers must see the image files and, to share it, the
  cache directory); features read from an embeddings field are scattered to
  the workers in the same partitions instead (:func:`array_blocks`);
- the features stay on the workers as row blocks, standardised there (two
  passes of sums: means, then squared deviations);
- the head, every cross-validation fold, the Hessian-vector products, the
  K-FAC statistics and the mean gradients are sums over blocks, reduced on
  the workers; per-sample results (one number each) come back here.

This process never holds the features: what it keeps is O(n) numbers and
O(parameters^2) for the solver. See README "Bigger than one machine".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from noise_audit.core import features as feats
from noise_audit.core.backbones import Backbone
from noise_audit.core.blocks import BLOCK_ROWS, Blocks
from noise_audit.errors import NoiseAuditError

if TYPE_CHECKING:
    from dask.distributed import Client


def connect(spec: str) -> Client:
    """A ``dask.distributed.Client`` from ``"local:N"`` (a new ``LocalCluster`` of N
    single-threaded worker processes) or a scheduler address (``tcp://host:8786``)."""
    from dask.distributed import Client, LocalCluster

    if spec.startswith("local:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise NoiseAuditError(f"--dask local:N needs a positive number of workers, not {spec!r}")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster)
    try:
        return Client(spec, timeout="20s")
    except OSError as e:
        raise NoiseAuditError(f"Cannot reach the Dask scheduler at {spec!r}: {e}") from e


def feature_blocks(client: Client, filepaths: Sequence[str] | np.ndarray, backbone: Backbone,
                   columns: Mapping[str, Any], batch_size: int = 64, cache_dir: str | Literal[False] | None = None,
                   train: np.ndarray | None = None) -> tuple[Blocks, np.ndarray, np.ndarray, int]:
    """Features of ``filepaths`` computed on the workers, as standardised :class:`Blocks`.

    Args:
        client: the Dask client.
        filepaths: image paths, in the view's order.
        backbone: a :class:`~noise_audit.core.backbones.Backbone` (sent to every worker once).
        columns: other per-sample arrays to keep beside the features (``y``,
            ``train``, ``fold``), in the same order.
        batch_size, cache_dir: as in :func:`~noise_audit.core.features.extract_features`.
        train: boolean mask of the rows whose statistics standardise all rows.

    Returns:
        ``(blocks, mean, scale, n_computed)``; ``mean`` and ``scale`` as
        :func:`~noise_audit.core.features.standardization` returns them.
    """
    n = len(filepaths)
    bounds = [(s, min(s + BLOCK_ROWS, n)) for s in range(0, n, BLOCK_ROWS)]
    parts = client.scatter([{"paths": list(filepaths[s:e]), **{k: np.asarray(v[s:e]) for k, v in columns.items()}}
                            for s, e in bounds])
    bb = client.scatter(backbone, broadcast=True)
    raw = Blocks([client.submit(_extract, p, bb, batch_size, cache_dir, pure=False) for p in parts],
                 [e - s for s, e in bounds], client)
    n_computed = int(sum(raw.map(_computed)))
    return (*_standardized(raw), n_computed)


def array_blocks(client: Client, raw: np.ndarray, columns: Mapping[str, Any]) -> tuple[Blocks, np.ndarray, np.ndarray]:
    """Features this process already holds (an embeddings field's vectors),
    scattered to the workers in row blocks and standardised there as
    :func:`feature_blocks` does: ``(blocks, mean, scale)``.

    The matrix is sent once, a block at a time; this process keeps its float32
    copy, never the float64 standardised one.
    """
    n = len(raw)
    bounds = [(s, min(s + BLOCK_ROWS, n)) for s in range(0, n, BLOCK_ROWS)]
    parts = client.scatter([{"raw": raw[s:e], "computed": 0, **{k: np.asarray(v[s:e]) for k, v in columns.items()}}
                            for s, e in bounds])
    return _standardized(Blocks(parts, [e - s for s, e in bounds], client))


def _standardized(raw: Blocks) -> tuple[Blocks, np.ndarray, np.ndarray]:
    """Raw feature blocks standardised on their training rows: ``(blocks, mean, scale)``."""
    # Two passes, as np.mean / np.std do: the mean, then squared deviations from it.
    total, count = raw.map_sum(_sum_rows)
    mean = total / count
    squares, _ = raw.map_sum(_squared_deviations, mean)
    std = np.sqrt(squares / count)
    scale = feats.scale_from_spread(std)
    return raw.apply(_standardize, mean, scale), mean, scale


def _extract(part, backbone, batch_size, cache_dir):
    raw, n_computed = feats.extract_features(part["paths"], backbone, batch_size, cache_dir, progress=False)
    out = {k: v for k, v in part.items() if k != "paths"}
    out["raw"], out["computed"] = raw, n_computed
    return out


def _computed(block):
    return block["computed"]


def _train_raw(block):
    raw = np.asarray(block["raw"], dtype=np.float64)
    return raw[np.asarray(block["train"], dtype=bool)]


def _sum_rows(block):
    raw = _train_raw(block)
    return raw.sum(0), float(len(raw))


def _squared_deviations(block, mean):
    raw = _train_raw(block)
    return ((raw - mean) ** 2).sum(0), float(len(raw))


def _standardize(block, mean, scale):
    out = {k: v for k, v in block.items() if k not in ("raw", "computed")}
    x = np.subtract(block["raw"], mean, dtype=np.float64)
    x /= scale
    out["x"] = x
    return out
