"""Label transfer between two sequences of one exam: known motions are recovered, wrong pairs refused."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from sabnet.cli.transfer_labels import main
from sabnet.dataset.raw_dataset import RawDataset
from sabnet.errors import SabnetError
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import read_image, write_image
from sabnet.phantoms.cohort import make_phantom_dataset
from sabnet.registration import (DEFAULT_MIN_QUALITY, carry_labels, pairs_by_sequence, read_pairs, transfer_labels)
from sabnet.registration.label_transfer import coverage_of, dice_per_label
from sabnet.registration.rigid_affine import body_mask, flatten_bias
from sabnet.registration.slice_super_resolution import super_resolve_labels

# Paired subjects: 0 knee T1 -> T2, 1 hand T1 -> T2, 2 knee T2 -> PD; coronal/sagittal slices of 2.5-4 mm.
PHANTOMS = dict(locations=("knee", "hand"), sequences=("T1", "T2", "PD"), n_cases=3, seed=4, paired=True,
                planes=("coronal", "sagittal"), in_plane_size=128, n_slices=30, in_plane_spacing_mm=(1.0, 1.2),
                slice_spacing_mm=(2.5, 4.0))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    dataset = make_phantom_dataset(tmp_path_factory.mktemp("phantoms"), **PHANTOMS)
    truth = json.loads((dataset / "phantom_truth.json").read_text())
    return dataset, truth


def _image(dataset, case):
    return dataset / "imagesTr" / f"{case}_0000.nii.gz"


def _labels(dataset, case):
    return dataset / "labelsTr" / f"{case}.nii.gz"


def _true_transform(pair) -> sitk.AffineTransform:
    """Second scan's world -> first scan's world, from the truth record (x2 = R x1 + offset)."""
    matrix, offset = np.asarray(pair["transform"]["matrix"]), np.asarray(pair["transform"]["offset_mm"])
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix.T.ravel().tolist())
    transform.SetTranslation((-(matrix.T @ offset)).tolist())
    return transform


# ---- carrying labels through a transform (no registration) ------------------------------------

def _plate_labels():
    """A 20x40x40 label map on a 3 x 1 x 1 mm grid: a block (1) and a plate one slice thick (2)."""
    labels = np.zeros((20, 40, 40), np.uint8)
    labels[4:16, 5:20, 5:35] = 1
    labels[10, 25:35, 5:35] = 2
    geometry = Geometry((40, 40, 20), (1.0, 1.0, 3.0), (10.0, -5.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return labels, geometry


def test_carrying_labels_through_identity_gives_them_back_exactly():
    labels, geometry = _plate_labels()
    image = sitk.GetImageFromArray(labels)
    geometry.apply_to(image)
    carried = carry_labels(image, image, sitk.Transform(3, sitk.sitkIdentity))
    assert carried.dtype == np.uint8 and np.array_equal(carried, labels)


def test_carried_labels_keep_thin_bones_and_make_no_new_values():
    labels, geometry = _plate_labels()
    image = geometry.apply_to(sitk.GetImageFromArray(labels))
    # a fixed grid turned by 7 degrees about z and shifted by 0.4 voxels along each axis
    turn = sitk.Euler3DTransform((30.0, 15.0, 30.0), 0.0, 0.0, np.radians(7.0), (0.4, 0.4, 1.2))
    carried = carry_labels(image, image, turn)
    assert set(np.unique(carried)) == {0, 1, 2}
    # the plate, one 3 mm slice thin, is still there and about as large as before
    assert 0.8 < np.count_nonzero(carried == 2) / np.count_nonzero(labels == 2) < 1.2
    # it matches where nearest-neighbour resampling (no interpolation at all) puts the block
    nearest = sitk.GetArrayFromImage(sitk.Resample(image, image, turn, sitk.sitkNearestNeighbor, 0))
    assert dice_per_label(nearest, carried, np.ones_like(labels, bool))[1] > 0.95


def test_labels_outside_the_moving_field_of_view_become_background():
    labels, geometry = _plate_labels()
    image = geometry.apply_to(sitk.GetImageFromArray(labels))
    shift = sitk.TranslationTransform(3, (0.0, 0.0, 30.0))        # fixed z -> moving z + 30 mm: 10 slices out
    carried = carry_labels(image, image, shift)
    covered = coverage_of(image, image, shift)
    assert not covered[-5:].any() and covered[:5].all()
    assert not carried[~covered].any()
    assert np.array_equal(carried[:6], labels[10:16])              # what is covered moved by 10 slices


# ---- the intensity bias that registration removes first ---------------------------------------

def test_flatten_bias_removes_a_smooth_intensity_drift_and_keeps_the_contrast():
    """A body (1.0) holding a darker bone (0.4), times a drift of up to e^0.8 across the field of view."""
    k, j, i = np.meshgrid(np.linspace(-1, 1, 30), np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
    tissue = np.zeros(k.shape, np.float32)
    body = (i / 0.9) ** 2 + (j / 0.8) ** 2 < 1
    tissue[body] = 1.0
    tissue[body & ((i - 0.1) ** 2 + (j + 0.1) ** 2 < 0.3 ** 2)] = 0.4
    drift = np.exp(0.35 * i - 0.25 * j ** 2 + 0.2 * k)
    noise = np.random.default_rng(0).normal(0, 0.01, k.shape)
    image = sitk.GetImageFromArray((tissue * drift + noise).astype(np.float32))
    image.SetSpacing((1.5, 1.5, 3.0))

    flat = sitk.GetArrayFromImage(flatten_bias(image, body_mask(image)))
    raw = sitk.GetArrayFromImage(image)
    for value in (1.0, 0.4):                        # each tissue is even again (variation 0.13-0.21 before)
        inside = tissue == value
        assert flat[inside].std() / flat[inside].mean() < raw[inside].std() / raw[inside].mean() / 3
    assert abs(flat[tissue == 0.4].mean() / flat[tissue == 1.0].mean() - 0.4) < 0.03


# ---- one pair ----------------------------------------------------------------------------------

def _dice_and_ceiling(dataset, pair, carried):
    """Dice of `carried` against the second scan's true labels, and the ceiling: the Dice that
    carrying the labels with the true motion reaches on these thick slices. Both are counted where
    the moving scan covers the fixed one."""
    fixed_image = sitk.ReadImage(str(_image(dataset, pair["second"])))
    true = _true_transform(pair)
    covered = coverage_of(sitk.ReadImage(str(_image(dataset, pair["first"]))), fixed_image, true)
    reference = read_image(_labels(dataset, pair["second"]))[0]
    ceiling = carry_labels(sitk.ReadImage(str(_labels(dataset, pair["first"]))), fixed_image, true)
    return dice_per_label(reference, carried, covered), dice_per_label(reference, ceiling, covered)


def test_one_pair_recovers_a_known_motion_for_every_bone(phantoms, tmp_path, capsys):
    dataset, truth = phantoms
    pair = truth["pairs"][0]                              # knee, T1 -> T2, 4 mm sagittal slices
    out, tfm = tmp_path / "T2_labels.nii.gz", tmp_path / "T2_to_T1.tfm"
    code = main(["--fixed", str(_image(dataset, pair["second"])), "--moving", str(_image(dataset, pair["first"])),
                 "--labels", str(_labels(dataset, pair["first"])), "-o", str(out), "--save-transform", str(tfm),
                 "--truth", str(_labels(dataset, pair["second"]))])
    printed = capsys.readouterr().out
    assert code == 0 and "written to" in printed and "Dice against --truth" in printed

    carried, geometry = read_image(out)
    assert geometry.matches(read_image(_image(dataset, pair["second"]))[1])
    assert set(np.unique(carried)) <= set(np.unique(read_image(_labels(dataset, pair["first"]))[0]))
    dice, ceiling = _dice_and_ceiling(dataset, pair, carried)
    print("knee T1->T2 Dice", {k: round(v, 3) for k, v in dice.items()}, "ceiling",
          {k: round(v, 3) for k, v in ceiling.items()})
    assert dice["all"] >= 0.95
    for bone, value in dice.items():        # >= 0.95, or within 0.02 of what the true motion gives
        assert value >= min(0.95, ceiling[bone] - 0.02), (bone, value, ceiling[bone])

    # the saved transform is the registration: bone voxels land within 1 mm of where the truth puts them
    saved, true = sitk.ReadTransform(str(tfm)), _true_transform(pair)
    points = geometry.index_to_world(np.argwhere(carried > 0)[::40])
    errors_mm = [np.linalg.norm(np.subtract(saved.TransformPoint(p), true.TransformPoint(p))) for p in points.tolist()]
    assert np.mean(errors_mm) < 1.0


def test_the_affine_stage_takes_up_a_scale_difference_between_the_scans(phantoms, tmp_path):
    dataset, truth = phantoms
    pair = truth["pairs"][2]                              # knee, T2 -> PD, coronal
    # the moving scan's header says its voxels are 4 % larger (a gradient calibration error):
    # its bones now look 4 % larger in the world than in the fixed scan
    paths = []
    for source in (_image(dataset, pair["first"]), _labels(dataset, pair["first"])):
        array, geometry = read_image(source)
        larger = Geometry(geometry.size, [s * 1.04 for s in geometry.spacing_mm], geometry.origin_mm,
                          geometry.direction)
        paths.append(write_image(array, larger, tmp_path / source.name))
    result = transfer_labels(_image(dataset, pair["second"]), paths[0], paths[1], tmp_path / "out.nii.gz",
                             truth_labels=_labels(dataset, pair["second"]))
    assert result.written and result.registration.stage == "affine"
    scales = np.linalg.svd(np.reshape(result.registration.transform.GetMatrix(), (3, 3)), compute_uv=False)
    assert np.allclose(scales, 1.04, atol=0.01)        # fixed world -> moving world: 4 % larger
    assert result.dice["all"] >= 0.95


def test_a_try_that_lands_in_a_wrong_optimum_is_repeated_with_fresh_samples(phantoms, tmp_path, monkeypatch):
    import sabnet.registration.label_transfer as label_transfer
    from sabnet.registration.rigid_affine import Registration

    dataset, truth = phantoms
    pair = truth["pairs"][0]
    real, tries = label_transfer.register, []

    def register(*args, start, seed, **kwargs):
        tries.append((start, seed))
        found = real(*args, start=start, seed=seed, **kwargs)
        if len(tries) > 1:
            return found
        wrong = sitk.AffineTransform(found.transform)    # the first try stops 8 mm off, as a wrong optimum does
        wrong.SetTranslation(np.add(wrong.GetTranslation(), [0.0, 0.0, 8.0]).tolist())
        return Registration(wrong, found.stage, found.start, found.metric / 2)   # at a worse metric

    monkeypatch.setattr(label_transfer, "register", register)
    result = transfer_labels(_image(dataset, pair["second"]), _image(dataset, pair["first"]),
                             _labels(dataset, pair["first"]), tmp_path / "out.nii.gz",
                             truth_labels=_labels(dataset, pair["second"]))
    assert tries == [("scanner", 1), ("scanner", 2)] and result.tries == 2
    assert result.written and result.quality.value >= DEFAULT_MIN_QUALITY and result.dice["all"] >= 0.95


def test_a_flipped_image_is_refused_with_exit_status_2_and_nothing_written(phantoms, tmp_path, capsys):
    dataset, truth = phantoms
    pair = truth["pairs"][0]
    # the fixed scan's voxels upside down (head-foot) while its header stays: femur and tibia swap
    array, geometry = read_image(_image(dataset, pair["second"]))
    head_foot_axis = int(np.argmax(np.abs(geometry.axis_vectors[:, 2])))
    flipped = write_image(np.flip(array, head_foot_axis).copy(), geometry, tmp_path / "flipped.nii.gz")
    out = tmp_path / "labels.nii.gz"
    code = main(["--fixed", str(flipped), "--moving", str(_image(dataset, pair["first"])),
                 "--labels", str(_labels(dataset, pair["first"])), "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 2 and "refused: quality" in printed and "below the minimum" in printed
    assert "nothing written" in printed and not out.exists()
    quality = float(printed.split("quality ")[1].split()[0])
    assert quality < DEFAULT_MIN_QUALITY / 2


@pytest.mark.parametrize("change, message", [
    (lambda a: a + ["--labels", "missing.nii.gz"], "missing.nii.gz: file not found"),
    (lambda a: a + ["--labels", "{hand}"], "does not lie on the grid of"),
    (lambda a: a + ["--labels", "{knee}", "-d", "Dataset900_Phantoms"], "give either -d"),
    (lambda a: a, "missing --labels"),
])
def test_cli_errors_are_one_line_with_exit_status_1(phantoms, tmp_path, capsys, change, message):
    dataset, truth = phantoms
    pair = truth["pairs"][0]
    argv = ["--fixed", str(_image(dataset, pair["second"])), "--moving", str(_image(dataset, pair["first"])),
            "-o", str(tmp_path / "out.nii.gz")]
    argv = [a.format(hand=_labels(dataset, truth["pairs"][1]["first"]), knee=_labels(dataset, pair["first"]))
            for a in change(argv)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sab_transfer_labels: error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out.nii.gz").exists()


def test_empty_labels_are_an_error_that_names_the_file(phantoms, tmp_path):
    dataset, truth = phantoms
    pair = truth["pairs"][0]
    labels, geometry = read_image(_labels(dataset, pair["first"]))
    empty = write_image(np.zeros_like(labels), geometry, tmp_path / "empty.nii.gz")
    with pytest.raises(SabnetError, match="empty.nii.gz: label map is empty"):
        transfer_labels(_image(dataset, pair["second"]), _image(dataset, pair["first"]), empty, tmp_path / "o.nii.gz")


# ---- a cohort -------------------------------------------------------------------------------------

def test_pairs_by_sequence_matches_subjects_and_says_why_others_are_skipped(phantoms):
    dataset, _ = phantoms
    raw = RawDataset.load(dataset)
    pairs, skipped = pairs_by_sequence(raw, "t1", "T2")
    assert [(p.subject, p.moving, p.fixed) for p in pairs] == [
        ("subject_000", "phantom_000_1", "phantom_000_2"), ("subject_001", "phantom_001_1", "phantom_001_2")]
    # subject 2 was scanned in T2 and PD only
    assert [row["subject"] for row in skipped] == ["subject_002"]
    assert "0 annotated t1 case(s)" in skipped[0]["reason"]
    with pytest.raises(SabnetError, match="no case in sequence"):
        pairs_by_sequence(raw, "GRE", "STIR")


def test_read_pairs_checks_the_case_ids(phantoms, tmp_path):
    dataset, _ = phantoms
    raw = RawDataset.load(dataset)
    good = tmp_path / "pairs.json"
    good.write_text(json.dumps([{"moving": "phantom_000_1", "fixed": "phantom_000_2"}]))
    assert read_pairs(good, raw)[0].subject == "subject_000"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"moving": "phantom_000_1", "fixed": "phantom_999_2"}]))
    with pytest.raises(SabnetError, match="phantom_999_2"):
        read_pairs(bad, raw)
    bad.write_text(json.dumps({"phantom_000_1": "phantom_000_2"}))
    with pytest.raises(SabnetError, match="must hold a list"):
        read_pairs(bad, raw)


def test_cohort_writes_missing_labels_checks_existing_ones_and_refuses_wrong_pairs(phantoms, tmp_path, capsys):
    source, truth = phantoms
    dataset = tmp_path / "Dataset900_Phantoms"
    shutil.copytree(source, dataset)
    hand, knee = truth["pairs"][1], truth["pairs"][2]
    (dataset / "labelsTr" / f"{hand['second']}.nii.gz").unlink()          # the T2 hand scan is not annotated
    pairs = [{"moving": hand["first"], "fixed": hand["second"]},           # -> written
             {"moving": truth["pairs"][0]["first"], "fixed": knee["second"]},   # another subject's knee -> refused
             {"moving": knee["first"], "fixed": knee["second"]}]           # annotated twice -> checked
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    code = main(["-d", str(dataset), "--pairs", str(tmp_path / "pairs.json"),
                 "--save-transforms", str(tmp_path / "tfm"), "--rigid-only"])   # the motions are rigid; saves time
    printed = capsys.readouterr().out
    assert code == 2 and "1 written" in printed and "1 refused" in printed and "1 checked" in printed

    report = pd.read_csv(dataset / "label_transfer.csv")
    written, refused, checked = (report.iloc[i] for i in range(3))
    assert written.status == "written" and written.quality >= DEFAULT_MIN_QUALITY and written.stage == "rigid"
    assert refused.status == "refused" and refused.quality < DEFAULT_MIN_QUALITY
    assert "below the minimum" in refused.reason
    assert checked.status == "checked (labels exist)" and checked.quality >= DEFAULT_MIN_QUALITY
    assert checked.dice_all >= 0.95 and min(checked[c] for c in report.columns if c.startswith("dice_")) > 0.8
    assert written.refined_voxels > 0 and checked.refined_voxels > 0   # refined on the fixed image by default
    # labels that exist are never overwritten; the written ones are in labelsTr, with their transform
    assert np.array_equal(read_image(dataset / "labelsTr" / f"{knee['second']}.nii.gz")[0],
                          read_image(_labels(source, knee["second"]))[0])
    assert sorted(p.name for p in (tmp_path / "tfm").iterdir()) == [f"{hand['second']}.tfm"]
    carried = read_image(dataset / "labelsTr" / f"{hand['second']}.nii.gz")[0]
    # what was written is the refined map: it differs from the labels super-resolved on the moving
    # image and carried by the saved transform in exactly the voxels the report says refinement changed
    moving = sitk.ReadImage(str(_image(source, hand["first"])))
    fine = super_resolve_labels(sitk.ReadImage(str(_labels(source, hand["first"]))),
                                flatten_bias(moving, body_mask(moving)), seed=1)
    assert written.fine_slices == max(f // n for f, n in zip(fine.GetSize(), moving.GetSize())) >= 3
    as_carried = carry_labels(fine, sitk.ReadImage(str(_image(dataset, hand["second"]))),
                              sitk.ReadTransform(str(tmp_path / "tfm" / f"{hand['second']}.tfm")))
    assert np.count_nonzero(carried != as_carried) == written.refined_voxels > 0
    dice, ceiling = _dice_and_ceiling(source, hand, carried)
    print("hand T1->T2 Dice", {k: round(v, 3) for k, v in dice.items()}, "ceiling",
          {k: round(v, 3) for k, v in ceiling.items()})
    # fingers 6-8 mm across on 4 mm sagittal slices: carried alone with the true motion they reach
    # about 0.93; super-resolved on the T1 image first, the transfer beats that
    assert dice["all"] >= 0.95 and dice["all"] > ceiling["all"] + 0.01
    for bone, value in dice.items():
        assert value >= min(0.95, ceiling[bone] - 0.02), (bone, value, ceiling[bone])


def test_cohort_without_refinement_or_super_resolution_writes_the_labels_as_carried(phantoms, tmp_path, capsys):
    source, truth = phantoms
    knee = truth["pairs"][2]
    (tmp_path / "pairs.json").write_text(json.dumps([{"moving": knee["first"], "fixed": knee["second"]}]))
    report = tmp_path / "report.csv"
    assert main(["-d", str(source), "--pairs", str(tmp_path / "pairs.json"), "--rigid-only", "--no-refine",
                 "--no-super-resolution", "--report", str(report)]) == 0
    row = pd.read_csv(report).iloc[0]
    assert row.status == "checked (labels exist)" and row.refined_voxels == 0 and row.dice_all >= 0.95
    assert row.fine_slices == 1                  # carried slice by slice, as given
