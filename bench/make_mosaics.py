"""Object-detection test data from real photographs: mosaics of labelled tiles.

Each mosaic is a grid of 2x2 to 3x3 real images (Tiny ImageNet's 64 px
photographs, or CIFAR-10's 32 px ones) pasted on a neutral grey background
with a gap around every tile. Every tile is one object: its class is the
folder its photograph came from and its box is exactly the tile's pixels, so
the truth of every box is known. Nothing is drawn or generated: the pixels of
the tiles are the photographs', unchanged; only the grey canvas is new.

``python bench/make_mosaics.py OUT [--source DIR] [--n N] [--seed S] [--quality Q]``
writes ``OUT/<name>.jpg`` and ``OUT/labels.json`` (``{"images": [{"file", "width",
"height", "split", "objects": [{"label", "box": [x, y, w, h] in relative
coordinates, "source": the tile's file}]}]}``); ``fixtures/mosaics/`` was made
with ``--n 12 --seed 0 --quality 80`` from ``../shared/data/tiny-imagenet-10``.
:func:`build_mosaics` does the same in code, and :func:`load_mosaics` reads a
``labels.json`` into a FiftyOne dataset with a ``Detections`` field.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GREY = (128, 128, 128)
GAP = 4  # pixels of grey around every tile


def tiles_of(root: str | os.PathLike[str], split: str, classes: Sequence[str] | None = None,
             per_class: int | None = None) -> list[tuple[str, str]]:
    """``[(path, class)]`` of the images under ``root/split/<class>/``, sorted by name."""
    base = Path(root) / split
    out = []
    for c in sorted(classes or [p.name for p in base.iterdir() if p.is_dir()]):
        files = sorted(p for p in (base / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        out += [(str(p), c) for p in files[:per_class]]
    return out


def build_mosaics(tiles: Sequence[tuple[str, str]], out_dir: str | os.PathLike[str], split: str = "train",
                  seed: int = 0, n: int | None = None, quality: int = 90, prefix: str = "") -> list[dict[str, Any]]:
    """Pastes ``tiles`` (each used once, in a seeded order) into mosaics of 4 to 9 tiles.

    Returns the records of ``labels.json`` (see the module doc); ``n`` caps the
    number of mosaics. Tiles keep their size (all tiles of one mosaic are
    resized to the first one's size only if they differ).
    """
    from PIL import Image

    rng = random.Random(seed)
    order = list(tiles)
    rng.shuffle(order)
    os.makedirs(out_dir, exist_ok=True)
    records, i = [], 0
    while i < len(order) and (n is None or len(records) < n):
        rows, cols = rng.randint(2, 3), rng.randint(2, 3)
        group = order[i:i + rows * cols]
        i += rows * cols
        if len(group) < 4:
            break
        first = Image.open(group[0][0]).convert("RGB")
        tw, th = first.size
        width, height = cols * tw + (cols + 1) * GAP, rows * th + (rows + 1) * GAP
        canvas = Image.new("RGB", (width, height), GREY)
        objects = []
        for k, (path, label) in enumerate(group):
            img = Image.open(path).convert("RGB")
            if img.size != (tw, th):
                img = img.resize((tw, th))
            x, y = GAP + (k % cols) * (tw + GAP), GAP + (k // cols) * (th + GAP)
            canvas.paste(img, (x, y))
            objects.append({"label": label, "box": [x / width, y / height, tw / width, th / height],
                            "source": os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path)})
        name = f"{prefix}{split}_{len(records):04d}.jpg"
        canvas.save(os.path.join(out_dir, name), quality=quality)
        records.append({"file": name, "width": width, "height": height, "split": split, "objects": objects})
    return records


def write_labels(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str]) -> str:
    path = os.path.join(out_dir, "labels.json")
    with open(path, "w") as f:
        json.dump({"images": list(records)}, f, indent=1)
    return path


def load_mosaics(folder: str | os.PathLike[str], name: str | None = None, label_field: str = "ground_truth") -> Any:
    """A FiftyOne dataset of the mosaics in ``folder`` (its ``labels.json``): one sample per
    mosaic, tagged with its split, the tiles as ``fo.Detections`` in ``label_field``."""
    import fiftyone as fo

    with open(os.path.join(folder, "labels.json")) as f:
        records = json.load(f)["images"]
    ds = fo.Dataset(name)
    samples = []
    for r in records:
        dets = [fo.Detection(label=o["label"], bounding_box=o["box"]) for o in r["objects"]]
        samples.append(fo.Sample(filepath=os.path.abspath(os.path.join(folder, r["file"])), tags=[r["split"]],
                                 **{label_field: fo.Detections(detections=dets)}))
    ds.add_samples(samples, progress=False)
    return ds


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-10"))
    p.add_argument("--classes", nargs="*", default=None)
    p.add_argument("--per-class", type=int, default=None, help="tiles per class and split")
    p.add_argument("--n", type=int, default=None, help="mosaics per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", type=int, default=90)
    a = p.parse_args(argv)
    records = []
    for split in ("train", "val"):
        if (Path(a.source) / split).is_dir():
            records += build_mosaics(tiles_of(a.source, split, a.classes, a.per_class), a.out, split, a.seed, a.n,
                                     a.quality)
    print(write_labels(records, a.out), len(records), "mosaics", sum(len(r["objects"]) for r in records), "boxes")


if __name__ == "__main__":
    main()
