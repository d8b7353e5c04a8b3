"""Stage 3, head: an L2-regularised softmax classifier on frozen features.

Influence functions assume the model sits at a minimum of its training
objective, so the head is trained to one: full-batch L-BFGS with a strong-Wolfe
line search, in float64, on

    mean cross-entropy + (l2 / 2) * ||theta||^2

until the gradient vanishes. The same ``l2`` is then handed to pyDVL as the
Hessian regularisation, so the Hessian it inverts is exactly the Hessian of
this objective.

:func:`cross_val_probs` gives K-fold out-of-sample predicted probabilities, the
input cleanlab needs; :func:`select_l2` picks ``l2`` by out-of-fold log loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy.special import softmax
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from noise_audit.core.blocks import Block, Blocks, Rows, kept, rows_of, weighted

DTYPE = torch.float64
L2_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


class LinearHead(torch.nn.Module):
    """``logits = x @ W.T + b``; the only trained part of the model."""

    fc: torch.nn.Linear

    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(n_features, n_classes, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def state(self) -> dict[str, Any]:
        """JSON-serialisable weights."""
        return {"weight": self.fc.weight.detach().tolist(), "bias": self.fc.bias.detach().tolist()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LinearHead:
        w = torch.tensor(state["weight"], dtype=DTYPE)
        head = cls(w.shape[1], w.shape[0])
        with torch.no_grad():
            head.fc.weight.copy_(w)
            head.fc.bias.copy_(torch.tensor(state["bias"], dtype=DTYPE))
        return head


def as_tensor(x: npt.ArrayLike | torch.Tensor, dtype: torch.dtype = DTYPE,
              device: torch.device | str | None = None) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def resolve_device(device: torch.device | str | None = "auto") -> torch.device:
    """``"auto"`` -> ``"cuda"`` when a GPU is present, else ``"cpu"``; checks any other name."""
    from noise_audit.errors import NoiseAuditError

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise NoiseAuditError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {device!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NoiseAuditError(f"device {str(device)!r} was asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise NoiseAuditError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {str(device)!r}")
    return device


def device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def objective(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """Mean cross-entropy plus the L2 penalty: what the head minimises.

    The penalty is ``head.penalty()`` where defined (e.g. distance to
    pretrained weights), else the squared norm of all parameters.
    """
    penalty = cast(Any, head).penalty() if hasattr(head, "penalty") else sum((p**2).sum() for p in head.parameters())
    return F.cross_entropy(head(x), y) + 0.5 * l2 * penalty


def fit_head(x: np.ndarray | torch.Tensor, y: npt.ArrayLike, n_classes: int, l2: float, max_iter: int = 500,
             x_val: np.ndarray | torch.Tensor | None = None, y_val: npt.ArrayLike | None = None, seed: int = 0,
             make_head: Callable[[int], torch.nn.Module] | None = None, init: torch.nn.Module | None = None,
             device: torch.device | str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Trains a :class:`LinearHead` to the minimum of :func:`objective`.

    Args:
        x: standardised features ``(n, d)``.
        y: integer labels ``(n,)``.
        n_classes: number of classes.
        l2: L2 regularisation strength (per-sample scale, see module doc).
        max_iter: L-BFGS iteration cap.
        x_val, y_val: optional held-out data, to record a validation loss curve.
        seed: initialisation seed.
        make_head: optional ``f(n_classes) -> module`` to train instead of a
            :class:`LinearHead` (e.g. the last block, see ``finetune``).
        init: optional trained head of the same shape to start from (its
            state dict is copied). The objective is convex for a
            :class:`LinearHead`, so the minimum is the same; a start near it
            saves most of the steps (cross-validation folds start from the
            head fit on all training samples).
        device: torch device to train on (``None``: the CPU).

    Returns:
        ``(head, history)``; ``history`` holds ``train_loss`` and
        ``val_loss`` per L-BFGS step and the final ``grad_norm``.
    """
    torch.manual_seed(seed)
    device = torch.device(device or "cpu")
    x, y = as_tensor(x, device=device), torch.as_tensor(np.asarray(y), dtype=torch.long, device=device)
    head = _start(make_head(n_classes) if make_head else _zero_linear_head(x.shape[1], n_classes), init, device)
    trainable = [p for p in head.parameters() if p.requires_grad]
    has_val = x_val is not None and len(x_val)
    if has_val:
        xv, yv = (as_tensor(cast(np.ndarray, x_val), device=device),
                  torch.as_tensor(np.asarray(y_val), dtype=torch.long, device=device))

    def loss_and_grad():
        loss = objective(head, x, y, l2)
        loss.backward()
        return loss

    @torch.no_grad()
    def curves():
        return float(F.cross_entropy(head(x), y)), float(F.cross_entropy(head(xv), yv)) if has_val else None

    return head, _run_lbfgs(trainable, loss_and_grad, curves, max_iter)


