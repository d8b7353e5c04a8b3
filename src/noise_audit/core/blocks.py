"""Row blocks: the audit's sample-wise arithmetic, in this process or on Dask workers.

Everything the linear head needs from the samples is either a **sum over
samples** (the loss and its gradient, Hessian-vector products, the K-FAC
statistics, mean gradients) or **one value per sample** (logits, influence,
self-influence). So the samples are cut into blocks of rows, a function runs
on each block, and the results are summed or concatenated.

- Without a Dask client the blocks are views of arrays in this process (on the
  audit's device), and "running on a block" is a loop: no copies, one code
  path for every size.
- With a ``dask.distributed.Client`` the blocks live on the workers (scattered
  there, or computed there from the images) and only small results travel:
  vectors of the parameters' size, and one value per sample. Sums are reduced
  pairwise on the workers.

A block is a dict of equally long arrays: ``x`` (features), ``y`` (labels),
``train`` (bool: in the head's training set) and ``fold`` (the
cross-validation fold of each row). Block functions are plain module-level
functions ``f(block, *args)`` so Dask can ship them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Dict, Tuple, Union, cast

import numpy as np
import numpy.typing as npt
import torch

if TYPE_CHECKING:
    from dask.distributed import Client

# A block: equally long per-row arrays (numpy or torch) by column name.
Block = Dict[str, Any]
# Which rows of a block (see :func:`select`): "all", "train", "test", ("fold", k) or ("not_fold", k).
Rows = Union[str, Tuple[str, int]]

BLOCK_ROWS = 16384  # bounds every per-block temporary (n_rows x d floats)


def as_tensor(a: npt.ArrayLike | torch.Tensor, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor view of ``a`` (numpy or torch), on ``device`` when given."""
    t = a if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))
    return t.to(device=device, dtype=dtype) if device is not None or dtype is not None else t


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, tuple):
        return tuple(_add(u, v) for u, v in zip(a, b))
    return a + b


def _sum_all(*parts: Any) -> Any:
    out = parts[0]
    for p in parts[1:]:
        out = _add(out, p)
    return out


