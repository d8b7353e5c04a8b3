import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import noise_audit as na
from noise_audit.core import features
from noise_audit.core.backbones import Backbone
from noise_audit.core.feature_cache import FeatureCache
from noise_audit.core.features import extract_features, get_backbone

from conftest import FIXTURES, same_features


@pytest.fixture
def images(tmp_path):
    src = sorted((FIXTURES / "train" / "airplane").iterdir())[:6]
    out = []
    for p in src:
        dst = tmp_path / p.name
        shutil.copy(p, dst)
        out.append(str(dst))
    return out


def test_features_are_cached_and_invalidated_by_mtime(images, tmp_path):
    bb = get_backbone("efficientnet_lite0", image_size=64)
    cache = str(tmp_path / "cache")
    f1, n1 = extract_features(images, bb, batch_size=4, cache_dir=cache, progress=False)
    assert f1.shape == (6, 1280) and n1 == 6 and np.isfinite(f1).all()
    f2, n2 = extract_features(images, bb, cache_dir=cache, progress=False)
    assert n2 == 0 and np.array_equal(f1, f2)
    os.utime(images[0], ns=(1, 1))  # an edited file must be recomputed
    f3, n3 = extract_features(images, bb, cache_dir=cache, progress=False)
    assert n3 == 1 and same_features(f3, f1)
    other = get_backbone("efficientnet_lite0", image_size=96)
    assert other.cache_id != bb.cache_id


def test_unreadable_images_are_listed_by_path(images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    bb = get_backbone("efficientnet_lite0", image_size=64)
    with pytest.raises(na.NoiseAuditError, match="broken.jpg"):
        extract_features(images + [str(bad)], bb, cache_dir=False, progress=False)
    with pytest.raises(na.NoiseAuditError, match="missing"):
        extract_features(images + [str(tmp_path / "gone.jpg")], bb, cache_dir=False, progress=False)


def test_custom_module_and_resnet18_random_init(images):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    tf = T.Compose([T.Resize(32), T.ToTensor()])
    bb = get_backbone(net, transform=tf)
    f, _ = extract_features(images, bb, cache_dir=False, progress=False)
    assert f.shape == (6, 8)
    with pytest.raises(na.NoiseAuditError, match="transform"):
        get_backbone(net)
    r1 = get_backbone("resnet18", weights="random", image_size=64, seed=0)
    r2 = get_backbone("resnet18", weights="random", image_size=64, seed=0)
    a, _ = extract_features(images[:2], r1, cache_dir=False, progress=False)
    b, _ = extract_features(images[:2], r2, cache_dir=False, progress=False)
    assert a.shape == (2, 512) and np.allclose(a, b)


def test_standardization_drops_features_constant_on_the_training_set():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 8)).astype(np.float32)
    train[:, 3] = 0.0  # constant on the training set (a dead channel)
    train[:, 5] = rng.normal(scale=1e-7, size=200)  # almost constant
    held_out = rng.normal(size=(20, 8))
    held_out[:, [3, 5]] = 3.0  # alive on held-out images
    mean, scale = features.standardization(train)
    z_train, z_held = (train - mean) / scale, (held_out - mean) / scale
    kept = [0, 1, 2, 4, 6, 7]
    assert np.allclose(z_train[:, kept].std(0), 1.0) and np.allclose(z_train[:, kept].mean(0), 0.0, atol=1e-6)
    # dropped features standardise to 0 everywhere instead of blowing held-out samples up
    assert np.all(z_train[:, [3, 5]] == 0) and np.all(z_held[:, [3, 5]] == 0)
    assert np.abs(z_held).max() < 10


def test_standardization_of_all_constant_features_is_zero_and_finite():
    mean, scale = features.standardization(np.ones((10, 3)))
    assert np.all(np.isinf(scale))
    z = (np.full((2, 3), 7.0) - mean) / scale
    assert np.all(z == 0)


# --- Streaming extraction (DataLoader workers, device) and the segment cache ---

MIXED = [p for c in ("airplane", "truck") for p in sorted((FIXTURES / "train" / c).iterdir())[:20]]


