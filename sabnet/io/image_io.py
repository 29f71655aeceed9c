"""Read and write 3D images (NIfTI, NRRD, MetaImage, DICOM series folders) with exact geometry.

`read_image` returns a numpy array in array order (k, j, i) and the `Geometry` that places it;
`write_image` writes an array back on a geometry, atomically. Every failure a user can cause
raises `SabnetError` naming the file.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sabnet.errors import SabnetError
from sabnet.io import nifti_raw
from sabnet.io.atomic import atomic_path
from sabnet.io.geometry import Geometry

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_extension(path: Path | str) -> str:
    """The image extension of `path` ('.nii.gz', '.nrrd', ...), or '' for a folder or unknown file."""
    name = Path(path).name.lower()
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return ""


def strip_extension(path: Path | str) -> str:
    """File name without its image extension: 'case_0000.nii.gz' -> 'case_0000'."""
    name = Path(path).name
    ext = image_extension(name)
    return name[: -len(ext)] if ext else name


def is_dicom_folder(path: Path | str) -> bool:
    """True when `path` is a folder holding at least one DICOM series."""
    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def read_sitk(path: Path | str) -> sitk.Image:
    """Read a file, or the single DICOM series in a folder, as a 3D scalar SimpleITK image."""
    path = Path(path)
    if not path.exists():
        raise SabnetError(f"{path}: file not found")
    if path.is_dir():
        from sabnet.io.dicom import read_dicom_series

        image, _ = read_dicom_series(path)
    else:
        if not image_extension(path):
            raise SabnetError(
                f"{path}: unknown image format; use one of {', '.join(IMAGE_EXTENSIONS)} or a DICOM series folder"
            )
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise SabnetError(f"{path}: cannot be read as an image ({_first_line(e)}); is the file complete?") from None
        truncated = nifti_raw.truncation(path) if image_extension(path) in (".nii", ".nii.gz") else None
        if truncated:
            raise SabnetError(f"{path}: cannot be read as an image ({truncated}); is the file complete?")
    check_3d_scalar(image, path)
    return image


def check_3d_scalar(image: sitk.Image, path: Path | str) -> None:
    """Raise SabnetError unless `image` is 3D with one value per voxel."""
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        return
    if dim != 3:
        raise SabnetError(f"{path}: image is {dim}D with size {image.GetSize()}; sabnet needs 3D volumes "
                          "(one file per channel, one 3D volume per file)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SabnetError(f"{path}: image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                          "store each channel as its own file (case_0000, case_0001, ...)")


def _squeeze_4d(image: sitk.Image) -> sitk.Image:
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        return sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
    return image


def read_image(path: Path | str) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image: (array in array order (k, j, i), Geometry)."""
    image = _squeeze_4d(read_sitk(path))
    return sitk.GetArrayFromImage(image), Geometry.of(image)


def read_geometry(path: Path | str) -> Geometry:
    """Geometry of an image file without reading its voxels (DICOM folders are read in full)."""
    path = Path(path)
    if path.is_dir():
        return Geometry.of(_squeeze_4d(read_sitk(path)))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise SabnetError(f"{path}: cannot be read as an image ({_first_line(e)})") from None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return Geometry.of(_squeeze_4d(read_sitk(path)))
    return Geometry(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def array_to_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image holding `array` (array order) placed by `geometry`."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    return geometry.apply_to(sitk.GetImageFromArray(array))


def write_image(array: np.ndarray, geometry: Geometry, path: Path | str, compress: bool = True) -> Path:
    """Write `array` on `geometry` to `path` (format from the extension), atomically."""
    path = Path(path)
    if not image_extension(path):
        raise SabnetError(f"{path}: unknown output format; use one of {', '.join(IMAGE_EXTENSIONS)}")
    image = array_to_image(array, geometry)
    if image_extension(path) in (".mhd", ".nhdr"):
        _write_detached(image, path, compress)
        return path
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path


def _write_detached(image: sitk.Image, path: Path, compress: bool) -> None:
    """Header + data file formats: write both in a temporary folder under their final names,
    move the data file first and the header last, so a reader never sees a header without data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        sitk.WriteImage(image, str(tmp_dir / path.name), useCompression=compress)
        for f in sorted(tmp_dir.iterdir(), key=lambda f: f.name == path.name):
            f.replace(path.parent / f.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _first_line(error: Exception) -> str:
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    for line in lines:
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    return lines[-1] if lines else type(error).__name__
