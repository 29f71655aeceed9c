"""Super-resolution of thick-slice labels on real MRI: thick slices simulated from the 1 mm lumbar
spines of Dataset001_SpineVB3, their labels super-resolved on their own image, measured against
the real 1 mm labels.

    python benchmarks/slice_super_resolution.py [--data ../shared/data/Dataset001_SpineVB3]
        [--slices-mm 3 5] [--axis 0] [--smooth-labels-mm S] [--cases N] [--csv out.csv]

Per case and slice thickness T (mm, odd, so that the 1 mm slices line up with the fine grid): the
volume is cut into slabs of T slices along array `--axis` (0: left-right, the axis the sagittal
annotations were drawn slice by slice along; 1: head-foot; 2: antero-posterior), each slab the mean of its T slices, its labels those of its
middle slice (a T mm acquisition of the same spine). The labels are then brought back to 1 mm
three ways, side by side on the same slabs:
- nearest: each 1 mm slice takes its slab's label (the stair-steps of the thick slices);
- shape: shape-based interpolation of the labels alone (`carry_labels` onto the 1 mm grid);
- super-resolved: `super_resolve_labels` with the slab image, carried onto the 1 mm grid.
Printed per case: wrong 1 mm voxels (bone vs background, any vertebra) of each, and Dice of all
vertebrae; then medians and the ratio super-resolved / shape. Only voxels between slab centres
can differ: the centres keep their labels in all three.

The manual labels were drawn on each sagittal slice: across those slices (array axis 0) they step
as the annotator's contours did, not as the bone does. `--smooth-labels-mm S` first smooths each
vertebra's mask by a Gaussian of S mm (each voxel the label of the largest smoothed mask, above
0.5), so that the labels, and the truth they are measured against, are smooth in every direction.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from sabnet.evaluation.metrics import dice_iou
from sabnet.io.geometry import Geometry
from sabnet.registration.label_carrying import carry_labels
from sabnet.registration.rigid_affine import body_mask, flatten_bias
from sabnet.registration.slice_super_resolution import super_resolve_labels

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "Dataset001_SpineVB3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--slices-mm", type=int, nargs="+", default=[3, 5], help="odd slab thicknesses (mm)")
    parser.add_argument("--axis", type=int, default=0, help="array axis the slabs are cut along (default 0)")
    parser.add_argument("--smooth-labels-mm", type=float, default=0.0,
                        help="smooth the labels by this Gaussian first (mm; default 0: as annotated)")
    parser.add_argument("--cases", type=int, default=None, help="only the first N cases")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    if any(t < 3 or t % 2 == 0 for t in args.slices_mm):
        parser.error("--slices-mm: give odd thicknesses of 3 mm or more (the 1 mm slices must line up)")
    labels_dir = args.data / "labelsTr"
    if not labels_dir.is_dir():
        raise SystemExit(f"{labels_dir}: not found; give --data (the real spine set in nnU-Net's raw layout)")
    cases = sorted(p.name[: -len(".nii.gz")] for p in labels_dir.glob("*.nii.gz"))[: args.cases]
    rows = []
    for case in cases:
        image = sitk.ReadImage(str(args.data / "imagesTr" / f"{case}_0000.nii.gz"), sitk.sitkFloat32)
        labels = sitk.ReadImage(str(labels_dir / f"{case}.nii.gz"), sitk.sitkUInt8)
        if args.smooth_labels_mm > 0:
            labels = _smoothed(labels, args.smooth_labels_mm)
        for thickness in args.slices_mm:
            rows.append({"case": case, "slices_mm": thickness, **_one(image, labels, args.axis, thickness)})
            print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()),
                  flush=True)
    table = pd.DataFrame(rows)
    for thickness, part in table.groupby("slices_mm"):
        print(f"\n{thickness} mm slabs, {len(part)} cases, medians: wrong 1 mm voxels nearest "
              f"{part.wrong_nearest.median():.0f}, shape {part.wrong_shape.median():.0f}, super-resolved "
              f"{part.wrong_super.median():.0f} (super-resolved / shape: median {(part.wrong_super / part.wrong_shape).median():.2f}, "
              f"worst {(part.wrong_super / part.wrong_shape).max():.2f}); Dice nearest {part.dice_nearest.median():.4f}, "
              f"shape {part.dice_shape.median():.4f}, super-resolved {part.dice_super.median():.4f}; "
              f"{part.seconds.median():.1f} s per case")
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    if args.csv:
        table.to_csv(args.csv, index=False)


def _smoothed(labels: sitk.Image, sigma_mm: float) -> sitk.Image:
    """Each voxel the label whose mask, smoothed by `sigma_mm`, is largest there (above 0.5)."""
    array = sitk.GetArrayFromImage(labels)
    sigma = sigma_mm / np.asarray(labels.GetSpacing())[::-1]
    best, out = np.full(array.shape, 0.5, np.float32), np.zeros_like(array)
    for value in np.unique(array[array > 0]):
        share = ndimage.gaussian_filter((array == value).astype(np.float32), sigma)
        larger = share > best
        out[larger], best[larger] = value, share[larger]
    smooth = sitk.GetImageFromArray(out)
    smooth.CopyInformation(labels)
    return smooth


def _one(image: sitk.Image, labels: sitk.Image, axis: int, thickness: int) -> dict:
    """Slabs of `thickness` 1 mm slices along array `axis`, their labels brought back to 1 mm."""
    values, truth = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)
    n = values.shape[axis] // thickness * thickness
    values, truth = np.take(values, np.arange(n), axis=axis), np.take(truth, np.arange(n), axis=axis)
    geometry = Geometry.of(image)
    shape = list(truth.shape)
    shape[axis] = n // thickness
    spacing = list(geometry.axis_spacing_mm)
    spacing[axis] *= thickness
    origin = geometry.index_to_world(np.eye(3)[axis][None] * (thickness // 2))[0]   # centre of the first slab
    thick = Geometry.from_axes(shape, spacing, geometry.axis_vectors, origin)
    slabs = np.moveaxis(values, axis, 0).reshape((-1, thickness) + tuple(np.delete(values.shape, axis))).mean(axis=1)
    slab_image = thick.apply_to(sitk.GetImageFromArray(np.moveaxis(slabs, 0, axis).astype(np.float32)))
    slab_labels = thick.apply_to(sitk.GetImageFromArray(np.take(truth, np.arange(thickness // 2, n, thickness),
                                                                axis=axis)))
    fine = thick.subdivided(axis, thickness)
    one_mm = fine.apply_to(sitk.Image(fine.size, sitk.sitkUInt8))
    identity = sitk.Transform(3, sitk.sitkIdentity)
    nearest = np.repeat(sitk.GetArrayFromImage(slab_labels), thickness, axis=axis)
    shape_based = carry_labels(slab_labels, one_mm, identity)
    start = time.perf_counter()
    super_resolved = super_resolve_labels(slab_labels, flatten_bias(slab_image, body_mask(slab_image)))
    seconds = time.perf_counter() - start
    # carried onto the 1 mm grid as label transfer would carry it (the same voxels when its grid is that one)
    result = carry_labels(super_resolved, one_mm, identity) if super_resolved is not None else nearest
    bone = truth > 0
    out = {}
    for name, guess in (("nearest", nearest), ("shape", shape_based), ("super", result)):
        out[f"wrong_{name}"] = int(np.count_nonzero((guess > 0) != bone))
        out[f"dice_{name}"] = float(dice_iou(bone, guess > 0)[0])
    out["seconds"] = seconds
    return out


if __name__ == "__main__":
    main()
