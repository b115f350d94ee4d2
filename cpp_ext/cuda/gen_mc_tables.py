#!/usr/bin/env python3
"""Derive the marching-cubes tables used by ``marching_cubes.cu`` and write ``mc_tables.h``.

Nothing here is copied from a published table: the 256 cases are derived from the cube geometry
by the following documented algorithm, so the result is reproducible and checkable.

Cube geometry (the common Lorensen/Bourke numbering, offsets in grid index order (i, j, k) =
(x, y, z)):

    corner  0:(0,0,0) 1:(1,0,0) 2:(1,1,0) 3:(0,1,0) 4:(0,0,1) 5:(1,0,1) 6:(1,1,1) 7:(0,1,1)
    edge    0:(0,1) 1:(1,2) 2:(2,3) 3:(3,0) 4:(4,5) 5:(5,6) 6:(6,7) 7:(7,4)
            8:(0,4) 9:(1,5) 10:(2,6) 11:(3,7)

Case index: bit ``c`` is set when corner ``c`` is INSIDE (sample > level; NaN/inf count as
outside). Every crossed edge (one inside and one outside corner) carries one surface vertex.

Derivation of the triangles of one case:

1. For each of the 6 cube faces, walk its 4 corners counter-clockwise as seen from OUTSIDE the
   cube (the order is computed from the coordinates, not written down). A face edge walked from
   an outside to an inside corner is an *entry*, from inside to outside an *exit*.
2. On each face, connect every entry to the next exit met when continuing the walk. With 2
   crossings this is the only choice; on an ambiguous face (4 crossings, diagonal inside corners)
   it cuts every inside corner off separately ("inside corners are not connected across a
   face"). The rule depends only on the face's own 4 signs, and the neighbouring cell walks the
   shared face in the opposite direction, so it produces the same segments reversed: the mesh is
   crack-free and consistently oriented across cells.
3. Each crossed edge lies on exactly two faces; it is an entry on one and an exit on the other,
   so the directed segments form disjoint closed loops. A loop is started at its smallest edge
   number.
4. A loop walked in this direction has the inside region on its right when seen from outside the
   cube, i.e. it runs counter-clockwise around the surface normal that points from inside to
   outside. Fanning the loop, ``(a, l[i], l[i+1])``, therefore gives triangles whose
   right-hand-rule normal points OUTWARD (towards lower field values) - the winding the SDK
   uses for positive-inside fields.
5. The fan apex ``a`` is the first loop vertex (from the start) whose fan adds no chord between
   two vertices on one cube face. Such a chord could only come from a loop that crosses an
   ambiguous face twice; it would lie in that face, where the neighbouring cell may place the
   same chord (an edge of four triangles, i.e. not watertight). For loops that cross no face
   twice this is the first vertex, so complementary unambiguous cases give exactly the
   reversed triangles.

The interior (body-diagonal) ambiguity is resolved implicitly by step 2 (no tunnels are
created). scikit-image's Lewiner method decides ambiguous faces and interiors with the
asymptotic decider instead, so the two differ in topology on ambiguous cells only.

Usage:
    python gen_mc_tables.py            # rewrite mc_tables.h next to this script
    python gen_mc_tables.py --check    # exit 1 if mc_tables.h is not what this script writes
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

CORNERS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0),
    (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1),
)
EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0),
    (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7),
)
HEADER_NAME = "mc_tables.h"


def edge_of(a: int, b: int) -> int:
    """Edge number of the cube edge joining corners a and b."""
    for e, (x, y) in enumerate(EDGES):
        if {x, y} == {a, b}:
            return e
    raise KeyError((a, b))


def edge_geometry(e: int) -> tuple[tuple[int, int, int], int]:
    """(offset of the edge's lower corner, axis 0/1/2) of edge e."""
    a, b = (CORNERS[c] for c in EDGES[e])
    axis = next(d for d in range(3) if a[d] != b[d])
    lower = a if a[axis] < b[axis] else b
    return lower, axis


def _cross(u, v):
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def faces_ccw() -> list[list[int]]:
    """The 6 faces as corner cycles, counter-clockwise seen from outside the cube."""
    faces = []
    for axis in range(3):
        for side in (0, 1):
            normal = [0, 0, 0]
            normal[axis] = 1 if side else -1
            corners = [c for c, p in enumerate(CORNERS) if p[axis] == side]
            # in-plane basis (u, w) with u x w = outward normal
            u = [0, 0, 0]
            u[(axis + 1) % 3] = 1
            w = _cross(normal, u)
            assert _cross(u, w) == tuple(normal)

            def angle(c):
                p = [x - 0.5 for x in CORNERS[c]]
                return math.atan2(sum(p[i] * w[i] for i in range(3)), sum(p[i] * u[i] for i in range(3)))

            faces.append(sorted(corners, key=angle))
    return faces


FACES = faces_ccw()


def case_loops(case: int) -> list[list[int]]:
    """Surface loops (lists of edge numbers) of a case, by the face-walk rule above."""
    inside = [(case >> c) & 1 for c in range(8)]
    nxt: dict[int, int] = {}
    for face in FACES:
        events = []  # (edge, is_entry) in walk order
        for t in range(4):
            a, b = face[t], face[(t + 1) % 4]
            if inside[a] != inside[b]:
                events.append((edge_of(a, b), inside[b] == 1))
        for s, (edge, is_entry) in enumerate(events):
            if not is_entry:
                continue
            for step in range(1, len(events)):
                other, other_entry = events[(s + step) % len(events)]
                if not other_entry:
                    assert edge not in nxt
                    nxt[edge] = other
                    break
    loops = []
    remaining = set(nxt)
    while remaining:
        start = min(remaining)
        loop = [start]
        remaining.discard(start)
        cur = nxt[start]
        while cur != start:
            loop.append(cur)
            remaining.discard(cur)
            cur = nxt[cur]
        loops.append(loop)
    return loops


def _faces_of_edge(e: int) -> set[int]:
    return {f for f, corners in enumerate(FACES) if set(EDGES[e]) <= set(corners)}


def fan_apex(loop: list[int]) -> int:
    """Position in ``loop`` of the fan apex: the first vertex whose fan adds no chord between two
    vertices on a common cube face (such a chord would lie IN the face, where the neighbouring
    cell can put the same chord: an edge shared by four triangles)."""
    n = len(loop)
    for s in range(n):
        rotated = loop[s:] + loop[:s]
        if all(not (_faces_of_edge(rotated[0]) & _faces_of_edge(rotated[i])) for i in range(2, n - 1)):
            return s
    raise AssertionError(f"no valid fan apex for loop {loop}")


def case_triangles(case: int) -> list[tuple[int, int, int]]:
    tris = []
    for loop in case_loops(case):
        s = fan_apex(loop)
        rotated = loop[s:] + loop[:s]
        for i in range(1, len(rotated) - 1):
            tris.append((rotated[0], rotated[i], rotated[i + 1]))
    return tris


def crossed_edges(case: int) -> int:
    """12-bit mask of the edges whose corners differ in sign."""
    mask = 0
    for e, (a, b) in enumerate(EDGES):
        if ((case >> a) & 1) != ((case >> b) & 1):
            mask |= 1 << e
    return mask


def build_tables() -> dict:
    """Everything the header holds, as Python data (the tests use this too)."""
    tris = [case_triangles(c) for c in range(256)]
    max_tris = max(len(t) for t in tris)
    edge_codes = 0
    for e in range(12):
        (ox, oy, oz), axis = edge_geometry(e)
        code = ox | (oy << 1) | (oz << 2) | (axis << 3)
        edge_codes |= code << (5 * e)
    corner_bits = [sum(CORNERS[c][d] << c for c in range(8)) for d in range(3)]
    return {
        "triangles": tris,
        "max_triangles": max_tris,
        "edge_mask": [crossed_edges(c) for c in range(256)],
        "edge_codes": edge_codes,
        "corner_bits": corner_bits,
    }


def render(tables: dict) -> str:
    width = 3 * tables["max_triangles"] + 1
    lines = [
        "// GENERATED by cpp_ext/cuda/gen_mc_tables.py -- do not edit; rerun the script instead.",
        "// Marching-cubes tables derived from the cube geometry (see the script's docstring).",
        "// Case bit c = corner c inside (sample > level). Triangles list edge numbers, -1 ends a",
        "// row; their right-hand-rule normal points outward (towards lower field values).",
        "//",
        "// Define S4D_MC_TABLE_STORAGE before including (e.g. `static __device__ const` in CUDA,",
        "// `static const` on the host).",
        "#ifndef S4D_MC_TABLES_H_",
        "#define S4D_MC_TABLES_H_",
        "",
        "#include <stdint.h>",
        "",
        "#ifndef S4D_MC_TABLE_STORAGE",
        "#error \"define S4D_MC_TABLE_STORAGE before including mc_tables.h\"",
        "#endif",
        "",
        f"#define S4D_MC_MAX_TRIANGLES {tables['max_triangles']}",
        f"#define S4D_MC_TRI_ROW {width}",
        "/* edge e: bits 5e..5e+4 = dx | dy << 1 | dz << 2 | axis << 3 (its lower corner and axis) */",
        f"#define S4D_MC_EDGE_CODES 0x{tables['edge_codes']:016x}ULL",
        "/* corner c offset along x / y / z: bit c of these masks */",
        f"#define S4D_MC_CORNER_DX 0x{tables['corner_bits'][0]:02x}u",
        f"#define S4D_MC_CORNER_DY 0x{tables['corner_bits'][1]:02x}u",
        f"#define S4D_MC_CORNER_DZ 0x{tables['corner_bits'][2]:02x}u",
        "",
        "/* number of triangles of each case */",
        "S4D_MC_TABLE_STORAGE uint8_t s4d_mc_tri_count[256] = {",
    ]
    counts = [len(t) for t in tables["triangles"]]
    for r in range(0, 256, 16):
        lines.append("    " + ", ".join(str(c) for c in counts[r:r + 16]) + ",")
    lines.append("};")
    lines.append("")
    lines.append("/* crossed edges of each case (12-bit mask) */")
    lines.append("S4D_MC_TABLE_STORAGE uint16_t s4d_mc_edge_mask[256] = {")
    masks = tables["edge_mask"]
    for r in range(0, 256, 8):
        lines.append("    " + ", ".join(f"0x{m:03x}" for m in masks[r:r + 8]) + ",")
    lines.append("};")
    lines.append("")
    lines.append(f"/* triangles of each case: edge triples, -1 terminated (row width {width}) */")
    lines.append(f"S4D_MC_TABLE_STORAGE int8_t s4d_mc_tri_table[256][{width}] = {{")
    for c, tris in enumerate(tables["triangles"]):
        flat = [e for t in tris for e in t]
        flat += [-1] * (width - len(flat))
        lines.append("    {" + ", ".join(str(x) for x in flat) + f"}},  /* {c} */")
    lines.append("};")
    lines.append("")
    lines.append("#endif  /* S4D_MC_TABLES_H_ */")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the committed header instead of writing it")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / HEADER_NAME)
    args = parser.parse_args(argv)
    text = render(build_tables())
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is out of date; rerun {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
