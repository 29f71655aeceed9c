"""Planning and preprocessing load no network code: neither torch nor segment_anything nor sabnet's
model, so that `sab_plan_and_preprocess` does not pay for them (they were most of its start-up)."""
import subprocess
import sys

SCRIPT = """
import sys
from pathlib import Path
from sabnet.phantoms.cohort import make_phantom_dataset
from sabnet.paths import Roots, resolve_dataset
from sabnet.cli.plan_and_preprocess import main
root = Path(sys.argv[1])
raw = make_phantom_dataset(root / "raw", locations=("knee",), n_cases=3, seed=2, planes=("sagittal",),
                           in_plane_spacing_mm=(0.8, 0.8), slice_spacing_mm=(3.0, 3.0), in_plane_size=96, n_slices=6,
                           permute_axes=False, dataset_name="Dataset981_Light")
assert main(["-d", str(raw), "-np", "1"]) == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "segment_anything", "torchvision")
               or m.startswith(("sabnet.model.sab_model", "sabnet.model.tiny_vit", "sabnet.model.checkpoint")))
print("HEAVY", heavy[:5])
"""


def test_planning_and_preprocessing_import_no_network_code(tmp_path):
    env_root = tmp_path / "home"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, encoding="utf-8",
                            errors="replace", env={"SABNET_HOME": str(env_root), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stdout, result.stdout[-2000:]
