"""MRML nodes <-> XrayWorldModel types. The only place where RAS meets LPS.

XrayWorldModel works in LPS millimetres (DICOM/ITK); Slicer's world is RAS. The two differ
by a flip of the first two axes, ``RAS = diag(-1, -1, 1) @ LPS``, and every conversion in the
extension goes through :data:`LPS_TO_RAS` here, so the flip is written exactly once.

Array orders: a :class:`~XrayWorldModel.volume.Volume` holds ``array[i, j, k]`` in ITK index
order (x fastest on disk); a volume node's ``vtkImageData`` stores x fastest too, which numpy
sees as ``[k, j, i]``. A :class:`~XrayWorldModel.radiograph.Radiograph` is ``image[row,
column]``; as a single-slice node its columns run along IJK ``i`` and its rows along ``j``.

Qt-free: needs only VTK/MRML (``slicer-core``), numpy and XrayWorldModel.
"""
from __future__ import annotations

import json
import numpy as np
import vtk
from vtk.util import numpy_support

from XrayWorldModel.errors import InputError, NotARadiographError, NotAVolumeError
from XrayWorldModel.radiograph import INPUT_METADATA_KEYS, Radiograph
from XrayWorldModel.volume import Volume

#: 4x4 homogeneous flip between LPS and RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_TO_LPS = LPS_TO_RAS

#: Node attribute names written by the extension.
ATTR_PREFIX = "Xray2Xray."
ATTR_VIEW_POSITION = ATTR_PREFIX + "ViewPosition"
ATTR_PIXEL_SPACING = ATTR_PREFIX + "PixelSpacing"          # "row\\column" in mm
ATTR_SPACING_IS_DEFAULT = ATTR_PREFIX + "SpacingIsDefault"
ATTR_METADATA = ATTR_PREFIX + "Metadata"      # JSON of Radiograph.metadata's INPUT_METADATA_KEYS


# ----------------------------------------------------------------------------- matrices
def lpsToRas(matrix) -> np.ndarray:
    """A 4x4 matrix that maps into LPS, turned into one that maps into RAS."""
    return LPS_TO_RAS @ np.asarray(matrix, dtype=np.float64)


def rasToLps(matrix) -> np.ndarray:
    """A 4x4 matrix that maps into RAS, turned into one that maps into LPS."""
    return RAS_TO_LPS @ np.asarray(matrix, dtype=np.float64)


def pointLpsToRas(point) -> np.ndarray:
    p = np.asarray(point, dtype=np.float64)
    return p * np.array([-1.0, -1.0, 1.0])


def pointRasToLps(point) -> np.ndarray:
    return pointLpsToRas(point)


