"""Naming a series of vertebral bodies by their order along the spine (sabnet.inference.series_naming),
on label maps that look like a network's on a spine cropped along its length."""
import numpy as np
import pytest

from sabnet.inference.series_naming import name_series, vertebra_series

SERIES = [1, 2, 3, 4, 5]  # L1..L5
SPACING = (1.0, 1.0, 1.0)


def spine(n_bodies=6, first=1, height=9, disc=4, shape=(90, 16, 20)):
    """A straight spine along array axis 0: bodies of `height` voxels and discs of `disc` voxels;
    body b (0-based, head first) has label first + b. Returns (label map, [(row0, row1) per body])."""
    labels = np.zeros(shape, np.int16)
    rows = []
    for b in range(n_bodies):
        r0 = 2 + b * (height + disc)
        labels[r0:r0 + height, 4:12, 5:15] = first + b
        rows.append((r0, r0 + height))
    return labels, rows


def test_vertebra_series_reads_consecutive_vertebra_names_head_to_foot():
    assert vertebra_series({"background": 0, "L1": 1, "L2": 2, "L3": 3, "L4": 4, "L5": 5}) == [1, 2, 3, 4, 5]
    assert vertebra_series({"background": 0, "L1": 3, "T12": 7, "L2": 1, "T11": 2}) == [2, 7, 3, 1]
    assert vertebra_series({"background": 0, "femur": 1, "tibia": 2, "patella": 3}) == []
    assert vertebra_series({"background": 0, "L1": 1, "L3": 2, "L4": 3}) == []  # L2 missing: not a series
    assert vertebra_series({"background": 0, "L4": 1, "L5": 2}) == []  # too short to order


def test_a_cropped_spine_whose_names_slid_by_one_in_parts_gets_each_body_its_own_name():
    truth, rows = spine(n_bodies=5, first=1)
    cropped, rows = truth[2 * 13 - 1:], [(a - 25, b - 25) for a, b in rows[2:]]  # L3..L5 left in view
    # as a network that names by place in the image: the top 40 % of each body takes the name above
    predicted = cropped.copy()
    for (r0, r1), value in zip(rows, (3, 4, 5)):
        predicted[r0:r0 + 4][cropped[r0:r0 + 4] == value] = value - 1
    assert (predicted == 2).any() and (predicted[cropped == 3] != 3).any()
    named = name_series(predicted, SERIES, SPACING)
    assert np.array_equal(named, cropped)
    # the same volume stored upside down (no header is trusted): the same names
    assert np.array_equal(name_series(predicted[::-1], SERIES, SPACING), cropped[::-1])


def test_a_missing_body_leaves_a_gap_and_the_bodies_below_keep_their_names():
    truth, _ = spine(n_bodies=5)
    predicted = truth.copy()
    predicted[predicted == 3] = 0  # L3 not found
    top_of_l4 = (predicted == 4) & (np.arange(predicted.shape[0]) < 45)[:, None, None]
    predicted[top_of_l4] = 3  # and L4's top called L3: the name of the body that is missing
    named = name_series(predicted, SERIES, SPACING)
    assert np.array_equal(named, truth * (truth != 3))


def test_every_name_slid_by_one_is_fixed_by_one_anchor_and_not_without_it():
    truth, rows = spine(n_bodies=4, first=2)  # L2..L5 in view
    predicted = np.where(truth > 0, truth - 1, 0)  # called L1..L4: counted from the image's top
    assert np.array_equal(name_series(predicted, SERIES, SPACING), predicted)  # votes alone cannot know
    click = ((rows[-1][0] + 4, 8, 10), 5)  # the user says: this one is L5
    assert np.array_equal(name_series(predicted, SERIES, SPACING, anchors=[click]), truth)


def test_a_bone_beyond_the_series_end_and_joined_bodies_keep_the_networks_names():
    truth, rows = spine(n_bodies=6, first=1)  # the sixth body is S1, not a label of the series
    predicted = truth.copy()
    predicted[predicted == 6] = 5  # found as bone and called L5
    assert np.array_equal(name_series(predicted, SERIES, SPACING), predicted)  # L1..L5 right, S1 left alone
    bridged = truth.copy()
    bridged[truth == 6] = 0
    bridged[rows[0][1]:rows[1][0], 6:10, 8:12] = 1  # L1 and L2 joined through the disc
    named = name_series(bridged, SERIES, SPACING)
    assert np.array_equal(named, bridged)
    # a leaky prediction joins every body into one component (as sab_tiny's did on real spines): no
    # body can be told from the next, and the names stay as predicted
    leaky = truth * (truth != 6)
    leaky[rows[0][0]:rows[4][1], 6:10, 8:12] = np.where(leaky[rows[0][0]:rows[4][1], 6:10, 8:12] > 0,
                                                        leaky[rows[0][0]:rows[4][1], 6:10, 8:12], 3)
    assert np.array_equal(name_series(leaky, SERIES, SPACING), leaky)


@pytest.mark.parametrize("labels", [np.zeros((5, 5, 5), np.int16), np.full((5, 5, 5), 9, np.int16)])
def test_nothing_of_the_series_leaves_the_labels_as_they_are(labels):
    assert np.array_equal(name_series(labels, SERIES, SPACING), labels)
