"""sab_make_phantoms writes a raw dataset that the rest of sabnet reads."""
from sabnet.cli.make_phantoms import main
from sabnet.dataset.raw_dataset import RawDataset


def test_cli_writes_a_dataset_raw_dataset_reads(tmp_path, capsys):
    code = main([str(tmp_path), "--locations", "knee", "lumbar_spine", "--sequences", "T1", "STIR", "--cases", "4",
                 "--test-cases", "1", "--seed", "3", "--size", "32", "--slices", "6", "--in-plane-spacing", "3", "4",
                 "--name", "Dataset902_Demo", "--workers", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'Dataset902_Demo'}" in out
    assert "5 volumes (4 training, 1 test)" in out and "locations: knee 3, lumbar_spine 2" in out
    raw = RawDataset.load(tmp_path / "Dataset902_Demo")
    assert raw.num_training == 4 and list(raw.foreground_labels) == ["femur", "tibia", "fibula", "patella",
                                                                     "L1", "L2", "L3", "L4", "L5"]
    cases = raw.training_cases()
    assert [(c.location, c.sequence) for c in cases] == [("knee", "T1"), ("lumbar_spine", "T1"), ("knee", "STIR"),
                                                         ("lumbar_spine", "STIR")]
    assert all(f.is_file() for c in cases for f in c.image_files + (c.label_file,))
    assert raw.test_cases()[0].location == "knee" and raw.test_cases()[0].subject == "subject_004"


def test_cli_paired_and_bad_flags(tmp_path, capsys):
    assert main([str(tmp_path), "--locations", "hip", "--sequences", "T1", "T2", "--cases", "1", "--paired",
                 "--size", "24", "--slices", "4", "--in-plane-spacing", "4", "4", "--workers", "1"]) == 0
    raw = RawDataset.load(tmp_path / "Dataset900_Phantoms")
    assert [(c.case_id, c.sequence, c.subject) for c in raw.training_cases()] == [
        ("phantom_000_1", "T1", "subject_000"), ("phantom_000_2", "T2", "subject_000")]
    capsys.readouterr()
    assert main([str(tmp_path), "--name", "phantoms", "--cases", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sab_make_phantoms: error: dataset name 'phantoms'") and "\n" not in err
