"""XrayWorldModel: the Xray2Xray chest X-ray world model.

CT/CXR I/O (:mod:`.io`), projection geometry (:mod:`.geometry`), DRR rendering
(:mod:`.drr`), reconstruction (:mod:`.recon`) and phantoms (:mod:`.phantom`), all in LPS
millimetres. See DESIGN.md for the conventions.
"""
from .version import __version__
from .errors import InputError, XrayWorldModelError
from .geometry import ProjectionGeometry
from .radiograph import Radiograph
from .volume import Volume

__all__ = ["__version__", "InputError", "XrayWorldModelError", "ProjectionGeometry",
           "Radiograph", "Volume"]