@pytest.fixture(scope="module")
def bb64():
    return get_backbone(image_size=64)


@pytest.fixture(scope="module")
def reference(bb64):
    """Features of 40 real images decoded in the main process, no cache: the truth."""
    paths = [str(p) for p in MIXED]
    feats, n = extract_features(paths, bb64, batch_size=8, cache_dir=False, progress=False, num_workers=0)
    assert n == 40 and len(np.unique(feats, axis=0)) == 40  # distinct rows: order is visible
    for i in (0, 17, 39):  # each row is its own image's, computed alone
        with Image.open(paths[i]) as im:
            alone = bb64(bb64.transform(im.convert("RGB"))[None]).numpy()[0]
        assert same_features(feats[i], alone)
    return paths, feats


def test_workers_give_the_main_process_features_in_order(bb64, reference):
    paths, ref = reference
    fractions = []
    feats, n = extract_features(paths, bb64, batch_size=8, cache_dir=False, progress=False,
                                num_workers=2, on_progress=fractions.append)
    assert n == 40 and feats.dtype == np.float32 and np.array_equal(feats, ref)
    assert fractions == [k / 5 for k in range(1, 6)]


def test_workers_from_a_thread(bb64, reference):
    """FiftyOne runs plugin operators in threads: workers must start from one."""
    paths, ref = reference
    result = {}

    def run():
        try:
            result["features"] = extract_features(paths, bb64, batch_size=8, cache_dir=False,
                                                  progress=False, num_workers=2)[0]
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(120)
    assert not t.is_alive() and "error" not in result, result.get("error")
    assert np.array_equal(result["features"], ref)


def test_decoding_falls_back_to_this_process_when_workers_cannot_start(bb64, reference, monkeypatch):
    """As in a Dask worker: a daemonic process may not start processes."""
    paths, ref = reference
    monkeypatch.setitem(mp.current_process()._config, "daemon", True)
    with pytest.raises(AssertionError, match="daemonic"):  # the situation is real
        mp.get_context().Process(target=print).start()
    feats, _ = extract_features(paths, bb64, batch_size=8, cache_dir=False, progress=False, num_workers=2)
    assert np.array_equal(feats, ref)


def test_device_argument_moves_the_network(bb64, reference):
    paths, ref = reference
    feats, _ = extract_features(paths, bb64, batch_size=8, cache_dir=False, progress=False,
                                num_workers=0, device="cpu")
    assert feats.dtype == np.float32 and np.array_equal(feats, ref)
    assert next(bb64.module.parameters()).device.type == "cpu"
    assert features._resolve_device(torch.nn.ReLU(), None).type == "cpu"  # no weights: CPU


@pytest.mark.skipif(mp.get_start_method() != "fork", reason="a closure as transform needs forked workers")
def test_workers_write_nothing_to_stderr(bb64, capfd):
    paths = [str(p) for p in MIXED[:16]]

    def noisy(image):  # like libjpeg warning about a damaged file, straight to file descriptor 2
        os.write(2, b"DECODER-WARNING\n")
        return bb64.transform(image)

    quiet = Backbone(name="noisy", module=bb64.module, transform=noisy, cache_id="noisy")
    extract_features(paths, quiet, batch_size=8, cache_dir=False, progress=False, num_workers=2)
    assert "DECODER-WARNING" not in capfd.readouterr().err
    extract_features(paths, quiet, batch_size=8, cache_dir=False, progress=False, num_workers=0)
    assert "DECODER-WARNING" in capfd.readouterr().err  # the capture does see the main process


def _segment_files(cache_root, bb):
    d = os.path.join(cache_root, "features", bb.cache_id)
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_cache_round_trip_in_segments(bb64, reference, tmp_path):
    paths, ref = reference
    cache = str(tmp_path / "cache")
    f1, n1 = extract_features(paths, bb64, batch_size=8, cache_dir=cache, progress=False, num_workers=0)
    assert n1 == 40 and np.array_equal(f1, ref)
    files = _segment_files(cache, bb64)
    assert len(files) == 2 and files[0].endswith(".keys.npy") and files[1] == files[0].replace(".keys", "")
    twice = paths[::-1] + paths[:3]  # another order, and a file asked for twice
    f2, n2 = extract_features(twice, bb64, cache_dir=cache, progress=False)
    assert n2 == 0 and np.array_equal(f2, np.concatenate([ref[::-1], ref[:3]]))
    assert _segment_files(cache, bb64) == files  # nothing new written


