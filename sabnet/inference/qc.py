"""Quality-control pictures: a few slices of a case with the predicted contours over the image."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sabnet.io.atomic import atomic_path
from sabnet.io.geometry import Geometry

N_PANELS = 4


def qc_slices(labels: np.ndarray, slice_axis: int, n: int = N_PANELS) -> list[int]:
    """Slice indices along `slice_axis` spread over the labelled range, preferring labelled slices."""
    other = tuple(a for a in range(3) if a != slice_axis)
    area = (labels > 0).sum(axis=other)
    labelled = np.flatnonzero(area)
    if labelled.size == 0:
        return np.linspace(0, labels.shape[slice_axis] - 1, n + 2)[1:-1].round().astype(int).tolist()
    picks = np.linspace(labelled[0], labelled[-1], n + 2)[1:-1]
    return sorted({int(labelled[np.argmin(np.abs(labelled - p))]) for p in picks})


def write_qc_png(image: np.ndarray, labels: np.ndarray, geometry: Geometry, slice_axis: int, label_names: dict[str, int],
                 path: Path, title: str = "") -> Path:
    """image, labels: array order (as read). Panels show slices along `slice_axis` with per-label
    contour colours, displayed with the in-plane pixel spacing as aspect ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage import measure

    slices = qc_slices(labels, slice_axis)
    names = {v: k for k, v in label_names.items() if v != 0}
    colours = plt.get_cmap("tab20", max(len(names), 1))
    in_plane = [a for a in range(3) if a != slice_axis]
    aspect = geometry.axis_spacing_mm[in_plane[0]] / geometry.axis_spacing_mm[in_plane[1]]
    fig, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 4.4), squeeze=False)
    for ax, s in zip(axes[0], slices):
        img = np.take(image, s, axis=slice_axis).astype(np.float32)
        lab = np.take(labels, s, axis=slice_axis)
        low, high = np.percentile(img, [1, 99.5])
        ax.imshow(img, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), aspect=aspect, interpolation="nearest")
        for i, (value, name) in enumerate(sorted(names.items())):
            for contour in measure.find_contours((lab == value).astype(np.uint8), 0.5):
                ax.plot(contour[:, 1], contour[:, 0], color=colours(i), linewidth=1.0)
        ax.set_title(f"slice {s}", fontsize=9)
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours(i), label=name) for i, (_, name) in enumerate(sorted(names.items()))]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
