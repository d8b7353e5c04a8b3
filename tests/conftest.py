"""Test set-up: a separate FiftyOne database, real images.

The environment is set before FiftyOne is imported, so tests never touch a
user's datasets: they use the database ``noise_audit_tests`` (or whatever
``FIFTYONE_DATABASE_NAME`` says) and throw-away dataset names.

Images: ``fixtures/cifar10`` (210 CIFAR-10 JPEGs, committed) for every default
test, so a fresh clone runs them; ``../shared/data`` (or
``NOISE_AUDIT_SHARED_DATA``) only for the tests marked ``slow`` (the seed
scenario, the App in Chromium), which ``pytest`` deselects by default
(``pytest -m "slow or not slow"`` runs everything).
"""

import os
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FIFTYONE_DATABASE_NAME", "noise_audit_tests")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ.setdefault("NOISE_AUDIT_CACHE", str(ROOT / ".cache" / "noise_audit"))

import fiftyone as fo  # noqa: E402
import fiftyone.core.odm as foo  # noqa: E402

# Connect now, before any test starts a subprocess (the App server, the CLI):
# this process then owns the embedded mongod for the whole session and exports
# its port (FIFTYONE_PRIVATE_DATABASE_PORT) to every subprocess. Otherwise the
# first subprocess to connect starts mongod, and a second process racing it
# starts another that dies on the data directory's lock.
foo.get_db_conn()

SHARED = Path(os.environ.get("NOISE_AUDIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
TINY = SHARED / "tiny-imagenet-10"
# Only for tests marked slow: a fresh clone has no ../shared.
requires_shared = pytest.mark.skipif(
    not TINY.is_dir(), reason=f"real images not found at {TINY} (../shared/data beside the repo)"
)
# Committed real images (fixtures/README.md): train/ (50 per class) and val/ (20 per class).
FIXTURES = ROOT / "fixtures" / "cifar10"
SMALL_CLASSES = ("airplane", "frog", "truck")


def same_features(a, b, rtol=1e-4):
    """Whether two feature arrays are the same features up to float32 arithmetic.

    A convolution's result depends on the batch it ran in, the thread count and
    the CPU (summation order, kernels chosen by size), by about 1e-6 of the
    features' scale; an absolute tolerance would pass on one machine and fail on
    another, so both tolerances are relative, to each value and to the array's scale."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=rtol * max(np.abs(b).max(), 1e-12))


def unique_name(prefix="na-test"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_small_dataset():
    """Factory: a throw-away dataset of the committed CIFAR-10 images, tagged by split."""
    made = []

    def make(classes=SMALL_CLASSES, n_train=40, n_val=10):
        ds = fo.Dataset(unique_name())
        samples = []
        for split, n in (("train", n_train), ("val", n_val)):
            for c in classes:
                paths = sorted((FIXTURES / split / c).iterdir())
                assert n <= len(paths), f"fixtures/ has {len(paths)} {split} images of {c}, {n} asked for"
                for path in paths[:n]:
                    samples.append(fo.Sample(filepath=str(path), tags=[split], ground_truth=fo.Classification(label=c)))
        ds.add_samples(samples, progress=False)
        made.append(ds)
        return ds

    yield make
    for ds in made:
        if fo.dataset_exists(ds.name):
            ds.delete()


@pytest.fixture(scope="session")
def seed_dataset():
    """The seed scenario: dining_table vs gondola, train/ and val/ (1,100 images)."""
    if not TINY.is_dir():
        pytest.skip(f"real images not found at {TINY}")
    import noise_audit as na

    ds = na.load_image_folder(TINY, name=unique_name("na-seed"), classes=["dining_table", "gondola"])
    yield ds
    ds.delete()


@pytest.fixture(scope="session")
def plugins_dir(tmp_path_factory):
    """A throw-away FiftyOne plugins directory with this repo's plugin installed."""
    from noise_audit.app.plugin_install import install_plugin

    root = tmp_path_factory.mktemp("plugins")
    install_plugin(root)
    previous = fo.config.plugins_dir
    fo.config.plugins_dir = str(root)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(root)  # for subprocesses (App server, CLI)
    yield root
    fo.config.plugins_dir = previous
    os.environ.pop("FIFTYONE_PLUGINS_DIR", None)


BENCH = ROOT / "bench"
MOSAICS = ROOT / "fixtures" / "mosaics"


@pytest.fixture
def make_mosaic_dataset(tmp_path):
    """Factory: a throw-away dataset of mosaics of the committed CIFAR-10 images (bench/make_mosaics.py),
    every tile a box of ``ground_truth`` (fo.Detections) with its class; mosaics tagged train/val."""
    import sys

    sys.path.insert(0, str(BENCH))
    from make_mosaics import build_mosaics, load_mosaics, tiles_of, write_labels

    made = []

    def make(classes=SMALL_CLASSES, n_train=30, n_val=10, seed=0):
        out = tmp_path / f"mosaics{len(made)}"
        records = []
        for split, n in (("train", n_train), ("val", n_val)):
            records += build_mosaics(tiles_of(FIXTURES, split, classes, n), out, split, seed)
        write_labels(records, out)
        ds = load_mosaics(out, unique_name("na-obj"))
        made.append(ds)
        return ds

    yield make
    for ds in made:
        if fo.dataset_exists(ds.name):
            ds.delete()