def _zero_linear_head(n_features, n_classes):
    head = LinearHead(n_features, n_classes)
    with torch.no_grad():  # start from zero: deterministic, and the problem is convex
        head.fc.weight.zero_()
        head.fc.bias.zero_()
    return head


def _start(head, init, device):
    """``head``, with ``init``'s weights when given, on ``device``."""
    if init is not None:
        head.load_state_dict(init.state_dict())
    return head.to(device)


def _run_lbfgs(params, loss_and_grad, curves, max_iter):
    """Minimises with L-BFGS (strong Wolfe) until the gradient vanishes or it stalls.

    ``loss_and_grad()`` returns the objective and sets each parameter's
    ``.grad``; ``curves()`` returns ``(train loss, validation loss or None)``,
    recorded every 10 steps. Returns the history (see :func:`fit_head`).
    """
    history = {"train_loss": [], "val_loss": []}
    opt = torch.optim.LBFGS(
        params, lr=1, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-9, tolerance_change=1e-14, line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        return loss_and_grad()

    # One L-BFGS call runs up to max_iter steps; calling step repeatedly in
    # chunks lets us record the loss curves along the way.
    chunk = 10
    for _ in range(0, max_iter, chunk):
        opt.param_groups[0]["max_iter"] = chunk
        done_before = opt.state[params[0]].get("n_iter", 0)
        opt.step(closure)
        train_loss, val_loss = curves()
        history["train_loss"].append(train_loss)
        if val_loss is not None:
            history["val_loss"].append(val_loss)
        grad = torch.cat([p.grad.flatten() for p in params])
        # Fewer steps than asked: L-BFGS stopped itself (gradient below
        # tolerance_grad, or no change in float64); more calls only repeat that.
        stalled = opt.state[params[0]]["n_iter"] - done_before < chunk
        if grad.abs().max() < 1e-8 or stalled:
            break
    opt.zero_grad()
    loss_and_grad()
    history["grad_norm"] = float(torch.cat([p.grad.flatten() for p in params]).norm())
    for p in params:
        p.grad = None
    return history


def fit_linear_head(blocks: Blocks, n_features: int, n_classes: int, l2: float, rows: Rows = "train",
                    val_rows: Rows | None = None, init: torch.nn.Module | None = None, max_iter: int = 500,
                    device: torch.device | str | None = None) -> tuple[LinearHead, dict[str, Any]]:
    """:func:`fit_head` for the :class:`LinearHead`, on :class:`~noise_audit.core.blocks.Blocks`.

    The same objective and optimiser, but the loss and its gradient are sums
    over blocks in closed form (``sum_i r_i [x_i, 1]^T``), so the rows can stay
    where they are: views in this process, or on Dask workers. ``rows`` and
    ``val_rows`` select the training and validation rows
    (see :func:`noise_audit.core.blocks.select`).
    """
    device = torch.device(device or "cpu")
    head = _start(_zero_linear_head(n_features, n_classes), init, device)
    w, b = head.fc.weight, head.fc.bias

    def totals(which):
        loss, grad, n = blocks.map_sum(loss_and_gradient, blocks.arg(w.detach()), blocks.arg(b.detach()), which)
        return loss.item() / n.item(), grad.to(device) / n.item()

    def loss_and_grad():
        loss, grad = totals(rows)
        with torch.no_grad():
            w.grad = grad[:, :-1] + l2 * w
            b.grad = grad[:, -1] + l2 * b
            return torch.tensor(loss + 0.5 * l2 * float((w**2).sum() + (b**2).sum()), dtype=DTYPE)

    def curves():
        return totals(rows)[0], totals(val_rows)[0] if val_rows is not None else None

    return head, _run_lbfgs([w, b], loss_and_grad, curves, max_iter)


def cross_val_logits(blocks: Blocks, n_features: int, n_classes: int, l2: float, folds: int,
                     init: torch.nn.Module | None = None, progress: bool = False,
                     device: torch.device | str | None = None) -> np.ndarray:
    """:func:`cross_val_probs` on :class:`~noise_audit.core.blocks.Blocks` whose ``fold`` column
    holds each row's fold: out-of-fold logits, in block order."""
    logits = np.zeros((blocks.n, n_classes))
    fold_of = blocks.map_concat(_fold_column)
    if init is not None:
        # Every fold's rows are 1 - 1/K of all rows, so the minimum on all rows
        # is the nearest common start; ``init`` (the head on the training rows)
        # can be far from it when the held-out part is large.
        init, _ = fit_linear_head(blocks, n_features, n_classes, l2, rows="all", init=init, device=device)
    for k in tqdm(range(folds), desc="cross-validation folds", disable=not progress, leave=False):
        head, _ = fit_linear_head(blocks, n_features, n_classes, l2, rows=("not_fold", k), init=init, device=device)
        w, b = blocks.arg(head.fc.weight.detach()), blocks.arg(head.fc.bias.detach())
        logits[fold_of == k] = blocks.map_concat(class_logits, w, b, ("fold", k))
    return logits


# -- block functions of the head's objective (run by Blocks: a loop here, or Dask tasks) --

def outer_sum(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_i s_i [x_i, 1]^T`` -> ``(C, d + 1)``."""
    return torch.cat([s.T @ x, s.sum(0)[:, None]], dim=1)


def loss_and_gradient(block: Block, w: torch.Tensor, b: torch.Tensor,
                      rows: Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(summed cross-entropy, summed gradient (C, d + 1), rows)`` over ``rows``."""
    x, y, keep = rows_of(block, rows, "x", "y")
    logp = torch.log_softmax(x @ w.T + b, dim=1)
    r = logp.exp()
    r[torch.arange(len(y), device=r.device), y.long()] -= 1.0
    loss = -weighted(logp.gather(1, y.long()[:, None])[:, 0], keep).sum()
    count = float(len(y)) if keep is None else keep.sum().item()
    return loss, outer_sum(weighted(r, keep), x), torch.tensor(count, dtype=DTYPE)


def class_logits(block: Block, w: torch.Tensor, b: torch.Tensor, rows: Rows) -> torch.Tensor:
    x, keep = rows_of(block, rows, "x")
    return kept(x @ w.T + b, keep)


def _fold_column(block):
    return block["fold"]


@torch.no_grad()
def predict_logits(head: torch.nn.Module, x: npt.ArrayLike | torch.Tensor) -> np.ndarray:
    return head(as_tensor(x, device=device_of(head))).cpu().numpy()


def cross_val_probs(x: np.ndarray, y: npt.ArrayLike, n_classes: int, l2: float, folds: int = 5, seed: int = 0,
                    make_head: Callable[[int], torch.nn.Module] | None = None, progress: bool = False,
                    init: torch.nn.Module | None = None,
                    splits: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
                    device: torch.device | str | None = None) -> np.ndarray:
    """Out-of-sample logits for every sample by stratified K-fold.

    Each sample's logits come from a head that never saw it, which is what
    cleanlab's confident learning requires. ``init``: a head every fold starts
    from (see :func:`fit_head`). ``splits``: the folds as ``(train, held-out)``
    index pairs, instead of a seeded stratified split of ``(x, y)``.
    """
    y = np.asarray(y)
    logits = np.zeros((len(y), n_classes))
    if splits is None:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
    for train_idx, test_idx in tqdm(list(splits), desc="cross-validation folds", disable=not progress, leave=False):
        head, _ = fit_head(x[train_idx], y[train_idx], n_classes, l2, seed=seed, make_head=make_head, init=init,
                           device=device)
        logits[test_idx] = predict_logits(head, x[test_idx])
    return logits


def log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    probs = softmax(logits, axis=1)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def select_l2(x: np.ndarray, y: np.ndarray, n_classes: int, grid: Iterable[float] = L2_GRID, folds: int = 5,
              seed: int = 0, make_head: Callable[[int], torch.nn.Module] | None = None,
              splits: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
              device: torch.device | str | None = None) -> tuple[float, np.ndarray, dict[float, float]]:
    """Picks ``l2`` from ``grid`` by out-of-fold log loss on the given labels.

    Returns ``(l2, out-of-fold logits at that l2, {l2: log loss})``.
    """
    scores: dict[float, float] = {}
    best: tuple[float, np.ndarray] | None = None
    for l2 in grid:
        logits = cross_val_probs(x, y, n_classes, l2, folds, seed, make_head, splits=splits, device=device)
        scores[l2] = log_loss(logits, y)
        if best is None or scores[l2] < scores[best[0]]:
            best = (l2, logits)
    best = cast("tuple[float, np.ndarray]", best)  # grid is not empty
    return best[0], best[1], scores