@pytest.mark.parametrize("savez", [np.savez, np.savez_compressed])
def test_old_npz_segments_are_still_read(bb64, reference, tmp_path, savez):
    paths, ref = reference
    cache = tmp_path / "cache"
    seg_dir = cache / "features" / bb64.cache_id
    seg_dir.mkdir(parents=True)
    keys = [FeatureCache.file_key(p) for p in paths[:25]]
    savez(seg_dir / "0123abcd.npz", keys=np.asarray(keys), features=ref[:25])  # the old layout
    f1, n1 = extract_features(paths, bb64, batch_size=8, cache_dir=str(cache), progress=False, num_workers=0)
    assert n1 == 15 and np.array_equal(f1, ref)
    f2, n2 = extract_features(paths, bb64, cache_dir=str(cache), progress=False)
    assert n2 == 0 and np.array_equal(f2, ref)
    assert "0123abcd.npz" in _segment_files(cache, bb64)  # never rewritten


def test_leftovers_of_a_crash_are_ignored(bb64, reference, tmp_path):
    paths, ref = reference
    cache = tmp_path / "cache"
    seg_dir = cache / "features" / bb64.cache_id
    seg_dir.mkdir(parents=True)
    (seg_dir / ".dead.tmp.npy").write_bytes(b"\x93NUMPY half a header")  # crash mid-write
    (seg_dir / ".dead.keys.tmp.npy").write_bytes(b"")
    (seg_dir / ".old.tmp.npz").write_bytes(b"PK")  # an old version's crash
    np.save(seg_dir / "feedbeef.npy", np.ones((40, 1280), np.float32))  # crash between the two renames
    f1, n1 = extract_features(paths, bb64, batch_size=8, cache_dir=str(cache), progress=False, num_workers=0)
    assert n1 == 40 and np.array_equal(f1, ref)
    f2, n2 = extract_features(paths, bb64, cache_dir=str(cache), progress=False)
    assert n2 == 0 and np.array_equal(f2, ref)


_CHILD = """
import sys, numpy as np
from noise_audit.core.features import extract_features, get_backbone
out, cache, workers, *paths = sys.argv[1:]
f, n = extract_features(paths, get_backbone(image_size=64), batch_size=8, cache_dir=cache,
                        progress=False, num_workers=int(workers))
np.save(out, f)
"""


def test_two_processes_caching_at_once(bb64, reference, tmp_path):
    paths, ref = reference
    cache = str(tmp_path / "cache")
    parts = {"a": (slice(0, 30), 2), "b": (slice(10, 40), 0)}  # overlapping files
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path / f"{name}.npy"), cache, str(workers), *paths[part]],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, (part, workers) in parts.items()
    }
    computed = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        computed[name] = np.load(tmp_path / f"{name}.npy")
        # a CNN's float32 output is not bit-identical across processes and batch
        # compositions (its kernels differ): the same up to rounding
        np.testing.assert_allclose(computed[name], ref[parts[name][0]], rtol=1e-4, atol=1e-4)
    feats, n = extract_features(paths, bb64, cache_dir=cache, progress=False)
    assert n == 0
    # every cached row is exactly what one of the two processes computed for that file
    from_a = np.zeros((len(paths), ref.shape[1]), np.float32)
    from_b = from_a.copy()
    from_a[parts["a"][0]], from_b[parts["b"][0]] = computed["a"], computed["b"]
    rows_a = np.arange(len(paths))[parts["a"][0]]
    rows_b = np.arange(len(paths))[parts["b"][0]]
    for i in range(len(paths)):
        options = ([from_a[i]] if i in rows_a else []) + ([from_b[i]] if i in rows_b else [])
        assert any(np.array_equal(feats[i], o) for o in options), i


