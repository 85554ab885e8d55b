"""Synthetic rooms, ray-cast rendering and an iPhone-LiDAR simulator (no I/O; arrays in, arrays out).

Conventions (the promptmesh ones, see pipeline/geometry.py):
- World: metres, y up (gravity-aligned, ARKit-like), floor at y = 0.
- `camera_to_world` (4,4) float64 with OpenCV camera axes: x right, y down, z forward.
- `K` (3,3) pixels at the size of the image it belongs to; pixel centres at integer (u, v).
- Depth is z-depth in metres (distance along the camera's optical axis), float32, 0 = no value.

Rendering: rays are built with a camera-frame direction (x, y, 1), i.e. *not* unit length, so Open3D's
`t_hit` (measured in units of the direction's length) is already the z-depth. RGB is procedural texture
(evaluated at the world hit point) times Lambertian shading from one point light plus ambient, with a
Blinn-Phong highlight on glossy materials: crease and occlusion edges show in RGB (they correlate with
depth edges) and texture edges (tiles, mosaics, stripes) show where depth is smooth.

Glass (the `hard` scene's pane) is part of the ground truth: it is in the GT mesh and in the GT depth
(a laser scan records it), the RGB sees through it (tinted), and the simulated LiDAR gets no return from
it (depth 0, confidence 0) — as a real iPhone LiDAR on clear glass.

LiDAR simulation follows Prompt Depth Anything's recipe for synthetic data: GT depth sampled at sparse
anchors (the phone's ~24x32 dot grid), interpolated back to 256x192, so depth edges smear and flying
pixels appear between foreground and background; plus range- and incidence-dependent noise, dropouts on
dark surfaces and beyond ~5 m, and ARKit-like confidence (0 near depth discontinuities, on no-return and
far pixels; 1 at moderate distance from edges, at grazing angles, on dark surfaces and at mid range).

References: Lin et al., "Prompting Depth Anything for 4K Resolution Accurate Metric Depth Estimation",
CVPR 2025 (sparse anchor interpolation for simulated LiDAR).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import open3d as o3d

from pipeline.geometry import intrinsics_matrix, scale_intrinsics

LIDAR_LONG_SIDE_PX = 256
"""ARKit sceneDepth is 256x192 for the 4:3 camera formats."""


# ----------------------------------------------------------------------------- scene description
@dataclass(frozen=True)
class Material:
    name: str
    colour: tuple[float, float, float]
    """Base albedo, RGB in [0, 1]."""
    colour2: tuple[float, float, float] | None = None
    """Second albedo for patterned textures (None = plain)."""
    texture: str = "plain"
    """plain | checker (tiles) | mosaic (random cell colours) | stripes (vertical) | grain (wood-like)."""
    texture_scale_m: float = 0.5
    """Cell / stripe / tile size, metres."""
    specular: float = 0.0
    """Blinn-Phong highlight strength (0 = matte)."""
    lidar_return: float = 1.0
    """Probability that a LiDAR dot on this material returns (1 ordinary, < 1 dark, 0 glass)."""
    glass: bool = False
    """Transparent in RGB, present in GT depth / GT mesh, no LiDAR return."""


@dataclass
class Scene:
    """A triangle soup with one material per triangle, plus where a handheld camera may walk."""

    name: str
    vertices: np.ndarray
    """(V,3) float64 world coordinates, metres."""
    triangles: np.ndarray
    """(T,3) int32 vertex indices."""
    triangle_material: np.ndarray
    """(T,) int32 index into `materials`."""
    materials: list[Material]
    light_position: np.ndarray
    """(3,) point light, world metres."""
    walk_centre_xz: tuple[float, float]
    walk_radii_m: tuple[float, float]
    """Semi-axes (x, z) of the ellipse the camera walks around, metres."""
    eye_height_m: float = 1.45
    look_height_m: float = 0.85
    drift_m: float = 0.0
    """Camera-centre error of the written (ARKit-like) poses at the end of the capture, metres."""
    drift_deg: float = 0.0
    """Orientation error of the written poses at the end of the capture, degrees."""
    orbit_target: tuple[float, float, float] | None = None
    """Close-up captures: the camera orbits this point (world metres) looking at it, instead of walking the
    ellipse; `walk_radii_m[0]` is then the orbit radius (horizontal), `eye_height_m` the camera height."""
    orbit_arc_deg: float = 90.0
    """Close-up captures: the arc of the orbit, degrees (centred on the +z side of the target)."""

    @property
    def glass_triangles(self) -> np.ndarray:
        """(T,) bool: triangles of glass materials."""
        is_glass = np.array([m.glass for m in self.materials])
        return is_glass[self.triangle_material]


class SceneBuilder:
    """Accumulates primitives into one triangle soup with per-triangle materials."""

    def __init__(self) -> None:
        self.materials: list[Material] = []
        self._index: dict[str, int] = {}
        self._v: list[np.ndarray] = []
        self._t: list[np.ndarray] = []
        self._m: list[np.ndarray] = []
        self._nv = 0

    def material(self, m: Material) -> int:
        if m.name not in self._index:
            self._index[m.name] = len(self.materials)
            self.materials.append(m)
        return self._index[m.name]

    def add(self, vertices: np.ndarray, triangles: np.ndarray, m: Material) -> None:
        self._v.append(np.asarray(vertices, np.float64))
        self._t.append(np.asarray(triangles, np.int64) + self._nv)
        self._m.append(np.full(len(triangles), self.material(m), np.int32))
        self._nv += len(vertices)

    def quad(self, p0, p1, p2, p3, m: Material) -> None:
        """Planar quad p0-p1-p2-p3 (counter-clockwise seen from the side its normal points to)."""
        self.add(np.array([p0, p1, p2, p3]), np.array([[0, 1, 2], [0, 2, 3]]), m)

    def box(self, lo, hi, m: Material, inward: bool = False) -> None:
        """Axis-aligned box from corner `lo` to `hi` (outward normals, or inward for a room shell)."""
        (x0, y0, z0), (x1, y1, z1) = lo, hi
        v = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
                      [x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]])
        t = np.array([[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
                      [3, 7, 6], [3, 6, 2], [0, 4, 7], [0, 7, 3], [1, 2, 6], [1, 6, 5]])
        self.add(v, t[:, ::-1] if inward else t, m)

    def cylinder(self, p0, p1, radius_m: float, m: Material, segments: int = 10) -> None:
        """Closed cylinder with axis p0 -> p1."""
        p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
        axis = (p1 - p0) / np.linalg.norm(p1 - p0)
        a = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
        a /= np.linalg.norm(a)
        b = np.cross(axis, a)
        ang = 2 * np.pi * np.arange(segments) / segments
        ring = radius_m * (np.cos(ang)[:, None] * a + np.sin(ang)[:, None] * b)
        v = np.concatenate([p0 + ring, p1 + ring, [p0, p1]])
        i = np.arange(segments)
        j = (i + 1) % segments
        side = np.concatenate([np.stack([i, j, j + segments], 1), np.stack([i, j + segments, i + segments], 1)])
        caps = np.concatenate([np.stack([np.full(segments, 2 * segments), j, i], 1),
                               np.stack([np.full(segments, 2 * segments + 1), i + segments, j + segments], 1)])
        self.add(v, np.concatenate([side, caps]), m)

    def build(self, name: str, **kwargs) -> Scene:
        return Scene(name=name, vertices=np.concatenate(self._v), triangles=np.concatenate(self._t).astype(np.int32),
                     triangle_material=np.concatenate(self._m), materials=self.materials, **kwargs)


def _room_shell(b: SceneBuilder, x: tuple[float, float], y: tuple[float, float], z: tuple[float, float],
                floor: Material, ceiling: Material, walls: dict[str, Material]) -> None:
    """Floor, ceiling and four walls (normals facing inward); `walls` keys: -x, +x, -z, +z."""
    (x0, x1), (y0, y1), (z0, z1) = x, y, z
    b.quad((x0, y0, z0), (x0, y0, z1), (x1, y0, z1), (x1, y0, z0), floor)
    b.quad((x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1), ceiling)
    b.quad((x0, y0, z0), (x0, y1, z0), (x0, y1, z1), (x0, y0, z1), walls["-x"])
    b.quad((x1, y0, z0), (x1, y0, z1), (x1, y1, z1), (x1, y1, z0), walls["+x"])
    b.quad((x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0), walls["-z"])
    b.quad((x0, y0, z1), (x0, y1, z1), (x1, y1, z1), (x1, y0, z1), walls["+z"])


FLOOR = Material("floor_tiles", (0.78, 0.70, 0.58), (0.52, 0.42, 0.32), "checker", 0.5)
CEILING = Material("ceiling", (0.92, 0.92, 0.90))
WALL_PLAIN = Material("wall_plain", (0.85, 0.83, 0.78))
WALL_MOSAIC = Material("wall_mosaic", (0.90, 0.55, 0.35), (0.30, 0.55, 0.80), "mosaic", 0.35)
WALL_STRIPES = Material("wall_stripes", (0.80, 0.80, 0.70), (0.55, 0.65, 0.55), "stripes", 0.12)
WOOD = Material("wood", (0.65, 0.45, 0.25), (0.45, 0.28, 0.14), "grain", 0.05)
RED_BOX = Material("red_box", (0.75, 0.20, 0.18), (0.95, 0.85, 0.30), "mosaic", 0.15)
BLUE_BOX = Material("blue_box", (0.20, 0.35, 0.70))


def easy_scene() -> Scene:
    """A 4 x 2.6 x 5 m box room with four boxes near the walls."""
    b = SceneBuilder()
    _room_shell(b, (-2.0, 2.0), (0.0, 2.6), (-2.5, 2.5), FLOOR, CEILING,
                {"-x": WALL_MOSAIC, "+x": WALL_PLAIN, "-z": WALL_STRIPES, "+z": WALL_PLAIN})
    b.box((1.2, 0.0, 1.5), (1.9, 0.6, 2.4), WOOD)
    b.box((1.4, 0.6, 1.8), (1.75, 0.9, 2.2), RED_BOX)
    b.box((-1.9, 0.0, -0.5), (-1.4, 0.9, 0.3), RED_BOX)
    b.box((-0.5, 0.0, 2.0), (0.4, 0.45, 2.45), BLUE_BOX)
    b.box((0.6, 0.0, -2.4), (1.3, 0.7, -1.9), WOOD)
    return b.build("easy", light_position=np.array([0.0, 2.45, 0.0]), walk_centre_xz=(0.0, 0.0),
                   walk_radii_m=(0.9, 1.3), eye_height_m=1.45, look_height_m=0.8)


def hard_scene() -> Scene:
    """A 4.4 x 2.7 x 6 m room whose doorway opens on a corridor ending 7.5 m away, with thin, gappy,
    transparent and dark things; written poses drift ~1.5 cm / 0.3 deg over the capture."""
    b = SceneBuilder()
    metal = Material("metal_legs", (0.55, 0.55, 0.58), specular=0.3)
    fabric = Material("fabric", (0.35, 0.45, 0.30), (0.25, 0.35, 0.22), "mosaic", 0.06)
    green = Material("leaves", (0.20, 0.55, 0.18))
    stem = Material("stems", (0.30, 0.45, 0.15))
    terracotta = Material("pot", (0.70, 0.38, 0.25))
    glass = Material("glass", (0.80, 0.90, 0.95), lidar_return=0.0, glass=True)
    dark_gloss = Material("dark_glossy", (0.03, 0.03, 0.035), specular=0.8, lidar_return=0.25)
    dark_matte = Material("dark_matte", (0.06, 0.05, 0.05), (0.10, 0.09, 0.08), "grain", 0.03, lidar_return=0.5)
    books = [Material(f"book{i}", c) for i, c in enumerate([(0.8, 0.1, 0.1), (0.1, 0.3, 0.7), (0.9, 0.8, 0.2),
                                                             (0.2, 0.6, 0.3), (0.9, 0.9, 0.85)])]

    # Main room: x [-2.2, 2.2], z [-3, 3]; the +z wall has a doorway x [-0.5, 0.5], y [0, 2.1].
    x0, x1, y1, zb, zf = -2.2, 2.2, 2.7, -3.0, 3.0
    b.quad((x0, 0, zb), (x0, 0, zf), (x1, 0, zf), (x1, 0, zb), FLOOR)
    b.quad((x0, y1, zb), (x1, y1, zb), (x1, y1, zf), (x0, y1, zf), CEILING)
    b.quad((x0, 0, zb), (x0, y1, zb), (x0, y1, zf), (x0, 0, zf), WALL_STRIPES)
    b.quad((x1, 0, zb), (x1, 0, zf), (x1, y1, zf), (x1, y1, zb), WALL_PLAIN)
    b.quad((x0, 0, zb), (x1, 0, zb), (x1, y1, zb), (x0, y1, zb), WALL_PLAIN)
    for (a, c), (lo, hi) in [((x0, -0.5), (0.0, y1)), ((0.5, x1), (0.0, y1)), ((-0.5, 0.5), (2.1, y1))]:
        b.quad((a, lo, zf), (a, hi, zf), (c, hi, zf), (c, lo, zf), WALL_PLAIN)  # +z wall around the door
    # Corridor behind the doorway: x [-0.7, 0.7], z [3, 7.5], far wall with a mosaic.
    cx0, cx1, cz1 = -0.7, 0.7, 7.5
    b.quad((cx0, 0, zf), (cx0, 0, cz1), (cx1, 0, cz1), (cx1, 0, zf), FLOOR)
    b.quad((cx0, y1, zf), (cx1, y1, zf), (cx1, y1, cz1), (cx0, y1, cz1), CEILING)
    b.quad((cx0, 0, zf), (cx0, y1, zf), (cx0, y1, cz1), (cx0, 0, cz1), WALL_PLAIN)
    b.quad((cx1, 0, zf), (cx1, 0, cz1), (cx1, y1, cz1), (cx1, y1, zf), WALL_PLAIN)
    b.quad((cx0, 0, cz1), (cx0, y1, cz1), (cx1, y1, cz1), (cx1, 0, cz1), WALL_MOSAIC)

    # Chair in the (-x, -z) corner: 2.5 cm legs, seat, two back posts and a backrest.
    sx, sz, leg = -1.55, -2.25, 0.025
    for dx in (-0.2, 0.2):
        for dz in (-0.2, 0.2):
            top = 0.9 if dz < 0 else 0.43
            b.box((sx + dx - leg / 2, 0.0, sz + dz - leg / 2), (sx + dx + leg / 2, top, sz + dz + leg / 2), metal)
    b.box((sx - 0.225, 0.43, sz - 0.225), (sx + 0.225, 0.47, sz + 0.225), fabric)
    b.box((sx - 0.21, 0.70, sz - 0.215), (sx + 0.21, 0.85, sz - 0.19), fabric)

    # Table along the +x wall: 3 cm legs.
    tx, tz = 1.7, -2.0
    b.box((tx - 0.5, 0.72, tz - 0.35), (tx + 0.45, 0.75, tz + 0.35), WOOD)
    for dx in (-0.45, 0.4):
        for dz in (-0.3, 0.3):
            b.box((tx + dx - 0.015, 0.0, tz + dz - 0.015), (tx + dx + 0.015, 0.72, tz + dz + 0.015), metal)

    # Plant in the (+x, +z) corner: pot, 1.2 cm stems, flat leaves.
    px, pz = 1.7, 2.4
    b.cylinder((px, 0.0, pz), (px, 0.32, pz), 0.15, terracotta, segments=20)
    layout = np.random.default_rng(7)  # fixed layout; --seed varies noise, trajectory jitter and drift only
    for k in range(7):
        ang = 2 * np.pi * k / 7 + layout.uniform(-0.3, 0.3)
        tilt = layout.uniform(0.12, 0.35)
        h = layout.uniform(0.55, 1.05)
        tip = np.array([px + tilt * h * np.cos(ang), 0.3 + h, pz + tilt * h * np.sin(ang)])
        b.cylinder((px, 0.3, pz), tip, 0.006, stem, segments=8)
        b.box(tip - [0.07, 0.004, 0.035], tip + [0.07, 0.004, 0.035], green)

    # Open-backed shelf against the -x wall: 2 cm boards with 43 cm gaps, a few books.
    shx0, shx1, shz0, shz1 = -2.2, -1.85, 0.2, 1.4
    for z in (shz0, shz1 - 0.02):
        b.box((shx0, 0.0, z), (shx1, 1.82, z + 0.02), WOOD)
    for k, y in enumerate((0.05, 0.5, 0.95, 1.4, 1.8)):
        b.box((shx0, y, shz0 + 0.02), (shx1, y + 0.02, shz1 - 0.02), WOOD)
        if k < 4:
            z = shz0 + 0.06
            for i in range(3 + k % 2):
                w, hb = 0.03 + 0.015 * ((i + k) % 3), 0.22 + 0.05 * ((i * 2 + k) % 3)
                b.box((shx0 + 0.04, y + 0.02, z), (shx1 - 0.04, y + 0.02 + hb, z + w), books[(i + k) % len(books)])
                z += w + 0.005

    # Glass partition in front of the +x wall with a low cabinet behind it.
    b.box((1.70, 0.05, -0.4), (1.708, 1.55, 0.8), glass)
    b.box((1.9, 0.0, -0.2), (2.2, 0.8, 0.6), RED_BOX)

    # Dark glossy TV on the -z wall above a dark matte sideboard.
    b.box((-0.7, 0.9, -3.0), (0.7, 1.7, -2.96), dark_gloss)
    b.box((-1.0, 0.0, -3.0), (1.0, 0.5, -2.55), dark_matte)

    # A couple of ordinary boxes.
    b.box((-2.1, 0.0, 2.2), (-1.5, 0.5, 2.9), BLUE_BOX)
    b.box((-0.6, 0.0, -2.95), (-0.3, 0.3, -2.65), WOOD)
    return b.build("hard", light_position=np.array([0.0, 2.6, 0.0]), walk_centre_xz=(0.0, 0.0),
                   walk_radii_m=(1.0, 1.6), eye_height_m=1.45, look_height_m=0.9, drift_m=0.015, drift_deg=0.3)


def closeup_scene() -> Scene:
    """A desk corner seen from 0.2-0.45 m: a mug with a handle, a book, a pen and a small box on a table
    against a wall, finely textured (millimetre to centimetre detail); the camera orbits them at 0.25 m
    over 92 degrees (0.4 m of path)."""
    b = SceneBuilder()
    fine_wall = Material("wall_fine_mosaic", (0.85, 0.80, 0.70), (0.40, 0.50, 0.65), "mosaic", 0.03)
    desk = Material("desk_grain", (0.62, 0.44, 0.26), (0.42, 0.27, 0.14), "grain", 0.02)
    mug = Material("mug_mosaic", (0.80, 0.25, 0.20), (0.95, 0.90, 0.80), "mosaic", 0.012)
    book = Material("book_stripes", (0.15, 0.30, 0.65), (0.90, 0.85, 0.60), "stripes", 0.008)
    cube = Material("cube_checker", (0.90, 0.85, 0.20), (0.20, 0.50, 0.30), "checker", 0.01)
    pen = Material("pen", (0.10, 0.10, 0.12), specular=0.4)
    _room_shell(b, (-0.8, 0.8), (0.0, 1.6), (-0.45, 0.8), FLOOR, CEILING,
                {"-x": WALL_PLAIN, "+x": WALL_PLAIN, "-z": fine_wall, "+z": WALL_PLAIN})
    b.box((-0.7, 0.0, -0.45), (0.7, 0.75, 0.2), desk)  # the desk, against the -z wall
    b.cylinder((0.0, 0.75, -0.15), (0.0, 0.85, -0.15), 0.04, mug, segments=32)
    b.box((0.04, 0.775, -0.156), (0.068, 0.825, -0.144), mug)  # the mug's handle, 12 mm thick
    b.box((-0.19, 0.75, -0.26), (-0.07, 0.78, -0.08), book)
    b.cylinder((0.07, 0.754, -0.02), (0.19, 0.754, -0.06), 0.004, pen, segments=12)
    b.box((0.09, 0.75, -0.32), (0.16, 0.82, -0.25), cube)
    return b.build("closeup", light_position=np.array([0.2, 1.5, 0.5]), walk_centre_xz=(0.0, -0.15),
                   walk_radii_m=(0.25, 0.25), eye_height_m=0.93, look_height_m=0.79,
                   orbit_target=(0.0, 0.79, -0.15), orbit_arc_deg=92.0)


SCENES: dict[str, Callable[[], Scene]] = {"easy": easy_scene, "hard": hard_scene, "closeup": closeup_scene}


def scene_mesh(scene: Scene) -> o3d.geometry.TriangleMesh:
    """The GT mesh (world frame, metres) with each vertex coloured by its material's base albedo."""
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(scene.vertices),
                                     o3d.utility.Vector3iVector(scene.triangles))
    colours = np.array([m.colour for m in scene.materials])
    vertex_colour = np.zeros_like(scene.vertices)
    vertex_colour[scene.triangles.reshape(-1)] = np.repeat(colours[scene.triangle_material], 3, axis=0)
    mesh.vertex_colors = o3d.utility.Vector3dVector(vertex_colour)
    return mesh