def arrayFromVTKMatrix(vmatrix) -> np.ndarray:
    return np.array([[vmatrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def vtkMatrixFromArray(array) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    a = np.asarray(array, dtype=np.float64)
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def ijkToRas(volumeNode) -> np.ndarray:
    """The node's own IJK-to-RAS (without parent transforms) as a numpy 4x4."""
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return arrayFromVTKMatrix(m)


def worldIjkToRas(volumeNode) -> np.ndarray:
    """IJK-to-RAS in world coordinates: the node's matrix under its (linear) parent transforms.

    Raises :class:`InputError` for a node under a non-linear transform (harden it first).
    """
    m = ijkToRas(volumeNode)
    parent = volumeNode.GetParentTransformNode()
    if parent is None:
        return m
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"volume '{volumeNode.GetName()}' is under a non-linear transform "
                         f"('{parent.GetName()}'); harden the transform first")
    toWorld = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(toWorld)
    return arrayFromVTKMatrix(toWorld) @ m


def setIjkToRas(volumeNode, matrix) -> None:
    volumeNode.SetIJKToRASMatrix(vtkMatrixFromArray(matrix))


# ----------------------------------------------------------------------------- checks
def _nodeName(node) -> str:
    return f"'{node.GetName()}'" if node is not None and node.GetName() else "the node"


def requireVolumeNode(node, what: str = "volume"):
    """The node, or a clear :class:`InputError` when it is not a volume node with voxels."""
    if node is None:
        raise InputError(f"no {what} node given (got None)")
    if not hasattr(node, "IsA") or not node.IsA("vtkMRMLVolumeNode"):
        cls = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
        raise InputError(f"{_nodeName(node) if hasattr(node, 'GetName') else 'the input'} is a "
                         f"{cls}, not a volume node; a {what} volume node is needed")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume node {_nodeName(node)} holds no image data")
    if min(image.GetDimensions()) < 1 or image.GetNumberOfPoints() == 0:
        raise InputError(f"volume node {_nodeName(node)} is empty "
                         f"(dimensions {image.GetDimensions()})")
    return node


def requireScalarVolumeNode(node, what: str = "CT"):
    requireVolumeNode(node, what)
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{_nodeName(node)} is a {node.GetClassName()}; a scalar volume node "
                         f"({what}) is needed")
    comps = node.GetImageData().GetNumberOfScalarComponents()
    if comps != 1:
        raise InputError(f"{_nodeName(node)} has {comps} components per voxel; a {what} has one")
    return node


def isSingleSlice(volumeNode) -> bool:
    dims = volumeNode.GetImageData().GetDimensions()
    return sum(d > 1 for d in dims) <= 2


# ----------------------------------------------------------------------------- arrays
def _arrayKJI(volumeNode) -> np.ndarray:
    """Voxels as numpy [k, j, i] (components last when more than one); a view of VTK memory."""
    image = volumeNode.GetImageData()
    scalars = image.GetPointData().GetScalars()
    dims = image.GetDimensions()
    arr = numpy_support.vtk_to_numpy(scalars)
    comps = scalars.GetNumberOfComponents()
    shape = tuple(reversed(dims)) + ((comps,) if comps > 1 else ())
    return arr.reshape(shape)


def _vtkImageFromArrayKJI(arrayKJI: np.ndarray) -> vtk.vtkImageData:
    """A vtkImageData (origin 0, spacing 1, identity direction) holding a deep copy."""
    a = np.ascontiguousarray(arrayKJI)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    elif a.dtype == np.float16:
        a = a.astype(np.float32)
    elif a.dtype.kind not in "iuf":
        raise InputError(f"cannot make a volume node from an array of dtype {a.dtype}")
    if a.ndim != 3:
        raise InputError(f"expected a 3D array, got shape {a.shape}")
    image = vtk.vtkImageData()
    image.SetDimensions(a.shape[2], a.shape[1], a.shape[0])
    vtkArray = numpy_support.numpy_to_vtk(a.ravel(), deep=True,
                                          array_type=numpy_support.get_vtk_array_type(a.dtype))
    vtkArray.SetName("ImageScalars")
    image.GetPointData().SetScalars(vtkArray)
    return image


def _newScalarVolumeNode(scene, name: str):
    from slicer import vtkMRMLScalarVolumeNode  # slicer-core or Slicer
    node = vtkMRMLScalarVolumeNode()
    node.SetName(scene.GenerateUniqueName(name) if scene is not None else name)
    return node


def _addToScene(scene, node, createDisplay: bool = True):
    if scene is None:
        return node
    scene.AddNode(node)
    if createDisplay:
        node.CreateDefaultDisplayNodes()
    return node


# ----------------------------------------------------------------------------- volumes
def volumeNodeToVolume(volumeNode, copy: bool = True) -> Volume:
    """A scalar volume node as a :class:`Volume` (array in i, j, k order; index-to-LPS affine).

    Parent linear transforms are applied to the affine (the volume is where Slicer shows it).
    ``copy=False`` returns a view of the node's memory: only while the node lives.
    """
    requireScalarVolumeNode(volumeNode, "volume")
    arr = _arrayKJI(volumeNode).transpose(2, 1, 0)
    if copy:
        arr = arr.copy()
    affine = rasToLps(worldIjkToRas(volumeNode))
    return Volume(arr, affine, {"name": volumeNode.GetName(), "source": "slicer",
                                "node_id": volumeNode.GetID()})


def volumeToVolumeNode(volume: Volume, scene=None, name: str = "Volume", node=None):
    """A :class:`Volume` as a scalar volume node (added to ``scene`` unless ``node`` is given
    or ``scene`` is None). With ``node``, that node's voxels and geometry are replaced."""
    if not isinstance(volume, Volume):
        raise InputError(f"expected an XrayWorldModel Volume, got {type(volume).__name__}")
    image = _vtkImageFromArrayKJI(np.asarray(volume.array).transpose(2, 1, 0))
    target = node if node is not None else _newScalarVolumeNode(scene, name)
    target.SetAndObserveImageData(image)
    setIjkToRas(target, lpsToRas(volume.affine))
    if node is None:
        _addToScene(scene, target)
    return target


# ----------------------------------------------------------------------------- radiographs
def _radiographAxes(volumeNode):
    """(column axis, row axis) among IJK 0, 1, 2 for a single-slice node."""
    dims = volumeNode.GetImageData().GetDimensions()
    inPlane = [a for a in range(3) if dims[a] > 1]
    if len(inPlane) > 2:
        raise NotARadiographError(
            f"{_nodeName(volumeNode)} is a 3D volume ({dims[0]}x{dims[1]}x{dims[2]} voxels); a "
            "radiograph is a single-slice image")
    if len(inPlane) < 2:   # a line or a point: still take the first two axes
        inPlane = [a for a in range(3) if a not in inPlane][: 2 - len(inPlane)] + inPlane
        inPlane.sort()
    return inPlane[0], inPlane[1]


def volumeNodeToRadiograph(volumeNode) -> Radiograph:
    """A single-slice volume node (a loaded DICOM CR/DX, PNG, or a DRR) as a
    :class:`Radiograph`: image[row, column], spacing (row, column) in mm.

    Rows run along the node's IJK ``j`` and columns along ``i`` (for a slice whose constant
    axis is not ``k``, along the lower and higher remaining axis). Colour images are
    converted to grey (mean of the first three components).
    """
    requireVolumeNode(volumeNode, "radiograph")
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise NotARadiographError(f"{_nodeName(volumeNode)} is a label map, not a radiograph")
    colAxis, rowAxis = _radiographAxes(volumeNode)
    arr = _arrayKJI(volumeNode)
    if arr.ndim == 4:
        arr = arr[..., :3].astype(np.float32).mean(axis=-1)
    ijk = arr.transpose(2, 1, 0)           # [i, j, k]
    sliceAxis = 3 - colAxis - rowAxis
    ijk = np.take(ijk, 0, axis=sliceAxis)  # the two remaining axes keep their order
    image = np.ascontiguousarray(ijk.T, dtype=np.float32)   # [row, column]
    if not np.all(np.isfinite(image)):
        raise InputError(f"radiograph {_nodeName(volumeNode)} holds NaN or infinite values")
    m = worldIjkToRas(volumeNode)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    attrSpacing = volumeNode.GetAttribute(ATTR_PIXEL_SPACING)
    rowSpacing, colSpacing = float(spacing[rowAxis]), float(spacing[colAxis])
    if attrSpacing:
        try:
            rowSpacing, colSpacing = (float(v) for v in attrSpacing.split("\\"))
        except ValueError:
            pass
    metadata = {"name": volumeNode.GetName(), "source": "slicer", "node_id": volumeNode.GetID(),
                "ijk_to_lps": rasToLps(m).tolist()}
    extra = volumeNode.GetAttribute(ATTR_METADATA)
    if extra:
        try:
            metadata.update(json.loads(extra))
        except ValueError:
            pass
    return Radiograph(image=image, spacing=(rowSpacing, colSpacing),
                      view_position=volumeNode.GetAttribute(ATTR_VIEW_POSITION) or None,
                      metadata=metadata,
                      spacing_is_default=volumeNode.GetAttribute(ATTR_SPACING_IS_DEFAULT) == "1")


def radiographIjkToLps(radiograph: Radiograph, detectorAffine=None) -> np.ndarray:
    """Index-to-LPS for a radiograph node: ``detectorAffine`` (column, row, 0 -> LPS, as
    :meth:`ProjectionGeometry.detector_affine`) or, by default, a PA detector (columns towards
    the patient's left, rows towards the feet) centred on the LPS origin."""
    if detectorAffine is not None:
        return np.asarray(detectorAffine, dtype=np.float64)
    rows, cols = radiograph.shape
    dv, du = radiograph.spacing
    a = np.eye(4)
    a[:3, 0] = (du, 0.0, 0.0)          # u = +L
    a[:3, 1] = (0.0, 0.0, -dv)         # v = -S (inferior)
    a[:3, 2] = (0.0, -1.0, 0.0)        # away from the source (anterior for PA), unit step
    a[:3, 3] = -(cols - 1) / 2 * a[:3, 0] - (rows - 1) / 2 * a[:3, 1]
    return a


def radiographToVolumeNode(radiograph: Radiograph, scene=None, name: str = "Radiograph",
                           detectorAffine=None, node=None):
    """A :class:`Radiograph` as a single-slice scalar volume node whose pixels lie on the
    detector plane given by ``detectorAffine`` (LPS; see :func:`radiographIjkToLps`)."""
    if not isinstance(radiograph, Radiograph):
        raise InputError(f"expected an XrayWorldModel Radiograph, got {type(radiograph).__name__}")
    image = _vtkImageFromArrayKJI(np.asarray(radiograph.image, dtype=np.float32)[None])
    target = node if node is not None else _newScalarVolumeNode(scene, name)
    target.SetAndObserveImageData(image)
    setIjkToRas(target, lpsToRas(radiographIjkToLps(radiograph, detectorAffine)))
    target.SetAttribute(ATTR_PIXEL_SPACING, f"{radiograph.spacing[0]:g}\\{radiograph.spacing[1]:g}")
    if radiograph.view_position:
        target.SetAttribute(ATTR_VIEW_POSITION, str(radiograph.view_position))
    target.SetAttribute(ATTR_SPACING_IS_DEFAULT, "1" if radiograph.spacing_is_default else "0")
    kept = {k: radiograph.metadata[k] for k in INPUT_METADATA_KEYS
            if radiograph.metadata.get(k) is not None}
    target.SetAttribute(ATTR_METADATA, json.dumps(kept))
    if node is None:
        _addToScene(scene, target)
    return target


def requireCTNode(node):
    """A scalar 3D volume node usable as a CT, else a clear error (2D nodes included)."""
    requireScalarVolumeNode(node, "CT")
    dims = node.GetImageData().GetDimensions()
    if sum(d > 1 for d in dims) < 3:
        raise NotAVolumeError(f"{_nodeName(node)} is a single-slice image "
                              f"({dims[0]}x{dims[1]}x{dims[2]} voxels), not a CT volume")
    return node


def nodeCenterRas(volumeNode) -> np.ndarray:
    """RAS position of the centre of the node's voxel grid (voxel centres, not edges)."""
    dims = np.asarray(volumeNode.GetImageData().GetDimensions(), dtype=np.float64)
    m = worldIjkToRas(volumeNode)
    return m[:3, :3] @ ((dims - 1) / 2) + m[:3, 3]