class Blocks:
    """Rows of a data set in blocks, local or on Dask workers (see module doc).

    Args:
        parts: local block dicts, or Dask futures of them.
        sizes: rows per block.
        client: the Dask client holding ``parts``, or ``None`` (local).
    """

    parts: list[Any]
    sizes: list[int]
    client: Client | None

    def __init__(self, parts: Iterable[Any], sizes: Iterable[int], client: Client | None = None) -> None:
        self.parts, self.sizes, self.client = list(parts), list(sizes), client

    @classmethod
    def from_arrays(cls, columns: Mapping[str, Any], rows: int = BLOCK_ROWS, client: Client | None = None,
                    device: torch.device | str | None = None) -> Blocks:
        """Cuts equally long arrays (``x``, ``y``, ...) into blocks.

        Local blocks are views (tensors on ``device``); with a client they are
        scattered to the workers, spread evenly.
        """
        n = len(next(iter(columns.values())))
        bounds = [(s, min(s + rows, n)) for s in range(0, n, rows)] or [(0, 0)]
        if client is None:
            parts = [{k: as_tensor(v[s:e], device) for k, v in columns.items()} for s, e in bounds]
        else:
            blocks = [{k: np.ascontiguousarray(np.asarray(v[s:e])) for k, v in columns.items()} for s, e in bounds]
            parts = client.scatter(blocks)
        return cls(parts, [e - s for s, e in bounds], client)

    @property
    def n(self) -> int:
        return sum(self.sizes)

    def map(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``[fn(block, *args) for each block]``, gathered here, in block order."""
        if self.client is None:
            return [fn(part, *args) for part in self.parts]
        return self.client.gather([self.client.submit(fn, part, *args, pure=False) for part in self.parts])

    def map_sum(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``sum(fn(block, *args))`` over blocks (tuples are summed element-wise)."""
        if self.client is None:
            return _sum_all(*(fn(part, *args) for part in self.parts))
        futures = [self.client.submit(fn, part, *args, pure=False) for part in self.parts]
        while len(futures) > 1:  # pairwise, on the workers: only the total comes here
            futures = [self.client.submit(_sum_all, *futures[i : i + 2], pure=False) for i in range(0, len(futures), 2)]
        return self.client.gather(futures[0])

    def map_concat(self, fn: Callable[..., Any], *args: Any) -> np.ndarray:
        """``fn(block, *args)`` per block (an array of that block's rows), concatenated, as numpy."""
        out = [as_tensor(r).cpu().numpy() if torch.is_tensor(r) else np.asarray(r) for r in self.map(fn, *args)]
        return np.concatenate(out) if out else np.zeros(0)

    def apply(self, fn: Callable[..., Block], *args: Any) -> Blocks:
        """New blocks ``fn(block, *args)``, computed and kept where the blocks are."""
        if self.client is None:
            return Blocks([fn(part, *args) for part in self.parts], self.sizes)
        return Blocks([self.client.submit(fn, part, *args, pure=False) for part in self.parts], self.sizes, self.client)

    def with_column(self, name: str, values: npt.ArrayLike) -> Blocks:
        """These blocks plus a per-row column ``name`` (``values`` in block order)."""
        values = np.asarray(values)
        bounds = np.cumsum([0] + self.sizes)
        pieces = [values[s:e] for s, e in zip(bounds[:-1], bounds[1:])]
        if self.client is None:
            return Blocks([{**part, name: as_tensor(piece)} for part, piece in zip(self.parts, pieces)], self.sizes)
        parts = [self.client.submit(_with_column, part, name, piece, pure=False)
                 for part, piece in zip(self.parts, pieces)]
        return Blocks(parts, self.sizes, self.client)

    def arg(self, value: Any) -> Any:
        """``value`` (e.g. the head's weights) as an argument for block functions.

        Local blocks take it as it is, on the audit's device. Dask workers get
        it on the CPU, and as a future on every worker when it is large (the
        inverse Hessian), so it travels once, not once per block.
        """
        if self.client is None:
            return value
        if torch.is_tensor(value):
            value = value.detach().cpu()
        if getattr(value, "nbytes", 0) < (1 << 20):
            return value
        return self.client.scatter(value, broadcast=True)


def _with_column(block: Block, name: str, values: Any) -> Block:
    return {**block, name: values}


def select(block: Block, rows: Rows) -> torch.Tensor | None:
    """Boolean mask of a block's rows in ``rows``: ``"all"``, ``"train"``, ``"test"``,
    ``("fold", k)`` (rows of fold k) or ``("not_fold", k)`` (every other row that
    a ``fit`` column, when the block has one, lets fit the fold's head)."""
    if rows == "all":
        return None
    if rows == "train":
        return as_tensor(block["train"])
    if rows == "test":
        return ~as_tensor(block["train"])
    kind, k = cast(Tuple[str, int], rows)
    fold = as_tensor(block["fold"])
    if kind == "fold":
        return fold == k
    return (fold != k) & as_tensor(block["fit"]) if "fit" in block else fold != k


def rows_of(block: Block, rows: Rows, *names: str) -> tuple[Any, ...]:
    """The block's arrays ``names`` for ``rows``, plus ``keep``.

    A few rows (e.g. the held-out ones) are copied out and ``keep`` is
    ``None``. When most rows are selected (the training set, all folds but
    one), copying them would cost more than computing on the others too, so
    the whole arrays come back with ``keep``, a 0/1 float weight per row:
    sums multiply by it, per-row results are indexed by ``keep > 0``.
    """
    mask = select(block, rows)
    out = tuple(as_tensor(block[name]) for name in names)
    if mask is None:
        return (*out, None)
    mask = mask.to(out[0].device)
    if mask.float().mean() >= 0.5:
        return (*out, mask.to(out[0].dtype if out[0].is_floating_point() else torch.float64))
    return (*(t[mask] for t in out), None)


def weighted(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """``values`` (rows first) times the rows' ``keep`` weights (see :func:`rows_of`)."""
    return values if keep is None else values * keep.reshape(-1, *([1] * (values.ndim - 1)))


def kept(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The rows of per-row ``values`` that ``keep`` selects (see :func:`rows_of`)."""
    return values if keep is None else values[keep > 0]
