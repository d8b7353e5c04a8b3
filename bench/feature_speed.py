"""Cold feature extraction against the forward-pass floor; decoding against the forward pass.

The parts of ``bench/speed.py`` about computing features (``--parts cold decode
cold_audit``), measured in one run on one machine so their ratios are honest:

- ``cold``: for EfficientNet-Lite0 and -Lite2 at 224 px, the **floor** (the
  forward pass alone, on a batch already in memory) and the **cold
  throughput** (``extract_features`` on real CIFAR-10 JPEGs, nothing cached:
  decoding workers, transform, forward, copy back), for fp32 and bf16, and
  **today's path** before this change (NCHW fp32 forward, PIL transform), all
  interleaved round by round so load changes hit each alike.
- ``decode``: per source size (CIFAR-10's 32 px, Tiny ImageNet's 64 px, and
  Tiny ImageNet images upscaled to 224, 640 and 1280 px into a temporary folder),
  the single-core cost of decoding and transforming one image, by the PIL
  pipeline of before and by the tensor pipeline of now, against the forward
  pass's cost per image; the pixels' differences between the two; and the
  cold throughput with 1, 2 and 3 decoding workers.
- ``cold_audit``: ``na.audit`` of 10,000 CIFAR-10 test images plus 500
  held-out training images at 224 px with an empty feature cache, per
  precision (``--audit-precisions``; ``legacy`` is today's path).

Each throughput is measured twice: by the wall clock (what a user waits),
and by the CPU time this process and its decoding workers used (``cpu_ips``:
images per CPU-second times the number of cores). On a shared machine other
jobs take cores from both alike, but not equally: a cold run has more
runnable processes than the floor's one, so it wins a larger share of a
loaded machine and its wall-clock ratio to the floor comes out too high. The
CPU-time ratio does not depend on the load, and on an idle machine, where the
forward pass keeps every core busy, it is what the wall clock would show.

    python bench/speed.py --parts cold decode cold_audit
"""

import os
import resource
import shutil
import tempfile
import time

from _common import TINY, split_files, cifar_root, table

MODELS = ("efficientnet_lite0", "efficientnet_lite2")
SOURCES = ("cifar32", "tiny64", "up224", "up640", "up1280")


def legacy_backbone(name="efficientnet_lite0", image_size=224):
    """Today's path before this change: NCHW fp32 forward, images through the PIL transform."""
    import torch
    from torchvision import transforms as T

    from noise_audit.core.backbones import Backbone, get_backbone

    bb = get_backbone(name, image_size=image_size)  # a module of its own (not shared with the others)
    bb.module.to(memory_format=torch.contiguous_format)
    tf = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    return Backbone(name=f"{name} (before)", module=bb.module, transform=tf, cache_id="legacy", precision="fp32",
                    decode="pil", channels_last=False)


def backbones(name, image_size=224, precisions=("fp32", "bf16")):
    """``{label: Backbone}``: today's path and this code's, per precision the machine runs."""
    from noise_audit.core.backbones import bf16_supported, get_backbone

    out = {"before (NCHW fp32, PIL)": legacy_backbone(name, image_size)}
    for p in precisions:
        if p == "fp32" or bf16_supported("cpu"):
            out[p] = get_backbone(name, image_size=image_size, precision=p)
    return out


CORES = os.cpu_count() or 1