# ----------------------------------------------------------------------------- cameras
def arkit_intrinsics(width: int, height: int) -> np.ndarray:
    """ARKit-like K_rgb for the wide camera: ~67 deg horizontal FOV, principal point slightly off-centre."""
    f = 0.75 * width
    return intrinsics_matrix(f, f, 0.497 * width, 0.502 * height)


def lidar_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) of the LiDAR depth map for an RGB size: 256 on the long side, same aspect (256x192 for 4:3)."""
    return LIDAR_LONG_SIDE_PX, round(LIDAR_LONG_SIDE_PX * height / width)


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(3,3) camera-to-world rotation (OpenCV axes) looking from eye to target with world y up."""
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], 1)


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(axis, np.float64).reshape(3, 1) / np.linalg.norm(axis) * angle_rad)[0]


def camera_trajectory(scene: Scene, n_frames: int, fps: float, seed: int) -> np.ndarray:
    """(N,4,4) true camera_to_world of a smooth handheld walk: one loop around the room's walk ellipse
    looking across the room (so every wall, the floor and the objects are seen), with a slow side-to-side
    sweep, a walking bob and small hand tremor. Deterministic given `seed`."""
    if scene.orbit_target is not None:
        return _orbit_trajectory(scene, n_frames, fps, seed)
    rng = np.random.default_rng([seed, 1])
    phase = rng.uniform(0, 2 * np.pi, size=7)
    (cx, cz), (ax, az) = scene.walk_centre_xz, scene.walk_radii_m
    poses = np.tile(np.eye(4), (n_frames, 1, 1))
    for i in range(n_frames):
        s, t = i / max(n_frames, 1), i / fps
        phi = 2 * np.pi * s + phase[0]
        eye = np.array([cx + ax * np.cos(phi), scene.eye_height_m + 0.02 * np.sin(2 * np.pi * 1.8 * t + phase[1]),
                        cz + az * np.sin(phi)])
        across = np.array([cx, 0.0, cz]) - eye
        across[1] = 0.0
        side = np.cross(across, [0.0, 1.0, 0.0])
        target = eye + 1.5 * across + 0.9 * np.sin(2 * np.pi * 3 * s + phase[2]) * side
        target[1] = scene.look_height_m + 0.35 * np.sin(2 * np.pi * 2 * s + phase[3])
        R = _look_at(eye, target)
        tremor_deg = 0.6 * np.array([np.sin(2 * np.pi * 0.7 * t + phase[4]), np.sin(2 * np.pi * 0.9 * t + phase[5]),
                                     2.0 * np.sin(2 * np.pi * 0.4 * t + phase[6])])
        poses[i, :3, :3] = R @ cv2.Rodrigues(np.deg2rad(tremor_deg).reshape(3, 1))[0]
        poses[i, :3, 3] = eye
    return poses


