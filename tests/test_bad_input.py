"""Bad input (issue 13 item 5): one clear message (CLI: exit 2, one ``error:``
line), nothing written. Real images, real FiftyOne datasets, real networks.

Every case here is in the table of docs/bad-input.md.
"""

import logging
import os
import shutil

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

import noise_audit as na
from noise_audit.cli import main
from noise_audit.core.features import extract_features, get_backbone
from noise_audit.core.images import to_rgb
from conftest import same_features

FAST = dict(image_size=32, progress=False)


def schema_and_runs(ds):
    ds.reload()
    return sorted(ds.get_field_schema()), sorted(ds.list_runs())


@pytest.fixture(scope="module")
def bb32():
    return get_backbone(image_size=32)


@pytest.fixture
def images(make_small_dataset, tmp_path):
    """Copies of 6 real images (the conftest's small dataset) in a folder of their own."""
    ds = make_small_dataset(n_train=2, n_val=0)
    out = []
    for i, path in enumerate(ds.values("filepath")):
        out.append(str(shutil.copy(path, tmp_path / f"good{i}{os.path.splitext(path)[1]}")))
    return out


def truncated_copy(src, dst, cut):
    """``src`` without its last ``cut`` bytes: still passes ``Image.verify()``, fails to decode."""
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: len(data) - cut])
    with Image.open(dst) as im:
        im.verify()  # the header is intact: only a full decode finds the damage
    with pytest.raises(OSError, match="truncated"), Image.open(dst) as im:
        im.load()
    return str(dst)


# --- damaged, missing and non-image files ---


def test_truncated_jpegs_are_all_listed_in_one_message_and_the_good_features_are_cached(images, bb32, tmp_path):
    cut = [truncated_copy(images[0], tmp_path / "cut_a.jpg", 10), truncated_copy(images[1], tmp_path / "cut_b.jpg", 40)]
    cache = str(tmp_path / "cache")
    with pytest.raises(na.NoiseAuditError, match="2 image files cannot be read") as e:
        extract_features(images[:3] + cut[:1] + images[3:] + cut[1:], bb32, batch_size=4, cache_dir=cache,
                         progress=False, num_workers=2)
    assert [p for p, _ in e.value.files] == cut
    assert all("image file is truncated" in reason for _, reason in e.value.files)
    assert all(p in str(e.value) for p in cut)
    # the good images were decoded once, run through the network and cached before the error:
    # after the fix only the fixed files are computed
    truth, _ = extract_features(images, bb32, cache_dir=False, progress=False)
    again, n = extract_features(images, bb32, cache_dir=cache, progress=False)
    assert n == 0 and same_features(again, truth)


def test_missing_undecodable_and_truncated_files_in_one_message_before_any_network_work(images, bb32, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    cut = truncated_copy(images[0], tmp_path / "cut.jpg", 10)
    gone = str(tmp_path / "gone.jpg")
    calls = []
    with pytest.raises(na.NoiseAuditError) as e:
        extract_features([gone] + images + [str(junk), cut], bb32, cache_dir=str(tmp_path / "c"), progress=False,
                         on_progress=calls.append)
    reasons = dict(e.value.files)
    assert list(reasons) == [gone, str(junk), cut]
    assert reasons[gone] == "missing" and "UnidentifiedImageError" in reasons[str(junk)]
    assert "truncated" in reasons[cut]  # found by decoding the rest, so the one message has them all
    assert str(e.value).startswith("3 image files cannot be read (1 missing, 2 not decodable)")
    assert calls == [] and not (tmp_path / "c").exists()  # no network pass, nothing cached


def test_audit_with_a_truncated_jpeg_writes_nothing(make_small_dataset, tmp_path):
    ds = make_small_dataset(n_train=8, n_val=2)
    first = ds.first()
    cut = truncated_copy(first.filepath, tmp_path / "cut.jpg", 10)
    ds.add_sample(fo.Sample(filepath=cut, tags=["train"], ground_truth=first.ground_truth.copy()))
    before = schema_and_runs(ds)
    with pytest.raises(na.NoiseAuditError, match="cut.jpg"):
        na.audit(ds, "ground_truth", cache_dir=str(tmp_path / "cache"), **FAST)
    assert schema_and_runs(ds) == before


# --- 16-bit images ---


def test_16_bit_png_is_scaled_to_8_bit_not_white(images, bb32, tmp_path):
    with Image.open(images[0]) as im:
        grey = np.asarray(im.convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # the same picture, 16 bit
    with Image.open(tmp_path / "grey16.png") as im:
        assert im.mode == "I;16"  # what Pillow makes of a 16-bit greyscale PNG
        rgb = np.asarray(to_rgb(im))
    assert rgb.shape == grey.shape + (3,) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], grey) and grey.mean() < 200  # the picture, not white
    feats, _ = extract_features([str(tmp_path / "grey16.png"), str(tmp_path / "grey8.png")], bb32,
                                cache_dir=False, progress=False)
    assert same_features(feats[0], feats[1])
    Image.fromarray(np.full_like(grey, 255)).save(tmp_path / "white.png")
    white, _ = extract_features([str(tmp_path / "white.png")], bb32, cache_dir=False, progress=False)
    assert np.abs(feats[0] - white[0]).max() > 0.1
    # 32-bit integer (mode I) images are read on the same 16-bit scale; float (F) ones as 0..1
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(grey.astype(np.int32) * 257)))[..., 0], grey)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray((grey / 255.0).astype(np.float32))))[..., 0], grey)


