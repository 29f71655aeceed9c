"""Reading and writing images, JSON and arrays with exact geometry and atomic writes."""
import SimpleITK as _sitk

# ITK's warnings (e.g. "non uniform sampling" of a DICOM series within 0.0002 mm) go to stderr
# as multi-line blocks that users take for errors; sabnet checks geometry itself.
_sitk.ProcessObject_SetGlobalWarningDisplay(False)
