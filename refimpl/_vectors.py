"""Byte-reproducible ``.npz`` files and sha256 digests for the golden vectors of :mod:`refimpl.oracle`.

``numpy.savez`` stamps every member of the zip archive with the current time, so two exports of
the same numbers differ byte for byte. :func:`write_npz` writes the same format (a zip archive of
``.npy`` files, readable by ``numpy.load(..., allow_pickle=False)``) with a fixed time stamp and
sorted members, so the sha256 of a file depends only on its arrays.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["write_npz", "read_npz", "sha256"]

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip archive can store


def write_npz(path, arrays: dict) -> None:
    """Write ``arrays`` (name → ndarray, no object dtype) as a ``.npz`` archive.

    Members are deflate-compressed, sorted by name, and time-stamped 1980-01-01.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            arr = np.asarray(arrays[name])
            if arr.dtype.hasobject:
                raise TypeError(f"{name}: object arrays cannot be stored in golden vectors")
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr if arr.flags.c_contiguous else arr.copy(order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def read_npz(path) -> dict:
    """Read every array of a ``.npz`` with ``allow_pickle=False``.

    An object (pickled) array raises ``ValueError`` naming the file and the member.
    """
    out = {}
    with np.load(Path(path), allow_pickle=False) as data:
        for name in data.files:
            try:
                out[name] = data[name]
            except ValueError as exc:
                raise ValueError(f"{Path(path).name}: member {name!r} is a pickled object array, refused ({exc})") from None
    return out


def sha256(path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()
