"""Stage 2b, images: files decoded in full, transformed, in worker processes.

Images stream from disk: worker processes of a torch ``DataLoader`` decode and
transform batches while the network runs on the previous ones. Each image is
decoded in full, once (:func:`to_rgb`: 16-bit images are scaled to 8 bit, not
clipped white). A file that is missing, not an image or damaged (a truncated
JPEG) never stops the others: the batches carry each bad file's reason, so
the caller can list them all in one :class:`~noise_audit.errors.UnreadableImages`
error (see :func:`check_readable`).

What a transform receives (:data:`DECODERS`, a backbone's ``decode``):

- ``"pil"``: an RGB PIL image (a custom module's ``transform``);
- ``"tensor"``: the same pixels as a uint8 ``(3, h, w)`` tensor (the built-in
  backbones, whose resizing runs on tensors, 2-4x faster than on PIL images).
  JPEGs are decoded by ``torchvision.io.decode_jpeg``, which gives PIL's
  pixels exactly (the same libjpeg-turbo algorithm; checked on CIFAR-10,
  Tiny ImageNet, grey and CMYK files) in about half the time on large files;
  every other format, and any JPEG it refuses (with PIL's own message then),
  goes through :func:`to_rgb`. (torchvision 0.29 deprecates its decoders in
  favour of TorchCodec; were they gone, PIL would decode everything, at the
  same pixels);
- ``"numpy"``: a uint8 ``(h, w, 3)`` array, what FiftyOne hands its models.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from noise_audit.errors import MISSING, UnreadableImages

_log = logging.getLogger(__name__)


def stat_files(filepaths: Sequence[str | os.PathLike[str]]) -> tuple[list[os.stat_result | None], list[int]]:
    """``(stats, missing)``: each file's ``os.stat`` (``None`` where missing or
    not a regular file) and the indices of those files.

    One ``stat`` a file serves both the check and the cache key (a million
    stats take seconds on a network drive).
    """
    stats: list[os.stat_result | None] = []
    for path in filepaths:
        try:
            st = os.stat(path)
        except OSError:
            st = None
        stats.append(st if st is not None and stat.S_ISREG(st.st_mode) else None)
    return stats, [i for i, st in enumerate(stats) if st is None]


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


def reason(e: BaseException) -> str:
    """An exception as one short line."""
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]


def unreadable(filepaths, bad):
    return UnreadableImages((filepaths[i], bad[i]) for i in sorted(bad))


def header_problems(filepaths, rows):
    """``{row: reason}`` for the files among ``rows`` whose header is not an
    image's (``Image.verify``: quick, nothing is decoded), or that declare
    more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` (:func:`too_many_pixels`)."""
    bad = {}
    for i in rows:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(filepaths[i]) as im:
                    im.verify()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            bad[int(i)] = too_many_pixels(e)
        except Exception as e:  # noqa: BLE001 - any failure means unusable
            bad[int(i)] = reason(e)
    return bad


def too_many_pixels(error: BaseException) -> str:
    """The reason given for a possible decompression bomb: an image whose header
    declares more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.

    Pillow raises above twice the limit and only warns above it (then decodes
    it in full: gigabytes for a file of kilobytes). Either is an unreadable
    file here, before anything is decoded, so one message lists it with the
    others. A user who trusts such files raises the limit
    (``PIL.Image.MAX_IMAGE_PIXELS = None`` removes it).
    """
    return (f"{type(error).__name__}: {error} Raise PIL.Image.MAX_IMAGE_PIXELS "
            f"(now {Image.MAX_IMAGE_PIXELS}) if you trust the file")[:300]


def check_readable(filepaths: Iterable[str | os.PathLike[str]], batch_size: int = 64, num_workers: int | None = None,
                   progress: bool = False) -> None:
    """Raises :class:`UnreadableImages` listing every file that is missing,
    not an image, or cannot be decoded in full (e.g. a truncated JPEG).

    Decodes every image (in worker processes, like :func:`extract_features`),
    without running a network.
    """
    filepaths = [str(p) for p in filepaths]
    _, missing = stat_files(filepaths)
    bad = dict.fromkeys(missing, MISSING)
    rest = [i for i in range(len(filepaths)) if i not in bad]
    bad.update(header_problems(filepaths, rest))
    bad.update(decode_problems(filepaths, [i for i in rest if i not in bad], batch_size, num_workers, progress))
    if bad:
        raise unreadable(filepaths, bad)


def decode_problems(filepaths, rows, batch_size=64, num_workers=None, progress=False):
    """``{row: reason}`` for the files among ``rows`` that cannot be decoded in full."""
    num_workers = default_num_workers() if num_workers is None else num_workers
    paths = [filepaths[i] for i in rows]
    bad, done = {}, 0
    with tqdm(total=len(paths), desc="checking images", disable=not progress, unit="img") as bar:
        for _, count, errors in image_batches(paths, None, batch_size, num_workers, False):
            bad.update({int(rows[done + pos]): reason for pos, reason in errors})
            done += count
            bar.update(count)
    return bad


DECODERS = ("pil", "tensor", "numpy")
_JPEG_MAGIC = b"\xff\xd8\xff"


def decode(path: str, as_: str = "pil") -> Image.Image | torch.Tensor | np.ndarray:
    """The image at ``path``, decoded in full, as RGB: a PIL image, a uint8
    ``(3, h, w)`` tensor or a uint8 ``(h, w, 3)`` array (see the module doc)."""
    if as_ == "tensor":
        with open(path, "rb") as f:
            data = f.read()
        if data.startswith(_JPEG_MAGIC):
            try:
                with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (for TorchCodec)
                    warnings.simplefilter("ignore", DeprecationWarning)
                    from torchvision.io import ImageReadMode, decode_jpeg

                    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            except (RuntimeError, ImportError):  # damaged, refused by libjpeg, or no decoder: PIL decides
                pass
    with Image.open(path) as im:
        rgb = to_rgb(im)
    if as_ == "pil":
        return rgb
    array = np.asarray(rgb)
    return torch.from_numpy(array.copy()).permute(2, 0, 1) if as_ == "tensor" else array


class _ImageFiles(torch.utils.data.Dataset):
    """The images at ``paths``, decoded in full and transformed wherever the
    loader asks (a worker).

    An item is ``(transformed image, None)``, or ``(None, reason)`` for a file
    that cannot be decoded, so that one bad file does not stop the others and
    the caller can list them all. An error of ``transform`` itself is not
    the file's fault and is raised as it is. Without a transform the images
    are only decoded (a check).
    """

    def __init__(self, paths, transform, decoder="pil"):
        self.paths, self.transform, self.decoder = paths, transform, decoder

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            image = decode(self.paths[i], self.decoder)
        except Exception as e:  # noqa: BLE001 - any failure to decode means unusable
            return None, reason(e)
        return (None if self.transform is None else self.transform(image)), None


def _collate(items):
    """A batch: ``(images of the decodable files, or None; batch size; [(position, reason)])``.

    Tensors of one shape are stacked, images (4-d) in channels-last order,
    the order the network runs in (see :mod:`noise_audit.core.backbones`):
    the worker lays them out, not the process running the network. Anything
    else (arrays of different sizes, for a FiftyOne model) stays a list."""
    good = [x for x, reason in items if reason is None and x is not None]
    bad = [(pos, reason) for pos, (_, reason) in enumerate(items) if reason is not None]
    if not good:
        return None, len(items), bad
    if not all(isinstance(x, torch.Tensor) and x.shape == good[0].shape for x in good):
        return good, len(items), bad
    batch = torch.stack(good)
    return (batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch), len(items), bad


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


def default_num_workers(device: torch.device | str | None = None) -> int:
    """Decoding processes by default.

    When the network runs on the CPU, one per core, at most 4: decoding and
    resizing a JPEG to 224 px costs 0.5-4 ms of one core (32-1280 px sources),
    a few percent of the forward pass's 20-50 ms (measured with
    ``bench/speed.py --parts decode``: 1, 2 or 3 workers gave the same
    throughput on 2 cores; the forward pass, not decoding, is the bottleneck).
    On a GPU the forward pass takes about a millisecond an image, so decoding
    is the bottleneck: every core but one decodes, up to 16.
    """
    cores = os.cpu_count() or 1
    if device is not None and torch.device(device).type == "cuda":
        return min(16, max(1, cores - 1))
    return min(4, cores)


def image_batches(paths, transform, batch_size, num_workers, pin_memory, decoder="pil"):
    """Batches of transformed images, in the order of ``paths``: ``(images,
    count, [(position, reason)])`` (see :func:`_collate`); ``decoder``: what
    ``transform`` receives (:data:`DECODERS`).

    Worker processes each decode whole batches, so more workers than batches
    would idle. Workers use the default multiprocessing context, which also
    works from a thread (FiftyOne runs plugin operators in threads). If they
    cannot start (e.g. a ``spawn`` platform and a transform that cannot be
    pickled, such as a lambda), the images are decoded here instead.
    """
    num_workers = min(num_workers, -(-len(paths) // batch_size))
    dataset = _ImageFiles(paths, transform, decoder)
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