def _orbit_trajectory(scene: Scene, n_frames: int, fps: float, seed: int) -> np.ndarray:
    """(N,4,4) true camera_to_world of a close-up: one sweep of `orbit_arc_deg` around `orbit_target` at
    radius `walk_radii_m[0]`, looking at the target, with a 5 mm bob and small hand tremor."""
    rng = np.random.default_rng([seed, 1])
    phase = rng.uniform(0, 2 * np.pi, size=4)
    target = np.asarray(scene.orbit_target, np.float64)
    radius = scene.walk_radii_m[0]
    poses = np.tile(np.eye(4), (n_frames, 1, 1))
    for i in range(n_frames):
        s, t = i / max(n_frames - 1, 1), i / fps
        phi = np.deg2rad(scene.orbit_arc_deg) * (s - 0.5)
        eye = target + np.array([radius * np.sin(phi), 0.0, radius * np.cos(phi)])
        eye[1] = scene.eye_height_m + 0.005 * np.sin(2 * np.pi * 1.1 * t + phase[0])
        tremor_deg = 0.4 * np.array([np.sin(2 * np.pi * 0.7 * t + phase[1]), np.sin(2 * np.pi * 0.9 * t + phase[2]),
                                     np.sin(2 * np.pi * 0.4 * t + phase[3])])
        poses[i, :3, :3] = _look_at(eye, target) @ cv2.Rodrigues(np.deg2rad(tremor_deg).reshape(3, 1))[0]
        poses[i, :3, 3] = eye
    return poses


