"""backbone= a FiftyOne model that computes embeddings (issue 22, item 2): run
through our loader, cached under the model's identity. Real FiftyOne models,
real networks, real images."""

import os
import subprocess
import sys

import fiftyone.core.models as fom
import numpy as np
import pytest
from torchvision import transforms as T

import noise_audit as na
from noise_audit.core.features import extract_features, get_backbone
from noise_audit.core.fiftyone_models import FiftyOneBackbone, model_identity

import fiftyone_lite0
from conftest import FIXTURES, ROOT, same_features

PATHS = [str(p) for c in ("truck", "frog") for p in sorted((FIXTURES / "train" / c).iterdir())[:6]]


@pytest.fixture(scope="module")
def builtin64():
    return get_backbone(image_size=64)


@pytest.fixture(scope="module")
def fo_lite0(builtin64):
    """The offline Lite0 in a TorchImageModel, with the built-in backbone's own transform."""
    return fiftyone_lite0.model(builtin64.transform)


def test_a_torch_image_model_gives_the_builtin_features(builtin64, fo_lite0):
    bb = get_backbone(fo_lite0)
    assert isinstance(bb, FiftyOneBackbone) and bb.decode == "pil" and bb.cache_id.startswith("fiftyone-")
    ours, _ = extract_features(PATHS, builtin64, batch_size=4, cache_dir=False, progress=False)
    theirs, n = extract_features(PATHS, bb, batch_size=4, cache_dir=False, progress=False)
    assert n == len(PATHS) and theirs.shape == (len(PATHS), 1280) and same_features(theirs, ours)
    assert fo_lite0.preprocess  # restored after each batch


def test_an_audit_with_a_fiftyone_model_scores_as_the_builtin_one(make_small_dataset, fo_lite0, tmp_path):
    ds = make_small_dataset(n_train=20, n_val=6)
    a = na.audit(ds, key="builtin", image_size=64, progress=False, cache_dir=str(tmp_path))
    b = na.audit(ds, key="fo", backbone=fo_lite0, progress=False, cache_dir=str(tmp_path))
    assert b.config["backbone"] == "TorchImageModel" and b.config["backbone_id"] != a.config["backbone_id"]
    for field in ("corruption_score", "influence", "self_influence", "label_quality"):
        x, y = np.array(ds.values(f"builtin_{field}")), np.array(ds.values(f"fo_{field}"))
        assert same_features(y, x, rtol=1e-3), field  # relative to each value and to the field's scale
    assert np.array_equal(ds.values("builtin_suspect"), ds.values("fo_suspect"))


def test_the_cache_key_is_the_models_identity(builtin64, tmp_path):
    same = [fiftyone_lite0.model(builtin64.transform) for _ in range(2)]
    assert get_backbone(same[0]).cache_id == get_backbone(same[1]).cache_id  # stable across constructions
    other_weights = fiftyone_lite0.model(builtin64.transform, entrypoint=fiftyone_lite0.random_lite0)
    other_transform = fiftyone_lite0.model(T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor()]))
    callable_entry = fiftyone_lite0.model(builtin64.transform, entrypoint=fiftyone_lite0.lite0)
    ids = {get_backbone(m).cache_id for m in (same[0], other_weights, other_transform)}
    assert len(ids) == 3  # weights, transforms: each its own rows
    # A callable is described by its qualified name, no address: the same as naming it by a string.
    assert "fiftyone_lite0.lite0" in model_identity(callable_entry) and " at 0x" not in model_identity(callable_entry)
    assert get_backbone(callable_entry).cache_id == get_backbone(same[0]).cache_id
    # A transform whose repr is its address: described by its attributes, the same in every construction.
    brighter = [fiftyone_lite0.model(T.Compose([builtin64.transform, fiftyone_lite0.Brighten(a)])) for a in (0.1, 0.1, 0.2)]
    a, b, c = (get_backbone(m).cache_id for m in brighter)
    assert a == b and a != c and a not in ids
    # Another model of the same class and config but other weights: the weights' digest tells them apart.
    assert model_identity(other_weights).split("|weights:")[1] != model_identity(same[0]).split("|weights:")[1]


def test_the_same_model_in_a_new_process_hits_the_cache(builtin64, tmp_path):
    cache = str(tmp_path / "cache")
    code = ("import sys\n"
            "import fiftyone_lite0\n"
            "from noise_audit.core.features import extract_features, get_backbone\n"
            "bb = get_backbone(fiftyone_lite0.model(get_backbone(image_size=64).transform))\n"
            "f, n = extract_features(sys.argv[2:], bb, cache_dir=sys.argv[1], progress=False)\n"
            "print(bb.cache_id, n)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    proc = subprocess.run([sys.executable, "-c", code, cache, *PATHS], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    child_id, child_n = proc.stdout.split()
    bb = get_backbone(fiftyone_lite0.model(builtin64.transform))
    f, n = extract_features(PATHS, bb, cache_dir=cache, progress=False)
    assert (child_id, int(child_n)) == (bb.cache_id, len(PATHS)) and n == 0


class MeanColour(fom.Model, fom.EmbeddingsMixin):
    """A FiftyOne model of its own (no Torch): mean and spread of each channel."""

    def __init__(self):
        self.seen, self._preprocess = [], True

    @property
    def media_type(self):
        return "image"

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self):
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess = value

    @property
    def ragged_batches(self):
        return True

    @property
    def has_embeddings(self):
        return True

    def predict(self, arg):
        raise NotImplementedError

    def embed_all(self, args):
        self.seen += [(type(a).__name__, a.dtype, a.shape, self.preprocess) for a in args]
        return np.stack([np.r_[a.mean((0, 1)), a.std((0, 1))] for a in args])


def test_any_fiftyone_model_gets_rgb_arrays_with_preprocessing_on(tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.open(PATHS[0]).convert("RGB").resize((48, 40)).save(big)  # a batch of two sizes: a list, not a stack
    model = MeanColour()
    model.preprocess = False
    paths = PATHS[:3] + [str(big)]
    f, _ = extract_features(paths, get_backbone(model), batch_size=4, cache_dir=False, progress=False)
    assert [s[:3] for s in model.seen] == [("ndarray", np.uint8, (32, 32, 3))] * 3 + [("ndarray", np.uint8, (40, 48, 3))]
    assert all(s[3] for s in model.seen) and model.preprocess is False  # on while embedding, then restored
    rgb = np.asarray(Image.open(PATHS[1]).convert("RGB"), dtype=np.float64)
    assert f.shape == (4, 6) and np.allclose(f[1], np.r_[rgb.mean((0, 1)), rgb.std((0, 1))], rtol=1e-6)


def test_a_fiftyone_model_without_embeddings_is_one_clear_error(make_small_dataset, builtin64):
    no_embeddings = fiftyone_lite0.model(builtin64.transform, as_feature_extractor=False)
    assert not no_embeddings.has_embeddings
    with pytest.raises(na.NoiseAuditError, match=r"does not compute embeddings \(has_embeddings is false\)"):
        get_backbone(no_embeddings)
    ds = make_small_dataset(n_train=10, n_val=5)
    before = sorted(ds.get_field_schema())
    with pytest.raises(na.NoiseAuditError, match="TorchImageModel"):
        na.audit(ds, backbone=no_embeddings, progress=False)
    ds.reload()
    assert sorted(ds.get_field_schema()) == before and not ds.list_runs()
    with pytest.raises(na.NoiseAuditError, match="precision='bf16' applies to torch backbones"):
        get_backbone(fiftyone_lite0.model(builtin64.transform), precision="bf16")
