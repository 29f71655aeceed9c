"""Carrying prompted objects to neighbouring slices, and a box for a lone click, on synthetic
'networks' (functions of the prompt) whose answers are known."""
import numpy as np

from sabnet.model.point_box_search import box_for_point
from sabnet.model.prompt_carrying import CarryRules, carry_objects, mask_box
from sabnet.model.slice_prompts import SlicePrompt

SHAPE = (64, 64)
ROWS, COLS = np.mgrid[:64, :64]


def disk(centre, radius):
    return ((ROWS - centre[0]) ** 2 + (COLS - centre[1]) ** 2 <= radius ** 2).astype(np.float32)


def ball_network(radius_of_slice, centre=(32, 32)):
    """A network that sees a ball: on slice t a disk of radius_of_slice(t), cut to the prompt's box."""
    calls = []

    def segment(t, prompt):
        calls.append((t, prompt))
        r0, c0, r1, c1 = prompt.box
        inside = (ROWS >= r0) & (ROWS <= r1) & (COLS >= c0) & (COLS <= c1)
        return disk(centre, radius_of_slice(t)) * inside

    return segment, calls


def test_an_object_is_carried_while_it_persists_and_no_further():
    radius = {t: r for t, r in enumerate([0, 0, 3, 6, 9, 11, 12, 11, 9, 6, 3, 0, 0, 0])}
    segment, calls = ball_network(lambda t: radius[t])
    seed = SlicePrompt(1, box=mask_box(disk((32, 32), 12) > 0, 0.1))
    objects = carry_objects({6: [seed]}, 14, segment, CarryRules(use_mask=False))
    carried = sorted(t for t, _ in objects)
    assert carried == [3, 4, 5, 6, 7, 8, 9]  # radius 3 is under a tenth of the seed's area: the walk stops
    assert all(p.mask is None for _, p in calls)
    for t in carried:
        assert np.array_equal(objects[(t, 1)] >= 0.5, disk((32, 32), radius[t]) > 0)  # boxes never cut the ball
    objects = carry_objects({6: [seed]}, 14, segment, CarryRules(use_mask=False, min_fraction=0.01))
    assert sorted(t for t, _ in objects) == list(range(2, 11))


def test_a_leak_into_a_neighbour_stops_the_walk():
    def segment(t, prompt):  # from slice 5 on, the object suddenly fills its box and more
        return disk((32, 32), 8) if t < 5 else disk((32, 32), 20)

    objects = carry_objects({2: [SlicePrompt(1, box=(20.0, 20.0, 44.0, 44.0))]}, 10, segment)
    assert sorted(t for t, _ in objects) == [0, 1, 2, 3, 4]


def test_two_prompted_slices_of_a_label_meet_halfway_and_keep_their_own_objects():
    segment, calls = ball_network(lambda t: 10)
    seeds = {2: [SlicePrompt(1, box=(20.0, 20.0, 44.0, 44.0))], 9: [SlicePrompt(1, box=(21.0, 21.0, 43.0, 43.0))]}
    objects = carry_objects(seeds, 12, segment)
    assert sorted(t for t, _ in objects) == list(range(12))
    walked = [t for t, p in calls if p.mask is not None]  # carried prompts pass the previous object by default
    assert sorted(walked) == sorted(set(range(12)) - {2, 9}) and len(walked) == len(set(walked))


def test_a_lone_click_gets_the_box_its_object_fits_in():
    def segment(prompt):  # an object of radius 9 at (30, 40), whatever the box cuts of it
        r0, c0, r1, c1 = prompt.box
        inside = (ROWS >= r0) & (ROWS <= r1) & (COLS >= c0) & (COLS <= c1)
        return disk((30, 40), 9) * inside

    click = SlicePrompt(3, points=np.array([[30.0, 38.0]]), point_labels=np.array([1]))
    boxed = box_for_point(click, SHAPE, segment)
    r0, c0, r1, c1 = boxed.box
    assert boxed.label == 3 and np.array_equal(boxed.points, click.points)
    assert r0 < 21 and c0 < 31 and r1 > 39 and c1 > 49  # holds the whole object
    assert r1 - r0 < 30 and c1 - c0 < 30  # and not much more
    box = SlicePrompt(3, box=(1.0, 2.0, 3.0, 4.0))
    assert box_for_point(box, SHAPE, segment) is box  # prompts with a box are left alone
    nowhere = box_for_point(SlicePrompt(3, points=np.array([[5.0, 5.0]]), point_labels=np.array([1])), SHAPE, segment)
    assert nowhere.box is None  # no object holds the click: nothing to go on