def drifted_poses(camera_to_world: np.ndarray, drift_m: float, drift_deg: float, seed: int) -> np.ndarray:
    """ARKit-like written poses: the camera centre error grows linearly to `drift_m` and the orientation
    error (a rotation about a mostly vertical axis, applied in the world frame about the camera centre)
    to `drift_deg` at the last frame. Zero drift returns an exact copy."""
    rng = np.random.default_rng([seed, 2])
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    axis = rng.normal(size=3) * [0.3, 1.0, 0.3]
    out = np.array(camera_to_world, np.float64)
    n = len(out)
    for i in range(n):
        s = i / max(n - 1, 1)
        out[i, :3, :3] = _rotation(axis, np.deg2rad(drift_deg) * s) @ out[i, :3, :3]
        out[i, :3, 3] += drift_m * s * direction
    return out


# ----------------------------------------------------------------------------- rendering
@dataclass
class Render:
    """What one camera sees; every array is (H,W[,3]) at the rendered size."""

    depth_m: np.ndarray
    """float32 z-depth of the first surface, glass included (the GT depth); 0 = no hit."""
    glass: np.ndarray
    """bool: the first surface is glass."""
    material: np.ndarray
    """int32 material index of the first opaque surface (behind any glass); -1 = no hit."""
    points_world: np.ndarray
    """float32 first opaque hit point, world metres."""
    normals_world: np.ndarray
    """float32 unit normal of the first opaque surface, flipped to face the camera."""
    cos_incidence: np.ndarray
    """float32 |cos| of the angle between the viewing ray and the first surface's normal."""