def cpu_seconds():
    """CPU time used so far by this process and its finished children (decoding workers are joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def rates(n, fn):
    """``(wall images/s, CPU images/s)`` of ``fn()`` handling ``n`` images (see the module doc)."""
    c, t = cpu_seconds(), time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - t, cpu_seconds() - c
    return n / wall, n * CORES / cpu


def floor_ips(bb, image_size=224, batch_size=64, repeats=2):
    """The forward pass alone, ``(wall, cpu)`` images/s: a batch already decoded, best of ``repeats``."""
    import torch

    bb.to(torch.device("cpu"))
    x = torch.randn(batch_size, 3, image_size, image_size)
    bb(x[:8])
    runs = [rates(batch_size, lambda: bb(x)) for _ in range(repeats)]
    return max(r[0] for r in runs), max(r[1] for r in runs)


def cold_ips(paths, bb, batch_size=64, num_workers=None):
    """``extract_features`` on ``paths`` with nothing cached, ``(wall, cpu)`` images/s of the whole call."""
    from noise_audit.core.features import extract_features

    def run():
        _, n = extract_features(paths, bb, batch_size, cache_dir=False, progress=False, num_workers=num_workers)
        assert n == len(paths)

    return rates(len(paths), run)


def part_cold(n_images, rounds, models=MODELS):
    """Floor and cold throughput of each model x path, interleaved over ``rounds``; best round kept."""
    root = cifar_root()
    paths = [str(p) for p in split_files(root, "test", n_images, seed=1)[0]]
    out = {"images": len(paths), "source": "CIFAR-10 test JPEGs (32 px), resized to 224", "rounds": rounds,
           "models": {}}
    rows = []
    for name in models:
        bbs = backbones(name)
        res = {label: {"floor": [], "cold": [], "load": []} for label in bbs}
        cold_ips(paths[:64], bbs["fp32"])  # warm-up: workers, page cache
        for r in range(rounds):
            for label, bb in bbs.items():
                res[label]["floor"].append(floor_ips(bb))
                res[label]["cold"].append(cold_ips(paths, bb))
                res[label]["load"].append(os.getloadavg()[0])
                (fw, fc), (cw, cc) = res[label]["floor"][-1], res[label]["cold"][-1]
                print(f"  {name} {label} round {r}: floor {fw:.1f} img/s ({fc:.1f} by CPU time), "
                      f"cold {cw:.1f} ({cc:.1f}), load {res[label]['load'][-1]:.1f}", flush=True)
        best = {label: {k: tuple(max(x[i] for x in v[k]) for i in (0, 1)) for k in ("floor", "cold")}
                for label, v in res.items()}
        before, fp32_floor = best["before (NCHW fp32, PIL)"]["cold"], best["fp32"]["floor"]
        summary = {}
        for label, b in best.items():
            (fw, fc), (cw, cc) = b["floor"], b["cold"]
            summary[label] = {"floor_ips": fw, "cold_ips": cw, "floor_cpu_ips": fc, "cold_cpu_ips": cc,
                              "cold_over_floor": cw / fw, "cold_over_floor_cpu": cc / fc,
                              "cold_over_fp32_floor_cpu": cc / fp32_floor[1],
                              "cold_over_before": cw / before[0], "cold_over_before_cpu": cc / before[1],
                              "all_rounds": res[label]}
            rows.append([name, label, f"{fw:.1f} / {fc:.1f}", f"{cw:.1f} / {cc:.1f}", f"{cw / fw:.0%} / {cc / fc:.0%}",
                         f"{cc / fp32_floor[1]:.0%}", f"{cw / before[0]:.2f}x / {cc / before[1]:.2f}x"])
        out["models"][name] = summary
    print(f"\ncold features, {len(paths)} CIFAR-10 JPEGs at 224 px, best of {rounds} interleaved rounds; "
          "each figure by the wall clock / by CPU time (see the module doc)\n")
    print(table(rows, ["model", "path", "floor img/s", "cold img/s", "cold / own floor", "cold / fp32 floor (CPU)",
                       "vs before"]))
    return out


def source_images(kind, n, tmp):
    """``n`` real images of one source size (see the module doc); upscaled ones are written under ``tmp``."""
    from PIL import Image

    if kind == "cifar32":
        return [str(p) for p in split_files(cifar_root(), "test", n, seed=2)[0]]
    tiny = sorted(str(p) for p in (TINY / "train").glob("*/*.JPEG"))[:: max(1, 5000 // n)][:n]
    if kind == "tiny64":
        return tiny
    side = int(kind[2:])
    out = []
    os.makedirs(os.path.join(tmp, kind), exist_ok=True)
    for p in tiny:  # landscape 4:3, as photos mostly are
        q = os.path.join(tmp, kind, os.path.basename(p) + ".jpg")
        with Image.open(p) as im:
            im.convert("RGB").resize((side, side * 3 // 4), Image.BICUBIC).save(q, quality=90)
        out.append(q)
    return out


def decode_costs(paths, image_size=224, rounds=1):
    """Single-core CPU ms per image: decoding + the transform of before (PIL) and of now
    (tensors); and how the two pipelines' pixels differ (in 1/255 levels)."""
    import torch

    from noise_audit.core import images

    torch.set_num_threads(1)
    try:
        old, new = legacy_backbone(image_size=image_size).transform, backbones_transform(image_size)
        runs = {"before (PIL)": lambda p: old(images.decode(p, "pil")),
                "now (tensor)": lambda p: new(images.decode(p, "tensor"))}
        cost, outs = {}, {}
        for _ in range(rounds):  # interleaved; the best round of each
            for label, fn in runs.items():
                fn(paths[0])
                t = time.process_time()  # CPU time: one core's work, whatever the load
                outs[label] = torch.stack([fn(p) for p in paths])
                ms = (time.process_time() - t) / len(paths) * 1e3
                cost[label] = min(cost.get(label, ms), ms)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    levels = (outs["before (PIL)"] - outs["now (tensor)"]).abs() * 127.5  # normalised by 0.5: 1 level = 1/127.5
    return cost, {"max_levels": float(levels.max()), "share_of_values_differing": float((levels > 0.5).float().mean())}


def backbones_transform(image_size):
    from noise_audit.core.backbones import get_backbone

    return get_backbone(image_size=image_size).transform


