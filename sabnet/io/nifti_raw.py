"""What ITK's NIfTI reader hides, read from the file itself.

ITK 5 (SimpleITK 2.x) reads a truncated uncompressed .nii without complaint (the missing voxels
become zeros) and silently replaces every NaN and Inf voxel by 0 (fixed in ITK 6, PR #6683).
sabnet then sees plausible data, while other tools (nibabel, hence nnU-Net) see the truth. The
header gives dim, datatype, bitpix and vox_offset, which is all it takes to check both.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FLOAT_DATATYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64
CHUNK_BYTES = 1 << 24


@dataclass(frozen=True)
class NiftiHeader:
    endian: str  # "<" or ">"
    shape: tuple[int, ...]  # dim[1..dim[0]], NIfTI (i, j, k, ...) order
    datatype: int
    bitpix: int
    vox_offset: int

    @property
    def data_bytes(self) -> int:
        return int(np.prod([max(n, 1) for n in self.shape])) * self.bitpix // 8


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_nifti_header(path: Path | str) -> NiftiHeader | None:
    """The layout fields of a NIfTI-1 or NIfTI-2 header, or None when it is not one."""
    path = Path(path)
    try:
        if path.name.lower().endswith(".gz"):  # decompress only the start; works on truncated files too
            with open(path, "rb") as f:
                raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(f.read(1 << 16), 540)
        else:
            with open(path, "rb") as f:
                raw = f.read(540)
    except (OSError, zlib.error):
        return None
    for endian in "<>":
        if len(raw) >= 348 and struct.unpack(endian + "i", raw[:4])[0] == 348:  # NIfTI-1
            dims = struct.unpack(endian + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
            offset = int(struct.unpack(endian + "f", raw[108:112])[0])
            break
        if len(raw) >= 540 and struct.unpack(endian + "i", raw[:4])[0] == 540:  # NIfTI-2
            datatype, bitpix = struct.unpack(endian + "2h", raw[12:16])
            dims = struct.unpack(endian + "8q", raw[16:80])
            offset = struct.unpack(endian + "q", raw[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    return NiftiHeader(endian, tuple(int(d) for d in dims[1 : dims[0] + 1]), int(datatype), int(bitpix), int(offset))


def truncation(path: Path | str) -> str | None:
    """Why a .nii or .nii.gz holds fewer bytes than its header promises, else None.

    ITK fills what is missing with zeros for both. For .nii.gz the gzip trailer's size field
    (uncompressed bytes mod 2**32) is compared with the header first; only when they disagree is
    the stream decompressed to the end (a file of several gzip members has a shorter trailer).
    """
    path = Path(path)
    header = read_nifti_header(path)
    if header is None:
        return None
    expected = header.vox_offset + header.data_bytes
    if not path.name.lower().endswith(".gz"):
        actual = path.stat().st_size
        return f"truncated: {actual} bytes, the header promises {expected}" if actual < expected else None
    with open(path, "rb") as f:
        f.seek(-4, 2)
        trailer = struct.unpack("<I", f.read(4))[0]
    if trailer == expected % 2**32:
        return None
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                total += len(chunk)
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        return f"truncated or damaged compressed data ({type(e).__name__}: {e})"
    return f"truncated: {total} bytes after decompression, the header promises {expected}" if total < expected else None


def nonfinite_counts(path: Path | str) -> tuple[int, int]:
    """(NaN voxels, Inf voxels) stored in a float NIfTI file; (0, 0) for other voxel types."""
    header = read_nifti_header(path)
    if header is None or header.datatype not in FLOAT_DATATYPES:
        return 0, 0
    dtype = np.dtype(header.endian + FLOAT_DATATYPES[header.datatype])
    remaining, n_nan, n_inf = header.data_bytes, 0, 0
    with _open(Path(path)) as f:
        f.seek(header.vox_offset)
        while remaining > 0:
            chunk = f.read(min(CHUNK_BYTES, remaining))
            usable = len(chunk) - len(chunk) % dtype.itemsize
            if usable <= 0:
                break
            values = np.frombuffer(chunk[:usable], dtype=dtype)
            n_nan += int(np.isnan(values).sum())
            n_inf += int(np.isinf(values).sum())
            remaining -= len(chunk)
    return n_nan, n_inf
