"""Spatial training augmentations: in-plane rotation and scaling, field-of-view crops, and fields of
view that end elsewhere along the body (rows cut away at the top or the bottom).

Batches as in sabnet.training.augmentation ("data" (B, C, S, S), "seg" (B, 1, S, S), optional
"attention" (B, 1, S, S), "slice_hw" (B, 2) real pixels at the top-left, "rng"). What moves in from
outside the slice is 0 in image, labels and attention alike.
"""
from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage


RNG_KEY = "rng"


def batch_rng(data_dict: dict) -> np.random.Generator:
    rng = data_dict.get(RNG_KEY)
    return rng if rng is not None else np.random.default_rng()


def content_hw(data_dict: dict) -> np.ndarray:
    """(B, 2) rows and columns of real pixels per sample (the whole frame without "slice_hw")."""
    data = data_dict["data"]
    if "slice_hw" in data_dict:
        return np.asarray(data_dict["slice_hw"], dtype=np.int64)
    return np.tile(np.array(data.shape[-2:], dtype=np.int64), (data.shape[0], 1))


class SpatialAugmentation(AbstractTransform):
    """In-plane rotation and scaling about the centre of each sample's real pixels, in one resampling.

    rotation_deg: angle range, degrees, drawn uniformly; p_rotation: chance per sample.
    scale: zoom range (>1 enlarges), drawn log-uniformly (0.8 and 1.25 equally likely); p_scale: chance.
    Image channels: cubic spline (order_data); seg: nearest neighbour (label values kept);
    attention: linear. What moves in from outside the slice is 0 in all three. A sample whose
    draw would move every pixel of one of its labels out of the frame is left as it is, so the
    foreground that the loader forced into a sample stays there.
    """

    def __init__(self, rotation_deg: tuple[float, float] = (-30.0, 30.0), p_rotation: float = 0.3,
                 scale: tuple[float, float] = (0.8, 1.25), p_scale: float = 0.3, order_data: int = 3):
        self.rotation_deg = tuple(rotation_deg)
        self.p_rotation = p_rotation
        self.scale = tuple(scale)
        self.p_scale = p_scale
        self.order_data = order_data

    def __call__(self, **data_dict):
        rng = batch_rng(data_dict)
        data, seg, attention = data_dict["data"], data_dict.get("seg"), data_dict.get("attention")
        for b, (h, w) in enumerate(content_hw(data_dict)):
            angle = np.deg2rad(rng.uniform(*self.rotation_deg)) if rng.random() < self.p_rotation else 0.0
            zoom = np.exp(rng.uniform(*np.log(self.scale))) if rng.random() < self.p_scale else 1.0
            if angle == 0.0 and zoom == 1.0:
                continue
            matrix, offset = self.output_to_input(angle, zoom, ((h - 1) / 2, (w - 1) / 2))
            if seg is not None:
                moved = ndimage.affine_transform(seg[b, 0], matrix, offset, order=0, mode="grid-constant", cval=0)
                if set(np.unique(seg[b, 0])) - set(np.unique(moved)) - {0}:
                    continue  # a label would leave the frame entirely: keep this sample as it is
                seg[b, 0] = moved
            for c in range(data.shape[1]):
                data[b, c] = ndimage.affine_transform(data[b, c], matrix, offset, order=self.order_data,
                                                      mode="grid-constant", cval=0.0)
            if attention is not None:
                attention[b, 0] = ndimage.affine_transform(attention[b, 0], matrix, offset, order=1,
                                                           mode="grid-constant", cval=0.0)
        return data_dict

    @staticmethod
    def output_to_input(angle_rad: float, zoom: float, centre_rc: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """(matrix, offset) for scipy's affine_transform (input = matrix @ output + offset, (row, col)):
        content rotated by `angle_rad` and enlarged by `zoom` about `centre_rc`."""
        cos, sin = np.cos(angle_rad), np.sin(angle_rad)
        matrix = np.array([[cos, sin], [-sin, cos]]) / zoom
        centre = np.asarray(centre_rc, dtype=float)
        return matrix, centre - matrix @ centre


class FieldOfViewCrop(AbstractTransform):
    """Another field of view: a window of the sample's real pixels (each side drawn uniformly from
    `min_fraction` to all of it, placed at random) moved to the top-left of the frame, the rest 0.
    A scan that shows T10..S1 instead of T12..S1 places each vertebra elsewhere in the image; so
    does a crop: the network cannot name a vertebra by where it lies in the image. Small windows
    are the small fields of view users bring (a crop of two or three vertebrae is a third of a
    lumbar slice's side), so bone cut by the frame's edge is still bone. With `keep_labels` a
    sample whose crop would lose every pixel of a label it holds is left as it is; without, labels
    may vanish. p_per_sample: chance per sample.
    """

    def __init__(self, p_per_sample: float = 0.3, min_fraction: float = 0.3, keep_labels: bool = False):
        self.p_per_sample = p_per_sample
        self.min_fraction = min_fraction
        self.keep_labels = keep_labels

    def __call__(self, **data_dict):
        rng = batch_rng(data_dict)
        seg = data_dict.get("seg")
        hw = content_hw(data_dict)
        for b, (h, w) in enumerate(hw):
            if rng.random() >= self.p_per_sample:
                continue
            ch = int(rng.integers(max(1, int(self.min_fraction * h)), h + 1))
            cw = int(rng.integers(max(1, int(self.min_fraction * w)), w + 1))
            r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            window = (slice(r0, r0 + ch), slice(c0, c0 + cw))
            if self.keep_labels and seg is not None and _loses_a_label(seg[b, 0], window):
                continue
            _move_sample(data_dict, b, window)
            hw[b] = (ch, cw)
        if "slice_hw" in data_dict:
            data_dict["slice_hw"] = hw
        return data_dict


def _loses_a_label(seg: np.ndarray, window: tuple[slice, slice]) -> bool:
    """Whether a label of the (S, S) `seg` has no pixel inside `window`."""
    return bool(set(np.unique(seg)) - set(np.unique(seg[window])) - {0})


class EndCut(AbstractTransform):
    """A field of view that ends elsewhere along the body: the top rows (chance `p_top`) or else the
    bottom rows (chance `p_bottom`) are cut away, a share drawn uniformly from 0 to `max_fraction`
    of the sample's real rows; what is left moves to the top-left, 0 elsewhere.

    In the sagittal and coronal slice frames rows run head -> feet, so a top cut is a scan that
    starts lower (L2..S1 instead of T12..S1) and a bottom cut one that stops higher (T12..L4).
    Unlike FieldOfViewCrop, labels may vanish: the others keep their names, so the network cannot
    name vertebrae by counting from whichever end of the image it sees and has to count from an
    anatomical end that is in view (the sacrum, or the thoracolumbar junction).
    """

    def __init__(self, p_top: float = 0.2, p_bottom: float = 0.1, max_fraction: float = 0.4):
        if p_top < 0 or p_bottom < 0 or p_top + p_bottom > 1:
            raise ValueError(f"p_top {p_top} and p_bottom {p_bottom} must be >= 0 and add up to at most 1")
        self.p_top, self.p_bottom = p_top, p_bottom
        self.max_fraction = max_fraction

    def __call__(self, **data_dict):
        rng = batch_rng(data_dict)
        hw = content_hw(data_dict)
        for b, (h, w) in enumerate(hw):
            draw = rng.random()
            if draw >= self.p_top + self.p_bottom:
                continue
            cut = int(rng.integers(0, int(self.max_fraction * h) + 1))
            if cut == 0:
                continue
            window = (slice(cut, h), slice(0, w)) if draw < self.p_top else (slice(0, h - cut), slice(0, w))
            _move_sample(data_dict, b, window)
            hw[b] = (h - cut, w)
        if "slice_hw" in data_dict:
            data_dict["slice_hw"] = hw
        return data_dict


def _move_sample(data_dict: dict, b: int, window: tuple[slice, slice]) -> None:
    """Sample `b`'s image channels, labels and attention: `window` moved to the top-left, 0 elsewhere."""
    planes = list(data_dict["data"][b])
    planes += [data_dict[key][b, 0] for key in ("seg", "attention") if data_dict.get(key) is not None]
    for plane in planes:
        plane[...] = _moved(plane, window)


def _moved(plane: np.ndarray, window: tuple[slice, slice]) -> np.ndarray:
    """`plane` (S, S) with `window` moved to the top-left and everything else 0."""
    out = np.zeros_like(plane)
    part = plane[window]
    out[: part.shape[0], : part.shape[1]] = part
    return out