def part_decode(n, rounds=1, worker_counts=(1, 2, 3)):
    """Decoding vs the forward pass per source size (best of ``rounds``); cold
    throughput (wall clock: a starved network waits without using CPU) with
    each of ``worker_counts`` decoding workers."""
    import torch

    from noise_audit.core.backbones import bf16_supported

    bbs = backbones("efficientnet_lite0")
    threads = torch.get_num_threads()
    fwd = {label: CORES * 1e3 / floor_ips(bb)[1] for label, bb in bbs.items() if label != "before (NCHW fp32, PIL)"}
    out = {"images_per_source": n, "forward_cpu_ms_per_image": fwd, "torch_threads": threads, "sources": {}}
    rows, wrows = [], []
    tmp = tempfile.mkdtemp(prefix="noise-audit-decode-")
    try:
        for kind in SOURCES:
            paths = source_images(kind, n, tmp)
            cost, diff = decode_costs(paths, rounds=rounds)
            workers = {}
            for w in worker_counts:
                workers[w] = {label: max(cold_ips(paths, bbs[label], num_workers=w)[0] for _ in range(rounds))
                              for label in fwd}
            out["sources"][kind] = {"decode_ms": cost, "pixels": diff, "cold_ips_by_workers": workers}
            share = {label: cost["now (tensor)"] / (cost["now (tensor)"] + ms) for label, ms in fwd.items()}
            rows.append([kind, f"{cost['before (PIL)']:.2f}", f"{cost['now (tensor)']:.2f}",
                         f"{diff['max_levels']:.0f}", f"{diff['share_of_values_differing']:.2%}"]
                        + [f"{fwd[label]:.1f} ({share[label]:.0%})" for label in fwd])
            wrows.append([kind] + [" / ".join(f"{workers[w][label]:.1f}" for w in worker_counts) for label in fwd])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ndecoding + transform to 224 px, one core, {n} images per source; forward pass = CPU ms per image "
          f"({threads} threads), in brackets decoding's share of the two\n")
    print(table(rows, ["source", "before (PIL) ms", "now (tensor) ms", "max diff (levels)", "values differing"]
                + [f"forward {label} ms" for label in fwd]))
    if worker_counts:
        print(f"\ncold img/s (wall clock) with {' / '.join(map(str, worker_counts))} decoding workers (Lite0, 224 px)\n")
        print(table(wrows, ["source"] + list(fwd)))
    out["bf16_supported"] = bf16_supported("cpu")
    return out


def part_cold_audit(precisions, n_test=10000, n_held=500):
    """``na.audit`` of CIFAR-10's test images + ``n_held`` training images (held out) at 224 px, cold."""
    import fiftyone as fo

    import noise_audit as na

    root = cifar_root()
    tp, tl, classes = split_files(root, "test", n_test)
    hp, hl, _ = split_files(root, "train", n_held, seed=3)
    samples = [fo.Sample(filepath=str(p), tags=[tag], ground_truth=fo.Classification(label=classes[y]))
               for paths, labels, tag in ((tp, tl, "train"), (hp, hl, "val")) for p, y in zip(paths, labels)]
    ds = fo.Dataset()  # temporary (non-persistent)
    ds.add_samples(samples, progress=False)
    out = {"n_samples": len(ds), "image_size": 224, "runs": {}}
    try:
        for p in precisions:
            cache = tempfile.mkdtemp(prefix="noise-audit-cold-")
            try:
                kwargs = {"precision": p} if p != "legacy" else {"backbone": legacy_backbone()}
                load, c, t = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
                r = na.audit(ds, key="cold", overwrite=True, image_size=224, cache_dir=cache, progress=True, **kwargs)
                wall, cpu = time.perf_counter() - t, cpu_seconds() - c
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            out["runs"][p] = {"wall_s": wall, "cpu_s": cpu, "cpu_s_per_core": cpu / CORES, "timings_s": r.timings,
                              "features_images_per_s": len(ds) / r.timings["features"],
                              "load_avg_1m_before": load, "load_avg_1m_after": os.getloadavg()[0]}
            print(f"  cold audit, {p}: {wall:.0f} s wall, {cpu:.0f} CPU-s ({r.timings})", flush=True)
    finally:
        ds.delete()
    rows = [[p, f"{v['wall_s']:.0f}", f"{v['cpu_s_per_core']:.0f}", f"{v['timings_s']['features']:.0f}",
             f"{v['features_images_per_s']:.1f}", f"{v['load_avg_1m_before']:.1f} / {v['load_avg_1m_after']:.1f}"]
            for p, v in out["runs"].items()]
    print(f"\ncold audit of {out['n_samples']} CIFAR-10 images at 224 px (empty feature cache); CPU-s / {CORES} cores is "
          "the wall time of a machine where the audit keeps every core busy (a lower bound of an idle machine's)\n")
    print(table(rows, ["precision", "wall s", f"CPU-s / {CORES}", "features s", "img/s", "load before / after"]))
    return out