# --- numbers ---


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=0), "image_size must be a positive integer"),
    (dict(image_size=-3), "image_size must be a positive integer"),
    (dict(image_size="64"), r"image_size must be a positive integer \(pixels\), not '64' \(a str\)"),
    (dict(regularization="abc"), "regularization must be a positive number or 'auto'"),
    (dict(regularization=float("nan")), "regularization must be a positive number"),
    (dict(influence_weight=1.5), r"influence_weight must be 'auto' or a number in \[0, 1\]"),
    (dict(influence_weight="half"), r"influence_weight must be 'auto' or a number in \[0, 1\] .*not 'half' \(a str\)"),
    (dict(folds=1), "folds must be an integer of at least 2"),
    (dict(seed=-1), "seed must be a non-negative integer"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
])
def test_bad_numbers_to_audit(make_small_dataset, kwargs, message):
    ds = make_small_dataset(n_train=5, n_val=2)
    before = schema_and_runs(ds)
    with pytest.raises(na.NoiseAuditError, match=message):
        na.audit(ds, "ground_truth", **{**FAST, **kwargs})
    assert schema_and_runs(ds) == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(fraction="0.1"), r"fraction must be a number in \[0, 1\), not '0.1' \(a str\); pass the number 0.1"),
    (dict(fraction=1.0), r"fraction must be a number in \[0, 1\), not 1.0"),
    (dict(fraction=-0.1), r"fraction must be a number in \[0, 1\)"),
    (dict(seed=-1), "seed must be a non-negative integer"),
])
def test_bad_numbers_to_inject_label_noise(make_small_dataset, kwargs, message):
    ds = make_small_dataset(n_train=5, n_val=2)
    before = schema_and_runs(ds)
    with pytest.raises(na.NoiseAuditError, match=message):
        na.inject_label_noise(ds, **kwargs)
    assert schema_and_runs(ds) == before


