"""XrayWorldModel: the Xray2Xray chest X-ray world model.

CT/CXR I/O (:mod:`.io`), projection geometry (:mod:`.geometry`), DRR rendering
(:mod:`.drr`), reconstruction (:mod:`.recon`) and phantoms (:mod:`.phantom`), all in LPS
millimetres. See DESIGN.md for the conventions.
"""
try:
    from importlib.metadata import PackageNotFoundError, version as _version
    __version__ = _version("XrayWorldModel")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

from .errors import InputError, XrayWorldModelError
from .geometry import ProjectionGeometry
from .radiograph import Radiograph
from .volume import Volume

__all__ = ["__version__", "InputError", "XrayWorldModelError", "ProjectionGeometry",
           "Radiograph", "Volume"]
