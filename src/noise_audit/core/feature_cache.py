"""Stage 2c, the feature cache: a backbone's features on disk, keyed by file.

A second audit of the same images reads their features back instead of
running the network. A row is keyed by the backbone (its ``cache_id``, see
:mod:`noise_audit.core.backbones`) and by the file: its absolute path,
modification time and size, and how files are decoded
(:data:`DECODE_VERSION`), so a file replaced or truncated since is a miss.

The cache (:class:`FeatureCache`) is a few on-disk arrays per backbone,
memory-mapped: a lookup reads the file keys (40 bytes an image), then copies
only the wanted rows, a chunk at a time (:data:`CHUNK_BYTES`).
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
import zipfile
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from noise_audit.errors import NoiseAuditError

# How files become pixels (images.to_rgb); part of each file's cache key, so a change
# recomputes cached features without changing backbone ids (audits made before
# it stay explainable). 2: 16-bit images scaled to 8 bit, no longer clipped white.
DECODE_VERSION = "2"
CHUNK_BYTES = 32 << 20  # features are copied (read, written, summed) this many bytes at a time


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
    def file_key(path: str | os.PathLike[str], st: os.stat_result | None = None) -> str:
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
                    out[mine] = small[s][2][row_of[dst][mine]]  # noqa: F821 (deleted only after the write)
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
        return row_chunks(rows, CHUNK_BYTES // (4 * d))


_KEY_DTYPE = "S40"  # a file key: 40 hex digits of SHA-1, as ASCII bytes
_KEYS_SUFFIX = ".keys.npy"


def row_chunks(rows, step):
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


def file_keys(filepaths: Sequence[str | os.PathLike[str]], stats: Sequence[os.stat_result | None]) -> np.ndarray:
    """The cache key of each file (:meth:`FeatureCache.file_key`), from its
    ``os.stat`` (:func:`noise_audit.core.images.stat_files`); empty where the
    stat is ``None`` (a missing file)."""
    keys = np.zeros(len(filepaths), dtype=_KEY_DTYPE)
    for i, (path, st) in enumerate(zip(filepaths, stats)):
        if st is not None:
            keys[i] = FeatureCache.file_key(path, st)
    return keys
