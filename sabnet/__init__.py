"""sabnet: self-configuring bone segmentation in MRI with adapter-SAM and depth attention."""
import os as _os

# PyTorch's CPU build uses GNU OpenMP, whose threads spin while they wait. When anything else
# runs on the same cores (augmentation workers, preprocessing processes, a shared laptop), the
# spinning threads starve each other: a training step on 2 cores with one busy core took 9.4 s
# with spinning and 1.4 s without. Sleeping waits cost little when the cores are free. This must
# be set before torch is imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sabnet.version import __version__  # noqa: E402

__all__ = ["__version__"]
