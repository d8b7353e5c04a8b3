"""How the backbone runs (issue 23): channels-last order, bf16 where supported,
tensor decoding; and the cache keeping precisions apart. Real networks, real images."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import noise_audit as na
from noise_audit.core import backbones, images
from noise_audit.core.backbones import Backbone, bf16_supported, get_backbone, resolve_precision
from noise_audit.core.features import extract_features

from conftest import FIXTURES, ROOT, same_features

PATHS = [str(p) for c in ("airplane", "frog") for p in sorted((FIXTURES / "train" / c).iterdir())[:8]]
needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bfloat16 (AVX-512 BF16/AMX)")


def nchw(bb):
    """The same network and transform run the way it was before: NCHW order."""
    return Backbone(name=bb.name, module=bb.module, transform=bb.transform, cache_id="nchw",
                    precision=bb.precision, decode=bb.decode, channels_last=False)


@pytest.fixture(scope="module")
def bb64():
    return get_backbone(image_size=64)


def test_channels_last_gives_the_nchw_features(bb64):
    cl, _ = extract_features(PATHS, bb64, batch_size=8, cache_dir=False, progress=False, num_workers=0)
    old = nchw(get_backbone(image_size=64))
    ref, _ = extract_features(PATHS, old, batch_size=8, cache_dir=False, progress=False, num_workers=0)
    assert next(p for p in bb64.module.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    assert next(p for p in old.module.parameters() if p.ndim == 4).is_contiguous()
    assert same_features(cl, ref) and not np.array_equal(cl, ref)  # same up to rounding: another kernel ran


def test_a_module_that_refuses_channels_last_runs_as_before():
    class Flat(torch.nn.Module):  # views its input as rows: impossible for a channels-last tensor
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(3 * 16 * 16, 8)

        def forward(self, x):
            return self.fc(x.view(x.shape[0], -1))

    tf = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor()])
    with pytest.raises(RuntimeError, match="view"):
        Flat()(torch.zeros(2, 3, 16, 16).contiguous(memory_format=torch.channels_last))
    bb = get_backbone(Flat(), transform=tf)
    f, _ = extract_features(PATHS, bb, batch_size=8, cache_dir=False, progress=False, num_workers=0)
    assert not bb.channels_last  # fell back, once
    ref, _ = extract_features(PATHS, nchw(get_backbone(Flat(), transform=tf)), batch_size=8, cache_dir=False,
                              progress=False, num_workers=0)
    assert f.shape == (16, 8) and np.array_equal(f, ref)


def test_tensor_decoding_gives_pils_pixels(tmp_path):
    jpeg = PATHS[0]
    with Image.open(jpeg) as im:
        rgb = im.convert("RGB")
        rgb.convert("L").save(tmp_path / "grey.jpg")
        rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
        rgb.save(tmp_path / "image.png")
    for path in (jpeg, tmp_path / "grey.jpg", tmp_path / "cmyk.jpg", tmp_path / "image.png"):
        pil = np.asarray(images.decode(str(path), "pil"))
        tensor = images.decode(str(path), "tensor")
        assert tensor.dtype == torch.uint8 and tensor.shape == (3, *pil.shape[:2])
        assert np.array_equal(tensor.permute(1, 2, 0).numpy(), pil)
        assert np.array_equal(images.decode(str(path), "numpy"), pil)


def test_the_builtin_transform_takes_pil_images_and_tensors_alike(bb64):
    pil = images.decode(PATHS[3], "pil")
    a, b = bb64.transform(pil), bb64.transform(images.decode(PATHS[3], "tensor"))
    assert a.shape == (3, 64, 64) and torch.equal(a, b)
    # PIL's bilinear resize of the same pixels: equal up to rounding of a level or two
    old = T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])(pil)
    assert (old - a).abs().max() <= 2 / 127.5 + 1e-6


def test_the_transform_is_part_of_the_cache_key():
    a = get_backbone(image_size=64)
    b = get_backbone(image_size=64, transform=T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor(),
                                                         T.Normalize([0.5] * 3, [0.5] * 3)]))
    assert a.decode == "tensor" and b.decode == "pil" and a.cache_id != b.cache_id


@needs_bf16
def test_bf16_features_are_close_but_cached_apart(bb64, tmp_path):
    cache = str(tmp_path / "cache")
    bf = get_backbone(image_size=64, precision="bf16")
    assert bf.precision == "bf16" and bf.cache_id != bb64.cache_id and "bf16" in bf.cache_id
    f32, n = extract_features(PATHS, bb64, batch_size=8, cache_dir=cache, progress=False)
    assert n == 16
    f16, n = extract_features(PATHS, bf, batch_size=8, cache_dir=cache, progress=False)
    assert n == 16  # fp32 rows are not served to a bf16 run
    assert f16.dtype == np.float32 and not same_features(f16, f32, rtol=1e-3)  # bf16 really ran
    assert np.corrcoef(f16.ravel(), f32.ravel())[0, 1] > 0.99  # and gave nearly the same features
    again, n = extract_features(PATHS, bb64, cache_dir=cache, progress=False)
    assert n == 0 and np.array_equal(again, f32)  # nor bf16 rows to an fp32 run
    again16, n = extract_features(PATHS, bf, cache_dir=cache, progress=False)
    assert n == 0 and np.array_equal(again16, f16)


def test_precision_names_and_auto():
    assert resolve_precision("fp32") == "fp32"
    auto = resolve_precision("auto", "cpu")
    assert auto == ("bf16" if backbones.AUTO_PICKS_BF16 and bf16_supported("cpu") else "fp32")
    for bad in ("fp16", "BF16", None, 16):
        with pytest.raises(na.NoiseAuditError, match=r"precision must be one of \('fp32', 'bf16', 'auto'\)"):
            get_backbone(image_size=32, precision=bad)


def test_bf16_on_a_machine_without_it_is_one_clear_error(monkeypatch, make_small_dataset):
    # This CPU's capability cannot be switched off; the probes torch offers for it can.
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False)
    assert not bf16_supported("cpu")
    with pytest.raises(na.NoiseAuditError, match="precision='bf16' needs native bfloat16 on cpu"):
        get_backbone(image_size=32, precision="bf16", device="cpu")
    assert get_backbone(image_size=32, precision="auto", device="cpu").precision == "fp32"
    ds = make_small_dataset(n_train=10, n_val=5)
    before = sorted(ds.get_field_schema())
    with pytest.raises(na.NoiseAuditError, match="needs native bfloat16"):
        na.audit(ds, image_size=32, precision="bf16", device="cpu", progress=False)
    ds.reload()
    assert sorted(ds.get_field_schema()) == before and not ds.list_runs()


@needs_bf16
def test_audit_records_its_precision_and_explains_with_it(make_small_dataset):
    ds = make_small_dataset(classes=("airplane", "frog"), n_train=20, n_val=6)
    r = na.audit(ds, image_size=32, precision="bf16", progress=False)
    assert r.config["precision"] == "bf16" and "bf16" in r.config["backbone_id"]
    val = ds.match_tags("val").first().id
    out = na.most_influential(ds, val, k=2)  # rebuilds the backbone at the audit's precision
    assert len(out["most"]) == 2


@needs_bf16
def test_cli_precision_option(make_small_dataset, capsys):
    from noise_audit.cli import main

    ds = make_small_dataset(classes=("airplane", "frog"), n_train=10, n_val=5)
    with pytest.raises(SystemExit) as e:
        main(["audit", "--dataset", ds.name, "--precision", "fp16"])
    assert e.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
    assert main(["audit", "--dataset", ds.name, "--image-size", "32", "--precision", "bf16", "--json"]) == 0
    config, _ = na.load_audit(ds, "noise_audit")
    assert config["precision"] == "bf16"


def test_lite2_loads_offline_and_gives_1280_features():
    code = ("import socket\n"
            "def offline(*a, **k): raise OSError('network disabled')\n"
            "socket.socket.connect = offline\n"
            "import sys\n"
            "from noise_audit.core.features import extract_features, get_backbone\n"
            "bb = get_backbone('efficientnet_lite2', image_size=64)\n"
            "f, n = extract_features(sys.argv[1:], bb, cache_dir=False, progress=False, num_workers=0)\n"
            "import numpy as np; np.save(sys.stdout.buffer, f)\n")
    proc = subprocess.run([sys.executable, "-c", code, *PATHS[:4]], capture_output=True, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    import io

    lite2 = np.load(io.BytesIO(proc.stdout))
    lite0, _ = extract_features(PATHS[:4], get_backbone(image_size=64), cache_dir=False, progress=False)
    assert lite2.shape == (4, 1280) and np.isfinite(lite2).all() and lite2.std() > 0
    assert not same_features(lite2, lite0, rtol=0.1)  # another network, not Lite0 under another name
    assert get_backbone("efficientnet_lite2", image_size=64).cache_id.startswith("efficientnet_lite2-")


def test_images_per_second_in_the_progress_bar(bb64, capfd, tmp_path):
    paths = [shutil.copy(p, tmp_path) for p in PATHS[:4]]
    extract_features(paths, bb64, cache_dir=False, progress=True, num_workers=0)
    assert "img/s" in capfd.readouterr().err
