"""sabnet: self-configuring bone segmentation in MRI with adapter-SAM and depth attention."""
from sabnet.version import __version__

__all__ = ["__version__"]