def camera_rays(K: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(..., 3) float32 camera-frame ray directions with z = 1 through pixel coordinates (u, v)."""
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).astype(np.float32)


class Renderer:
    """Ray casts a Scene with Open3D's RaycastingScene (opaque and glass triangles in separate scenes)."""

    def __init__(self, scene: Scene):
        self.scene = scene
        glass = scene.glass_triangles
        self._opaque = self._raycasting_scene(scene.triangles[~glass])
        self._opaque_material = scene.triangle_material[~glass]
        self._glass = self._raycasting_scene(scene.triangles[glass]) if glass.any() else None
        self._rays_cam: dict[tuple, np.ndarray] = {}

    def _raycasting_scene(self, triangles: np.ndarray) -> o3d.t.geometry.RaycastingScene:
        rs = o3d.t.geometry.RaycastingScene()
        rs.add_triangles(o3d.core.Tensor(self.scene.vertices.astype(np.float32)),
                         o3d.core.Tensor(triangles.astype(np.uint32)))
        return rs

    def rays_for_image(self, K: np.ndarray, width: int, height: int) -> np.ndarray:
        key = (K.tobytes(), width, height)
        if key not in self._rays_cam:
            v, u = np.mgrid[0:height, 0:width].astype(np.float64)
            self._rays_cam[key] = camera_rays(K, u, v)  # a few sizes per renderer: RGB, LiDAR, GT depth
        return self._rays_cam[key]

    def cast(self, camera_to_world: np.ndarray, rays_cam: np.ndarray) -> Render:
        """Cast camera-frame rays (..., 3), z = 1, from `camera_to_world` (OpenCV axes)."""
        dirs = rays_cam @ camera_to_world[:3, :3].T.astype(np.float32)
        rays = np.empty(dirs.shape[:-1] + (6,), np.float32)
        rays[..., :3] = camera_to_world[:3, 3]
        rays[..., 3:] = dirs
        rays_t = o3d.core.Tensor(rays)
        hit = self._opaque.cast_rays(rays_t)
        t = hit["t_hit"].numpy()  # = z-depth, because every direction has camera-frame z = 1
        ok = np.isfinite(t)
        t_ok = np.where(ok, t, np.float32(0))
        material = np.where(ok, self._opaque_material[np.where(ok, hit["primitive_ids"].numpy(), 0)], -1)
        n = hit["primitive_normals"].numpy()
        dir_len = np.sqrt(_dot(rays_cam, rays_cam))  # rotation keeps lengths
        cos_n = _dot(n, dirs) / dir_len
        n *= np.where(cos_n > 0, np.float32(-1), np.float32(1))[..., None]  # face the camera
        cos_inc = np.abs(cos_n)
        depth = t_ok
        glass = np.zeros(t.shape, bool)
        if self._glass is not None:
            g = self._glass.cast_rays(rays_t)
            tg = g["t_hit"].numpy()
            glass = np.isfinite(tg) & (~ok | (tg < t))
            depth = np.where(glass, tg, depth)
            cos_inc = np.where(glass, np.abs(_dot(g["primitive_normals"].numpy(), dirs)) / dir_len, cos_inc)
        points = rays[..., :3] + t_ok[..., None] * dirs
        return Render(depth_m=depth.astype(np.float32), glass=glass, material=material.astype(np.int32),
                      points_world=points, normals_world=n, cos_incidence=cos_inc.astype(np.float32))

    def render(self, camera_to_world: np.ndarray, K: np.ndarray, width: int, height: int) -> Render:
        return self.cast(camera_to_world, self.rays_for_image(K, width, height))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product over the last axis."""
    return np.einsum("...i,...i->...", a, b)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.sqrt(_dot(a, a))[..., None]


def _cell_hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Pseudo-random value in [0, 1] per integer cell."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) % 1021) / 1020.0


def _albedo(m: Material, salt: int, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N,3) albedo of material `m` at world points with normals (procedural, world-space texture)."""
    c1 = np.asarray(m.colour, np.float32)
    if m.texture == "plain" or m.colour2 is None:
        return np.broadcast_to(c1, points.shape).copy()
    c2 = np.asarray(m.colour2, np.float32)
    k = np.argmax(np.abs(normals), -1)  # in-plane coordinates: drop the dominant normal axis
    u = np.where(k == 0, points[:, 2], points[:, 0]) / m.texture_scale_m
    v = np.where(k == 1, points[:, 2], points[:, 1]) / m.texture_scale_m
    if m.texture == "checker":
        w = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    elif m.texture == "stripes":
        w = (np.floor(u) % 2).astype(np.float32)
    elif m.texture == "mosaic":
        w = _cell_hash(np.floor(u), np.floor(v), salt).astype(np.float32)
    elif m.texture == "grain":
        w = (0.5 + 0.5 * np.sin(2 * np.pi * (v + 0.4 * np.sin(0.7 * u)))).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {m.texture!r}")
    return c1 + w[:, None] * (c2 - c1)


def shade(scene: Scene, r: Render, camera_centre: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H,W,3) uint8 RGB: texture x (ambient + Lambertian point light) + glossy highlights; glass tints."""
    h, w = r.depth_m.shape
    mat = r.material.reshape(-1)
    p = r.points_world.reshape(-1, 3)
    n = r.normals_world.reshape(-1, 3)
    # Plain albedo from a lookup table (row -1 = no hit = black), then textured materials group by group.
    albedo = np.array([m.colour for m in scene.materials] + [(0.0, 0.0, 0.0)], np.float32)[mat]
    order = np.argsort(mat, kind="stable")
    bounds = np.searchsorted(mat[order], np.arange(len(scene.materials) + 1))
    for i, m in enumerate(scene.materials):
        idx = order[bounds[i]:bounds[i + 1]]
        if m.texture != "plain" and len(idx):
            albedo[idx] = _albedo(m, seed + i, p[idx], n[idx])
    to_light = scene.light_position.astype(np.float32) - p
    dist = np.sqrt(_dot(to_light, to_light))
    lambert = np.clip(_dot(n, to_light) / dist, 0, None)
    colour = albedo * (0.35 + 0.9 * lambert / (1.0 + (dist / 3.5) ** 2))[:, None]
    spec_lut = np.array([m.specular for m in scene.materials] + [0.0], np.float32)
    glossy = np.flatnonzero(spec_lut[mat] > 0)
    if len(glossy):
        pg, ng = p[glossy], n[glossy]
        half = (to_light[glossy] / dist[glossy, None]
                + _unit(camera_centre.astype(np.float32) - pg))
        colour[glossy] += (spec_lut[mat[glossy]] * np.clip(_dot(ng, _unit(half)), 0, None) ** 60)[:, None]
    img = colour.reshape(h, w, 3)
    if r.glass.any():
        fresnel = 0.12 + 0.5 * (1.0 - r.cos_incidence[r.glass]) ** 5
        img[r.glass] = (1 - fresnel)[:, None] * 0.85 * img[r.glass] + fresnel[:, None] * np.array([0.8, 0.9, 0.95])
    img = cv2.GaussianBlur(img, (0, 0), 0.6)  # lens blur, also anti-aliases thin structures a little
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- LiDAR simulation
@dataclass(frozen=True)
class LidarModel:
    """iPhone-LiDAR-like depth: sparse anchors, bilinear interpolation, noise, dropouts, confidence."""

    anchors_hw: tuple[int, int] = (24, 32)
    """Rows x columns of the dot grid sampled from GT depth."""
    sigma_m: float = 0.004
    """Noise standard deviation at zero range, metres..."""
    sigma_per_m: float = 0.002
    """...plus this times range..."""
    sigma_per_m2: float = 0.0008
    """...plus this times range squared..."""
    sigma_grazing: float = 0.5
    """...all times (1 + sigma_grazing * min(tan(incidence), 3))."""
    pixel_sigma_m: float = 0.002
    """Independent per-pixel noise on top of the (smooth, interpolated) anchor noise, metres."""
    reliable_range_m: float = 3.5
    """Beyond this confidence is at most 1..."""
    max_confident_range_m: float = 5.0
    """...beyond this 0, and dots start to drop out..."""
    no_return_range_m: float = 7.0
    """...until none return beyond this."""
    grazing_cos: float = 0.25
    """Confidence at most 1 where |cos(incidence)| is below this."""
    edge_rel_jump: float = 0.04
    """A depth discontinuity: neighbouring GT depths differ by more than this fraction (plus 2 cm)."""
    edge_band_anchor_steps: tuple[float, float] = (0.75, 1.5)
    """Confidence 0 within the first distance of a discontinuity, 1 within the second (in anchor spacings)."""


@dataclass
class LidarFrame:
    depth_m: np.ndarray
    """(h,w) float32 simulated LiDAR depth, metres, 0 = no return."""
    confidence: np.ndarray
    """(h,w) uint8 0 (low) / 1 / 2 (high)."""
    gt_depth_m: np.ndarray
    """(h,w) float32 GT z-depth at LiDAR resolution (for tests and diagnostics)."""


def _bilinear_weights(n_out: int, n_anchor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel along one axis: lower anchor index, upper index, weight of the upper one.
    Anchors sit at the centres of n_anchor equal cells; outside the outer anchors values are held."""
    a = np.clip((np.arange(n_out) + 0.5) * n_anchor / n_out - 0.5, 0, n_anchor - 1)
    i0 = np.floor(a).astype(int)
    i1 = np.minimum(i0 + 1, n_anchor - 1)
    return i0, i1, (a - i0).astype(np.float32)


def simulate_lidar(renderer: Renderer, camera_to_world: np.ndarray, K_lidar: np.ndarray, size: tuple[int, int],
                   rng: np.random.Generator, model: LidarModel = LidarModel()) -> LidarFrame:
    """Simulated LiDAR depth and confidence at `size` = (w, h) seen from the *true* camera pose."""
    w, h = size
    ny, nx = model.anchors_hw
    # Anchor dots at the centres of an ny x nx grid of cells over the LiDAR image.
    au = (np.arange(nx) + 0.5) * w / nx - 0.5
    av = (np.arange(ny) + 0.5) * h / ny - 0.5
    dots = renderer.cast(camera_to_world, camera_rays(K_lidar, *np.meshgrid(au, av)))
    z = dots.depth_m.astype(np.float64)
    p_return = np.array([m.lidar_return for m in renderer.scene.materials])[np.maximum(dots.material, 0)]
    p_return = np.where(dots.glass | (dots.material < 0), 0.0, p_return)
    p_return *= np.clip((model.no_return_range_m - z) / (model.no_return_range_m - model.max_confident_range_m), 0, 1)
    valid = rng.random(z.shape) < p_return
    tan_inc = np.sqrt(1.0 - np.clip(dots.cos_incidence, 1e-3, 1.0) ** 2) / np.clip(dots.cos_incidence, 1e-3, 1.0)
    sigma = (model.sigma_m + model.sigma_per_m * z + model.sigma_per_m2 * z**2) * (
        1.0 + model.sigma_grazing * np.minimum(tan_inc, 3.0))
    z_noisy = np.where(valid, z + sigma * rng.normal(size=z.shape), 0.0)

    # Validity-weighted bilinear interpolation back to (h, w): smears edges, makes flying pixels.
    r0, r1, fy = _bilinear_weights(h, ny)
    c0, c1, fx = _bilinear_weights(w, nx)
    num = np.zeros((h, w), np.float64)
    den = np.zeros((h, w), np.float64)
    for rows, wy in ((r0, 1 - fy), (r1, fy)):
        for cols, wx in ((c0, 1 - fx), (c1, fx)):
            wgt = wy[:, None] * wx[None, :] * valid[np.ix_(rows, cols)]
            num += wgt * z_noisy[np.ix_(rows, cols)]
            den += wgt
    depth = np.where(den > 0.5, num / np.maximum(den, 1e-9), 0.0)

    # Per-pixel view of the scene at LiDAR resolution: glass, dark surfaces, edges, grazing angles.
    px = renderer.render(camera_to_world, K_lidar, w, h)
    gt = px.depth_m
    depth = np.where(px.glass | (gt <= 0), 0.0, depth)
    depth = np.where(depth > 0, depth + model.pixel_sigma_m * rng.normal(size=depth.shape), 0.0)
    depth = np.maximum(depth, 0.0).astype(np.float32)

    jump = np.zeros_like(gt, dtype=bool)
    dzx = np.abs(np.diff(gt, axis=1)) > model.edge_rel_jump * np.minimum(gt[:, 1:], gt[:, :-1]) + 0.02
    dzy = np.abs(np.diff(gt, axis=0)) > model.edge_rel_jump * np.minimum(gt[1:], gt[:-1]) + 0.02
    jump[:, 1:] |= dzx
    jump[:, :-1] |= dzx
    jump[1:] |= dzy
    jump[:-1] |= dzy
    dist_px = cv2.distanceTransform((~jump).astype(np.uint8), cv2.DIST_L2, 3)
    step = w / nx
    conf = np.full((h, w), 2, np.uint8)
    dark = np.array([m.lidar_return < 1 for m in renderer.scene.materials])[np.maximum(px.material, 0)]
    conf[(dist_px < model.edge_band_anchor_steps[1] * step) | (px.cos_incidence < model.grazing_cos)
         | (gt > model.reliable_range_m) | dark] = 1
    conf[(dist_px < model.edge_band_anchor_steps[0] * step) | (gt > model.max_confident_range_m) | (depth <= 0)] = 0
    return LidarFrame(depth_m=depth, confidence=conf, gt_depth_m=gt)


def lidar_intrinsics(K_rgb: np.ndarray, rgb_size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """(K_lidar, (w, h)) for an RGB camera, scaled the way ARKit and the capture apps do."""
    size = lidar_size(*rgb_size)
    return scale_intrinsics(K_rgb, rgb_size, size), size