def test_a_walk_stops_where_the_object_leaves_the_seed_bones_signal():
    # the network keeps finding a disk on every slice, but only slices 3..9 show the bone's signal:
    # beyond them the box has slid into another tissue of another intensity
    segment, _ = ball_network(lambda t: 10)
    rng = np.random.default_rng(0)
    image = rng.normal(0.2, 0.02, (14, *SHAPE)).astype(np.float32)
    bone = disk((32, 32), 10) > 0
    for t in range(14):  # darker before slice 3, brighter after slice 9
        image[t][bone] = rng.normal(0.3 if t < 3 else 0.6 if t <= 9 else 0.9, 0.03, bone.sum())
    seed = {6: [SlicePrompt(1, box=(20.0, 20.0, 44.0, 44.0))]}
    rules = CarryRules(use_mask=False, max_intensity_shift=2.0)
    assert sorted(t for t, _ in carry_objects(seed, 14, segment, rules, image)) == list(range(3, 10))
    # without the image, or with the test off, the same walk runs to both ends of the volume
    assert sorted(t for t, _ in carry_objects(seed, 14, segment, rules)) == list(range(14))
    off = CarryRules(use_mask=False)
    assert sorted(t for t, _ in carry_objects(seed, 14, segment, off, image)) == list(range(14))


def test_a_bone_of_constant_signal_is_carried_through_small_changes():
    # a phantom bone without texture (IQR 0): the range is floored at 2 % of the slice's span, so a
    # change of 1 % of it does not stop the walk, a change of 10 % does
    segment, _ = ball_network(lambda t: 10)
    image = np.zeros((14, *SHAPE), np.float32)
    bone = disk((32, 32), 10) > 0
    for t in range(14):
        image[t][bone] = 1.0 + 0.01 * (t % 2) if t <= 10 else 1.1
    rules = CarryRules(use_mask=False, max_intensity_shift=2.0)
    objects = carry_objects({6: [SlicePrompt(1, box=(20.0, 20.0, 44.0, 44.0))]}, 14, segment, rules, image)
    assert sorted(t for t, _ in objects) == list(range(11))


def test_a_walk_that_creeps_into_a_touching_neighbour_is_held_to_the_seed_bones_box():
    # from slice 8 on a structure of the same signal touches the bone on its right (as the sacrum and
    # ilium touch L5): each carried box, grown by its margin, takes a little more of it, slice after
    # slice; bound to the seed object's box (grown by a fifth), the walk keeps to the bone
    bone = disk((32, 32), 10)
    neighbour = ((COLS >= 42) & (ROWS >= 12) & (ROWS <= 52)).astype(np.float32)

    def segment(t, prompt):
        r0, c0, r1, c1 = prompt.box
        inside = (ROWS >= r0) & (ROWS <= r1) & (COLS >= c0) & (COLS <= c1)
        return np.maximum(bone, neighbour if t >= 8 else 0) * inside

    seed = {4: [SlicePrompt(1, box=(20.0, 20.0, 44.0, 44.0))]}
    free = carry_objects(seed, 16, segment, CarryRules(use_mask=False))
    assert np.flatnonzero((free[(15, 1)] >= 0.5).any(axis=0)).max() > 55  # unbound, it walks off into the neighbour
    bound = carry_objects(seed, 16, segment, CarryRules(use_mask=False, seed_box_margin=0.2))
    assert sorted(t for t, _ in bound) == list(range(16))  # the bone itself is carried to both ends
    for t in range(16):
        cols = np.flatnonzero((bound[(t, 1)] >= 0.5).any(axis=0))
        assert cols.min() >= 17 and cols.max() <= 47  # the seed object's box, cols 22..42, grown by 5 px a side
        assert (bound[(t, 1)] * bone).sum() == bone.sum()  # and none of the bone is lost


def test_bones_stacked_along_the_slice_axis_split_halfway_between_their_seeds():
    # vertebrae in axial slices: each slice shows one body at the same place, and each walk would run
    # on through its neighbours; where two labels' objects cover one place, the nearer seed keeps it
    segment, _ = ball_network(lambda t: 10)
    seeds = {3: [SlicePrompt(1, box=(20.0, 20.0, 44.0, 44.0))], 10: [SlicePrompt(2, box=(20.0, 20.0, 44.0, 44.0))]}
    objects = carry_objects(seeds, 14, segment, CarryRules(use_mask=False))
    assert sorted(t for t, label in objects if label == 1) == list(range(7))
    assert sorted(t for t, label in objects if label == 2) == list(range(7, 14))
    # objects of two labels side by side on the same slices both stay
    left, right = disk((32, 16), 8), disk((32, 48), 8)

    def two_bones(t, prompt):
        r0, c0, r1, c1 = prompt.box
        inside = (ROWS >= r0) & (ROWS <= r1) & (COLS >= c0) & (COLS <= c1)
        return np.maximum(left, right) * inside

    seeds = {3: [SlicePrompt(1, box=mask_box(left > 0, 0.1))], 10: [SlicePrompt(2, box=mask_box(right > 0, 0.1))]}
    objects = carry_objects(seeds, 14, two_bones, CarryRules(use_mask=False))
    assert {t for t, label in objects if label == 1} == {t for t, label in objects if label == 2} == set(range(14))
