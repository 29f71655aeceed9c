"""The fast tile sampler paints what evaluating every voxel and sub-slice paints."""
import numpy as np
import pytest

from sabnet.phantoms.acquisition import Placement, plan_geometry
from sabnet.phantoms.anatomy import Tissue
from sabnet.phantoms.contrast import signal_table
from sabnet.phantoms.locations import LOCATIONS, build_anatomy, label_ids
from sabnet.phantoms.sampling import sample
from sabnet.phantoms.shapes import Capsule, Ellipsoid, Union


@pytest.mark.parametrize("location", LOCATIONS)
def test_tile_shortcut_matches_exhaustive_sampling(location):
    rng = np.random.default_rng(11)
    anatomy = build_anatomy(location, rng)
    placement = Placement.draw(rng, 1.0, mirror=True)
    geometry, slice_axis = plan_geometry(rng, "oblique", anatomy, placement, (1.2, 1.2), (3.0, 3.0), 72, 14, True)
    grid = placement.grid(geometry)
    table, ids = signal_table("T2"), label_ids([location])
    spacing = geometry.axis_spacing_mm
    fast = sample(anatomy, grid, slice_axis, spacing, 3, table, ids)
    full = sample(anatomy, grid, slice_axis, spacing, 3, table, ids, exhaustive=True)
    signal, tissue, labels = fast
    assert len(np.unique(full[2])) >= 3           # bones in view
    assert np.array_equal(tissue, full[1]) and np.array_equal(labels, full[2])
    assert np.allclose(signal, full[0], atol=1e-5)
    # partial volume: some voxels mix tissues across the 3 mm slice
    assert np.any(~np.isin(signal, table))
    assert tissue.max() <= max(Tissue)


def test_shapes_are_signed_distances():
    p = tuple(np.array([[0, 0, 0], [0, 13, 0], [4, 0, 0]], dtype=np.float32).T)   # three points (x, y, z)
    sphere = Ellipsoid((0, 0, 0), (10, 10, 10))
    assert sphere.sdf(p) == pytest.approx([-10.0, 3.0, -6.0], abs=1e-4)        # also at the centre
    rod = Capsule((0, 0, -20), (0, 0, 20), 2.0)
    assert rod.sdf(p) == pytest.approx([-2.0, 11.0, 2.0], abs=1e-4)
    both = Union([sphere, rod], blend_mm=4.0)
    assert np.all(both.sdf(p) <= np.minimum(sphere.sdf(p), rod.sdf(p)) + 1e-6)
    lo, hi = both.bounds()
    assert np.all(lo <= -10) and np.all(hi >= 10) and hi[2] >= 22