def test_many_segments_are_compacted_and_readers_racing_it_find_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "CHUNK_BYTES", 4 * 6 * 7)  # 7 rows a chunk: many chunks
    rng = np.random.default_rng(0)
    cache = FeatureCache(str(tmp_path), "synthetic")
    keys = np.array([f"{i:040x}" for i in range(400)])
    truth = rng.normal(size=(400, 6)).astype(np.float32)
    cache.save(keys[:200], truth[:200])  # the big one: compaction leaves it alone
    big = set(os.listdir(cache.dir))
    for s in range(16):
        rows = np.arange(200 + 13 * s, 215 + 13 * s) % 400  # overlapping: repeated keys
        cache.save(keys[rows], truth, rows=rows)
    names = cache._segment_names()
    assert len(names) == 2 and big <= set(os.listdir(cache.dir))
    assert not [n for n in os.listdir(cache.dir) if n.startswith(".")]
    found, got = cache.load(keys)
    assert found.all() and np.array_equal(got, truth)

    # A reader that listed the segments just before a compaction removed them
    cache.save(keys[:5], truth[:5])
    stale = cache._segment_names()
    cache.compact()
    listings, real = [stale], cache._segment_names
    monkeypatch.setattr(cache, "_segment_names", lambda: listings.pop() if listings else real())
    found, got = cache.load(keys[::-1])
    assert found.all() and np.array_equal(got, truth[::-1])


def test_every_bad_image_is_listed_before_any_work(bb64, tmp_path):
    good = [str(p) for p in MIXED[:4]]
    bad = []
    for name in ("first.jpg", "second.jpg"):
        (tmp_path / name).write_bytes(b"not a jpeg")
        bad.append(str(tmp_path / name))
    calls = []
    with pytest.raises(na.NoiseAuditError, match="2 image files") as e:
        extract_features(bad[:1] + good + bad[1:], bb64, cache_dir=str(tmp_path / "c"), progress=False,
                         on_progress=calls.append)
    assert "first.jpg" in str(e.value) and "second.jpg" in str(e.value)
    assert calls == [] and not (tmp_path / "c" / "features").exists()
    with pytest.raises(na.NoiseAuditError, match="2 image files.*missing") as e:
        extract_features(good + [str(tmp_path / "gone1.jpg"), str(tmp_path / "gone2.jpg")], bb64, cache_dir=False)
    assert "gone1.jpg" in str(e.value) and "gone2.jpg" in str(e.value)


def test_standardization_in_chunks_of_picked_rows_equals_numpy(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=(1000, 40)).astype(np.float32)
    train = rng.random(1000) < 0.7
    monkeypatch.setattr(features, "CHUNK_BYTES", 8 * 40 * 64)  # 64 rows a chunk: 11 chunks
    mean, scale = features.standardization(x, rows=train)
    exact = x[train].astype(np.float64)
    assert np.allclose(mean, exact.mean(0), rtol=1e-13) and np.allclose(scale, exact.std(0), rtol=1e-13)
    m2, s2 = features.standardization(x[train])
    assert np.allclose(m2, mean, rtol=1e-13) and np.allclose(s2, scale, rtol=1e-13)


def test_resnet18_never_falls_back_to_a_random_network_silently(tmp_path):
    """Without its ImageNet weights (no cache, no connection) ResNet18 is a clear error naming weights=PATH."""
    code = ("import noise_audit.core.backbones as f\n"
            "try:\n    f.get_backbone('resnet18')\nexcept f.NoiseAuditError as e:\n    print('ERROR', e)\n"
            "else:\n    print('LOADED')\n")
    # an empty torch cache and a proxy nobody listens on: the download fails here and anywhere
    env = {**os.environ, "TORCH_HOME": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = out.stdout.strip().splitlines()[-1]  # torch.hub announces its download attempt first
    assert result.startswith("ERROR") and "weights=PATH" in result and "weights='random'" in result
