"""Reading and writing the package's images: CT volumes and chest radiographs.

``read_ct``/``write_volume`` handle NIfTI, NRRD, MetaImage and DICOM series (LPS, via
SimpleITK); ``read_cxr`` handles DICOM CR/DX, PNG and JPEG radiographs. All failures are
typed :mod:`XrayWorldModel.errors` exceptions naming the file.
"""
from .ct import (MultipleSeriesWarning, NonUniformSliceWarning, SkippedDicomWarning,
                 VOLUME_EXTENSIONS, read_ct, write_volume)
from .cxr import DEFAULT_CXR_SPACING_MM, DefaultSpacingWarning, read_cxr, write_radiograph

__all__ = ["read_ct", "write_volume", "read_cxr", "write_radiograph", "DEFAULT_CXR_SPACING_MM", "VOLUME_EXTENSIONS",
           "MultipleSeriesWarning", "NonUniformSliceWarning", "SkippedDicomWarning",
           "DefaultSpacingWarning"]