def run_main(capsys, *argv):
    """The CLI in this process: ``(exit code, stderr)``; argparse's own errors exit through SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["audit", "--regularization", "abc"], "error: --regularization must be a positive number or 'auto' "
                                           "(influence needs an invertible Hessian), not 'abc'"),
    (["audit", "--influence-weight", "2"], "error: --influence-weight must be 'auto' or a number in [0, 1] (the "
                                           "ranking's share of average influence; 0.5 was the fixed weight before), "
                                           "not '2'"),
    (["audit", "--image-size", "0"], "error: --image-size must be a positive integer (pixels), not 0"),
    (["audit", "--image-size", "-5"], "error: --image-size must be a positive integer (pixels), not -5"),
    (["audit", "--folds", "1"], "error: --folds must be an integer of at least 2, not 1"),
    (["audit", "--seed", "-1"], "error: --seed must be a non-negative integer, not -1"),
    (["audit", "--report", "r", "--top-n", "-1"], "error: --top-n must be a non-negative integer, not -1"),
    (["audit", "--report", "r", "--explain", "-2"], "error: --explain must be a non-negative integer, not -2"),
    (["audit", "--image-size", "abc"], "error: noise-audit audit: argument --image-size: invalid int value: 'abc'"),
    (["inject", "--fraction", "1.5"], "error: --fraction must be a number in [0, 1), not 1.5"),
    (["inject", "--fraction", "abc"], "error: noise-audit inject: argument --fraction: invalid float value: 'abc'"),
    (["inject", "--seed", "-2"], "error: --seed must be a non-negative integer, not -2"),
])
def test_bad_numeric_options_exit_2_with_one_line_before_anything_runs(make_small_dataset, capsys, tmp_path, argv,
                                                                       message):
    ds = make_small_dataset(n_train=5, n_val=2)
    before = schema_and_runs(ds)
    argv = [a if a != "r" else str(tmp_path / "r") for a in argv]
    code, err = run_main(capsys, argv[0], "--dataset", ds.name, *argv[1:])
    assert code == 2
    assert err.splitlines() == [err.strip()] and err.strip().startswith(message), err
    assert schema_and_runs(ds) == before and not (tmp_path / "r").exists()


# --- splits and truth fields ---


def test_a_class_only_in_the_held_out_set_is_refused(make_small_dataset):
    ds = make_small_dataset(n_train=6, n_val=3)
    lonely = sorted(ds.distinct("ground_truth.label"))[-1]
    ds.delete_samples(ds.match_tags("train").match(fo.ViewField("ground_truth.label") == lonely))
    before = schema_and_runs(ds)
    with pytest.raises(na.NoiseAuditError, match=f"only in the held-out set.*'{lonely}': 3"):
        na.audit(ds, "ground_truth", folds=2, **FAST)
    assert schema_and_runs(ds) == before


def test_evaluate_needs_a_boolean_truth_field(make_small_dataset):
    ds = make_small_dataset(n_train=5, n_val=0)
    n = len(ds)
    ds.set_values("score", np.linspace(0, 1, n).tolist())
    ds.set_values("flipped_as_number", [float(i % 2) for i in range(n)])
    ds.set_values("flipped", [bool(i % 2) for i in range(n)])
    with pytest.raises(na.NoiseAuditError, match="'flipped_as_number' is of type FloatField, not a BooleanField"):
        na.evaluate(ds, "score", "flipped_as_number")
    with pytest.raises(na.NoiseAuditError, match=r"'nope' not found; boolean fields here: \['flipped'\]"):
        na.evaluate(ds, "score", "nope")
    assert 0 <= na.evaluate(ds, "score", "flipped")["auroc"] <= 1


# --- the feature cache ---


@pytest.fixture
def feature_warnings():
    """Records of noise_audit.core.features' logger (whatever the CLI did to propagation in this process)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("noise_audit.core.features")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_a_file_where_the_cache_folder_should_be_warns_once_and_keeps_the_features(images, bb32, tmp_path,
                                                                                  feature_warnings):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    truth, _ = extract_features(images, bb32, cache_dir=False, progress=False)
    feats, n = extract_features(images, bb32, cache_dir=str(blocker), progress=False)
    assert n == len(images) and same_features(feats, truth)
    assert len(feature_warnings) == 1
    message = feature_warnings[0].getMessage()
    assert "cannot be used" in message and "NotADirectoryError" in message and "\n" not in message
    assert blocker.read_text() == "a file"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc (not writable, even by root)")
def test_a_cache_folder_that_cannot_be_written_warns_once_and_keeps_the_features(images, bb32, feature_warnings):
    truth, _ = extract_features(images, bb32, cache_dir=False, progress=False)
    feats, n = extract_features(images, bb32, cache_dir="/proc/self", progress=False)  # reads (empty), cannot write
    assert n == len(images) and same_features(feats, truth)
    assert len(feature_warnings) == 1 and "cannot be used" in feature_warnings[0].getMessage()
