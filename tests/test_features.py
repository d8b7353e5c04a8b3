import os
import shutil

import numpy as np
import pytest
import torch
from torchvision import transforms as T

import noise_audit as na
from noise_audit import features
from noise_audit.features import extract_features, get_backbone

from conftest import TINY, requires_shared

pytestmark = requires_shared


@pytest.fixture
def images(tmp_path):
    src = sorted((TINY / "train" / "goldfish").iterdir())[:6]
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
    assert n3 == 1 and np.allclose(f3, f1, atol=1e-5)
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
    r1 = get_backbone("resnet18", weights=None, image_size=64, seed=0)
    r2 = get_backbone("resnet18", weights=None, image_size=64, seed=0)
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
