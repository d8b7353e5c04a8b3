"""Issue 25.4: hostile files and paths.

- A decompression bomb (a small PNG whose header declares more pixels than
  Pillow's ``Image.MAX_IMAGE_PIXELS``): listed with the other unreadable
  files in one error that names it, before anything is decoded; nothing is
  written and Pillow's own warning never reaches stderr.
- Symbolic links: to an image (works), to a text file, to a folder, to
  nothing: each named in the one error.
- A path with a newline: one line of the error (as Python writes it).
- Image folders whose names FiftyOne's importer skips (``.hidden``,
  ``..x``): one warning, not a silent loss.
- Class names with path separators and ``..``: an audit with a cache and a
  report writes files only in the cache folder and the report folder.
"""

import logging
import os
import shutil

import fiftyone as fo
import pytest
from PIL import Image

import noise_audit as na

from audit_state import FAST
from conftest import FIXTURES, unique_name


def _files_under(folder):
    return {os.path.join(root, name) for root, _, names in os.walk(folder) for name in names}


def _bomb(path, side):
    """A PNG of ``side`` x ``side`` one-bit pixels: a few kB on disk, ``side**2`` pixels declared."""
    Image.new("1", (side, side)).save(path, optimize=True)
    return path


@pytest.fixture
def small(make_small_dataset):
    return make_small_dataset(n_train=8, n_val=3)


def test_hostile_image_files_are_one_error_naming_each(small, tmp_path, recwarn):
    ds = small
    limit = Image.MAX_IMAGE_PIXELS
    assert limit == 89478485, "Pillow's default limit; the files below are sized against it"
    big = _bomb(tmp_path / "bomb.png", 14000)  # 196M pixels: above twice the limit, Pillow raises
    large = _bomb(tmp_path / "large.png", 10000)  # 100M pixels: above the limit, Pillow only warns
    assert os.path.getsize(big) < 100_000 and os.path.getsize(large) < 100_000
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    folder = tmp_path / "a folder"
    folder.mkdir()
    image = sorted((FIXTURES / "train" / "frog").iterdir())[-1]
    links = {name: tmp_path / name for name in ("to-image.jpg", "to-text.jpg", "to-folder.jpg", "to-nothing.jpg")}
    for name, target in zip(links, (image, text, folder, tmp_path / "gone.jpg")):
        os.symlink(target, links[name])
    newline = tmp_path / "two\nlines.jpg"
    shutil.copy(image, newline)
    newline_text = tmp_path / "bad\nname.jpg"
    newline_text.write_text("not an image either")

    hostile = [big, large, *links.values(), newline, newline_text]
    ds.add_samples([fo.Sample(filepath=str(p), tags=["train"], ground_truth=fo.Classification(label="frog"))
                    for p in hostile])
    fields = set(ds.get_field_schema())
    with pytest.raises(na.NoiseAuditError) as raised:
        na.audit(ds, "ground_truth", key="hostile", **FAST)
    error = raised.value
    reasons = dict(error.files)
    assert set(reasons) == {str(p) for p in (big, large, links["to-text.jpg"], links["to-folder.jpg"],
                                            links["to-nothing.jpg"], newline_text)}
    for bomb in (big, large):
        assert reasons[str(bomb)].startswith("Decompression") and "Raise PIL.Image.MAX_IMAGE_PIXELS" in reasons[str(bomb)]
    assert "DecompressionBombError" in reasons[str(big)] and "DecompressionBombWarning" in reasons[str(large)]
    assert reasons[str(links["to-text.jpg"])].startswith("UnidentifiedImageError")
    assert reasons[str(links["to-folder.jpg"])] == reasons[str(links["to-nothing.jpg"])] == "missing"
    # one line per file: the path with a newline as Python writes it
    lines = str(error).splitlines()
    assert len(lines) == 1 + len(reasons)
    assert any(line.strip().startswith(repr(str(newline_text))) for line in lines)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    ds.reload()
    assert set(ds.get_field_schema()) == fields and ds.list_runs() == []  # nothing written

    # without the unreadable ones, the symlink to an image and the path with a newline work
    ds.delete_samples(ds.select([s.id for s in ds if s.filepath in reasons]))
    na.audit(ds, "ground_truth", key="ok", **FAST)
    assert len(ds.exists("ok_corruption_score")) == len(ds) == 33 + 2


def test_images_the_importer_would_skip_are_one_warning(tmp_path, caplog):
    root = tmp_path / "tree"
    frogs = sorted((FIXTURES / "train" / "frog").iterdir())
    for c, k in (("frog", 0), (".hidden", 2), ("..x", 4), (" sp ace ü<b>", 6)):
        (root / c).mkdir(parents=True)
        for j in range(2):
            shutil.copy(frogs[k + j], root / c / f"{j}.jpg")
    shutil.copy(frogs[8], root / "frog" / ".dot.jpg")  # a hidden file in a class folder
    shutil.copy(frogs[9], root / "beside.jpg")  # no class folder
    (root / "frog" / ".DS_Store").write_bytes(b"\0\1")  # not an image: not reported
    name = unique_name("na-skip")
    with caplog.at_level(logging.WARNING, logger="noise_audit"):
        ds = na.load_image_folder(root, name=name)
    try:
        assert sorted(ds.distinct("ground_truth.label")) == [" sp ace ü<b>", "frog"] and len(ds) == 4
        [record] = [r for r in caplog.records if r.name.startswith("noise_audit")]
        message = record.getMessage()
        assert message.startswith(f"6 image files under {root} were not imported")
        assert "'..x/0.jpg', '..x/1.jpg', '.hidden/0.jpg'" in message  # the first three, sorted
    finally:
        ds.delete()


def test_class_names_with_path_separators_write_nowhere_else(tmp_path, make_small_dataset):
    """Labels such as ``../../../x`` and ``a/b`` reach no file name: the cache is keyed by hashes,
    the report has three fixed names and embeds its thumbnails."""
    base = tmp_path / "a" / "b" / "c"
    cache, out = base / "cache", base / "report"
    ds = make_small_dataset(n_train=8, n_val=3)
    names = {"airplane": "../../../../escaped", "frog": "/tmp/abs/x", "truck": "a/b/../c"}
    for sample in ds.iter_samples(autosave=True):
        sample["ground_truth"] = fo.Classification(label=names[sample.ground_truth.label])
    repo_before = set(os.listdir(os.getcwd()))
    before = _files_under(tmp_path)
    na.audit(ds, "ground_truth", key="paths", cache_dir=str(cache), **FAST)
    na.report(ds, "paths", out, n_explained=1, progress=False)
    new = _files_under(tmp_path) - before
    assert new and all(p.startswith((str(cache) + os.sep, str(out) + os.sep)) for p in new), new
    assert {os.path.basename(p) for p in new if p.startswith(str(out))} == {"report.html", "summary.json", "summary.md"}
    assert not os.path.exists("/tmp/abs/x") and set(os.listdir(os.getcwd())) == repo_before
    assert all(".." not in os.path.relpath(p, cache) for p in new if p.startswith(str(cache)))
    assert sorted(ds.distinct("ground_truth.label")) == sorted(names.values())
