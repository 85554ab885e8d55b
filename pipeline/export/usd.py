"""USDZ writer (usd-core) for one textured scan mesh, for AR Quick Look and Reality Composer.

Conventions: `upAxis = Y`, `metersPerUnit = 1` (positions in metres, as given); right-handed, counter-clockwise
front faces (USD's default orientation, as glTF). The `st` primvar has (0, 0) at the image's BOTTOM-left (USD,
like OBJ), so it is given here as v = 1 - v_gltf by the caller. The material is a UsdPreviewSurface whose
`diffuseColor` reads a UsdUVTexture of the embedded image (through a UsdPrimvarReader_float2 on `st`);
metallic 0, roughness 1. The package is written with `UsdUtils.CreateNewARKitUsdzPackage`, which embeds the
texture beside the layer.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..artifacts import atomic_output


def write_usdz(path: Path, vertices: np.ndarray, triangles: np.ndarray, st: np.ndarray, normals: np.ndarray,
               texture: bytes, texture_name: str = "texture.jpg", name: str = "scan") -> Path:
    """Write mesh.usdz atomically.

    Args:
        vertices: (V,3) positions, metres. triangles: (T,3) indices, counter-clockwise.
        st: (V,2) texture coordinates, USD convention ((0,0) = image bottom-left).
        normals: (V,3) unit normals. texture: encoded image bytes (JPEG or PNG, by texture_name's suffix).
    """
    from pxr import Gf, Sdf, Usd, UsdGeom, UsdShade, UsdUtils, Vt

    with tempfile.TemporaryDirectory(prefix="promptmesh-usd-") as tmp:
        layer_path = Path(tmp) / f"{name}.usdc"
        (Path(tmp) / texture_name).write_bytes(texture)
        stage = Usd.Stage.CreateNew(str(layer_path))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        root = UsdGeom.Xform.Define(stage, "/Root")
        stage.SetDefaultPrim(root.GetPrim())
        Usd.ModelAPI(root.GetPrim()).SetKind("component")

        mesh = UsdGeom.Mesh.Define(stage, f"/Root/{name}")
        points = np.ascontiguousarray(vertices, np.float32)
        mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(points))
        mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(triangles), 3, np.int32)))
        mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(np.ascontiguousarray(triangles, np.int32).ravel()))
        mesh.CreateExtentAttr([Gf.Vec3f(*points.min(0).tolist()), Gf.Vec3f(*points.max(0).tolist())])
        mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        mesh.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
        mesh.CreateDoubleSidedAttr(False)
        mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(normals, np.float32)))
        mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        st_primvar = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                             UsdGeom.Tokens.vertex)
        st_primvar.Set(Vt.Vec2fArray.FromNumpy(np.ascontiguousarray(st, np.float32)))

        material = UsdShade.Material.Define(stage, "/Root/Materials/scan")
        surface = UsdShade.Shader.Define(stage, "/Root/Materials/scan/PreviewSurface")
        surface.CreateIdAttr("UsdPreviewSurface")
        surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
        surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(1.0)
        reader = UsdShade.Shader.Define(stage, "/Root/Materials/scan/stReader")
        reader.CreateIdAttr("UsdPrimvarReader_float2")
        st_name = material.CreateInput("frame:stPrimvarName", Sdf.ValueTypeNames.String)
        st_name.Set("st")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).ConnectToSource(st_name)
        image = UsdShade.Shader.Define(stage, "/Root/Materials/scan/diffuseTexture")
        image.CreateIdAttr("UsdUVTexture")
        image.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(texture_name)
        image.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
        image.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("clamp")
        image.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("clamp")
        image.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
        rgb = image.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
        surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(rgb)
        material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
        UsdShade.MaterialBindingAPI.Apply(mesh.GetPrim()).Bind(material)
        stage.GetRootLayer().Save()

        with atomic_output(Path(path)) as tmp_usdz:
            if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(layer_path)), str(tmp_usdz)):
                raise RuntimeError(f"usd-core could not package {path}")
    return Path(path)
