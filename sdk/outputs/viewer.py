"""``viewer.html``: one self-contained page that plays the mesh sequence in any modern browser, with
no network access at view time (no CDN, no fetch: the meshes are inside the page).

* Data: every frame's vertices quantised to uint16 over the sequence's bounding box, its
  triangle indices (uint16, or uint32 past 65535 vertices), both delta-coded (wrapping) and split
  into byte planes, then zlib-compressed and base64-encoded into a ``<script>`` tag. The page
  inflates it with the browser's ``DecompressionStream`` (Chrome 80+, Firefox 113+, Safari 16.4+).
  Frames over ``max_faces`` triangles are simplified for the page only (vertex clustering).
* Drawing: a small hand-written software rasteriser (z-buffer, Gouraud-shaded Lambert light like
  ``sdk.outputs.render``, 2x supersampled) into a Canvas 2D ``ImageData``: no WebGL, so it works
  the same in headless browsers and on machines without a GPU.
* Controls: play/pause button (or space), frame slider (or arrow keys), drag to orbit, wheel to
  zoom. Playback follows the clip's frame times (``sdk.outputs.gltf.animation_times``).
* Test hooks: ``viewer.html?frame=K`` opens paused on frame K (``&az=&el=&zoom=``: the first
  view, degrees and a distance factor); ``window.s4dViewer`` has
  ``setFrame(i)``, ``play()``, ``pause()``, ``frame``, ``numFrames``; ``<body data-state>`` is
  ``ready`` once a frame is drawn (``error`` with a message otherwise), ``data-frame`` the
  frame shown and ``data-draws`` how many times a frame was drawn (playback advances it).

``screenshot`` / ``dump_dom`` drive a headless Chromium (Debian's ``chromium``) to check a page.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

MAX_FACES = 50_000  # per frame in the page; more is simplified (the files keep every triangle)
MAX_TOTAL_FACES = 800_000  # over all frames: long sequences get a smaller per-frame budget
BACKGROUND = (242, 242, 244)  # the page's canvas colour, what tests compare against


def cluster_decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Simplify a triangle mesh to at most ``max_faces`` faces by vertex clustering on a grid
    (each cell's vertices merge into their mean; collapsed and duplicate faces are dropped).
    Winding is kept; the result may be non-manifold, which is fine for viewing."""
    vertices = np.asarray(vertices, np.float64).reshape(-1, 3)
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    if len(faces) <= max_faces:
        return vertices, faces
    if max_faces < 1:
        raise ValueError(f"max_faces must be >= 1, got {max_faces}")
    lo = vertices.min(0)
    extent = max(float((vertices.max(0) - lo).max()), 1e-12)
    cells = math.sqrt(max_faces / 2)  # cells along the longest side; faces grow ~ cells^2
    while True:
        res = int(max(cells, 1))
        key = np.clip(np.floor((vertices - lo) / extent * res), 0, res).astype(np.int64)
        cluster = np.unique((key[:, 0] * (res + 1) + key[:, 1]) * (res + 1) + key[:, 2], return_inverse=True)[1]
        f = cluster.reshape(-1)[faces]
        f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
        f = f[np.sort(np.unique(np.sort(f, axis=1), axis=0, return_index=True)[1])]
        if len(f) <= max_faces or res == 1:
            break
        cells = res * min(0.9, math.sqrt(max_faces / len(f)))
    used, f = np.unique(f, return_inverse=True)
    counts = np.bincount(cluster.reshape(-1))
    means = np.stack([np.bincount(cluster.reshape(-1), weights=vertices[:, a]) for a in range(3)], 1) / counts[:, None]
    return means[used], f.reshape(-1, 3)


def _planes(values: np.ndarray) -> bytes:
    """Wrapping deltas of unsigned little-endian integers, split into byte planes (low first):
    smooth sequences become long runs of small bytes, which zlib compresses well."""
    values = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<"))
    deltas = np.diff(values, prepend=values.dtype.type(0))  # unsigned: wraps modulo 2^bits
    return np.ascontiguousarray(deltas.view(np.uint8).reshape(-1, values.itemsize).T).tobytes()


def viewer_payload(meshes: Sequence, frame_times: Sequence[float | None] = (), max_faces: int = MAX_FACES,
                   max_total_faces: int = MAX_TOTAL_FACES) -> tuple[dict, bytes]:
    """The page's metadata and its compressed binary (see the module docstring)."""
    from .gltf import animation_times, clip_fps

    n = len(meshes)
    if n == 0:
        raise ValueError("the viewer needs at least one frame")
    budget = max(1, min(max_faces, max_total_faces // n))
    empty = (np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    frames = [cluster_decimate(m.vertices, m.faces, budget) if len(m.faces) else empty for m in meshes]
    points = [v for v, f in frames if len(f)]
    lo = np.min([v.min(0) for v in points], 0) if points else np.zeros(3)
    hi = np.max([v.max(0) for v in points], 0) if points else np.ones(3)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    info, chunks = [], []
    for (v, f), mesh in zip(frames, meshes):
        q = np.round((v - lo) / span * 65535).astype(np.uint16)
        wide = len(v) > 65535
        chunks.append(_planes(q.T.reshape(-1)))  # x plane, y plane, z plane
        chunks.append(_planes(f.reshape(-1).astype(np.uint32 if wide else np.uint16)))
        info.append({"v": int(len(v)), "f": int(len(f)), "i32": wide, "source_faces": int(len(mesh.faces))})
    meta = {"frames": info, "times": animation_times(frame_times, n), "fps": clip_fps(frame_times, n),
            "box": [lo.tolist(), hi.tolist()], "background": list(BACKGROUND)}
    return meta, zlib.compress(b"".join(chunks), 6)


def build_viewer(meshes: Sequence, frame_times: Sequence[float | None] = (), title: str = "Sculpt4D sequence",
                 max_faces: int = MAX_FACES) -> str:
    """The page's HTML text."""
    meta, blob = viewer_payload(meshes, frame_times, max_faces)
    meta["title"] = title
    meta_json = json.dumps(meta, separators=(",", ":")).replace("<", "\\u003c")  # cannot close the <script>
    data = base64.b64encode(blob).decode("ascii")
    values = {"TITLE": html.escape(title), "META": meta_json, "BG": "#%02x%02x%02x" % BACKGROUND, "DATA": data}
    return re.sub(r"@(TITLE|META|BG|DATA)@", lambda m: values[m[1]], _PAGE)  # one pass: values stay as they are


def write_viewer(meshes: Sequence, path: str | os.PathLike, frame_times: Sequence[float | None] = (),
                 title: str = "Sculpt4D sequence", max_faces: int = MAX_FACES) -> Path:
    """Write ``viewer.html``; returns the path."""
    path = Path(path)
    path.write_text(build_viewer(meshes, frame_times, title, max_faces), encoding="utf-8")
    return path


# --- headless Chromium (tests, README screenshot) -------------------------------------------------

def find_chromium() -> str | None:
    """A Chromium/Chrome executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium(page: str | os.PathLike, action: list[str], frame: int | None, size: tuple[int, int],
              chromium: str | None, budget_ms: int, timeout: float, query: str = "") -> subprocess.CompletedProcess:
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium on PATH (Debian: apt-get install chromium)")
    query = "&".join(q for q in ("" if frame is None else f"frame={int(frame)}", query) if q)
    url = Path(page).resolve().as_uri() + (f"?{query}" if query else "")
    with tempfile.TemporaryDirectory(prefix="s4d-chromium-") as profile:
        cmd = [exe, "--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--mute-audio", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={budget_ms}", *action, url]
        # No sandbox: Chromium refuses one as root and many containers cannot give it one; the
        # page is our own file, with no network.
        cmd.insert(2, "--no-sandbox")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise RuntimeError(f"chromium failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def screenshot(page: str | os.PathLike, png: str | os.PathLike, frame: int | None = None,
               size: tuple[int, int] = (960, 640), chromium: str | None = None, budget_ms: int = 10_000,
               timeout: float = 180, query: str = "") -> Path:
    """Load ``page`` from disk in headless Chromium (``?frame=K`` when ``frame`` is given, plus
    ``query``, e.g. ``"az=120"``) and save a PNG of the window; returns the PNG's path."""
    png = Path(png).resolve()
    _chromium(page, [f"--screenshot={png}"], frame, size, chromium, budget_ms, timeout, query)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png


def dump_dom(page: str | os.PathLike, frame: int | None = None, size: tuple[int, int] = (960, 640),
             chromium: str | None = None, budget_ms: int = 10_000, timeout: float = 180) -> str:
    """The page's DOM (as serialised by headless Chromium) after its scripts ran."""
    return _chromium(page, ["--dump-dom"], frame, size, chromium, budget_ms, timeout).stdout


_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>
html, body { margin: 0; height: 100%; overflow: hidden; background: @BG@; color: #222;
  font: 14px/1.3 system-ui, -apple-system, "Segoe UI", sans-serif; }
#view { position: absolute; left: 0; top: 0; right: 0; bottom: 48px; }
#view canvas { display: block; width: 100%; height: 100%; cursor: grab; touch-action: none; }
#title { position: absolute; left: 12px; top: 10px; font-weight: 600; pointer-events: none; }
#msg { position: absolute; left: 12px; top: 30px; color: #555; pointer-events: none; }
#bar { position: absolute; left: 0; right: 0; bottom: 0; height: 48px; box-sizing: border-box;
  display: flex; align-items: center; gap: 12px; padding: 0 12px; background: #fff; border-top: 1px solid #d8d8dc; }
#play { min-width: 72px; height: 30px; }
#slider { flex: 1; }
#label { min-width: 200px; font-variant-numeric: tabular-nums; text-align: right; }
</style>
</head>
<body data-state="loading" data-frame="">
<div id="view"><canvas id="canvas" aria-label="mesh sequence"></canvas><div id="title">@TITLE@</div>
<div id="msg">loading...</div></div>
<div id="bar"><button id="play" type="button">Pause</button>
<input id="slider" type="range" min="0" max="0" step="1" value="0" aria-label="frame">
<span id="label"></span></div>
<script id="s4d-meta" type="application/json">@META@</script>
<script id="s4d-data" type="application/octet-stream">@DATA@</script>
<script>
(function () {
  "use strict";
  var meta = JSON.parse(document.getElementById("s4d-meta").textContent);
  var n = meta.frames.length, times = meta.times, period = 1 / meta.fps;
  var canvas = document.getElementById("canvas"), ctx = canvas.getContext("2d");
  var slider = document.getElementById("slider"), button = document.getElementById("play");
  var label = document.getElementById("label"), msg = document.getElementById("msg");
  var params = new URLSearchParams(location.search);
  var frames = [], current = 0, playing = false, timer = null, draws = 0;
  var lo = meta.box[0], hi = meta.box[1];
  var center = [0, 1, 2].map(function (a) { return (lo[a] + hi[a]) / 2; });
  var radius = Math.max(1e-6, 0.5 * Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]));
  var view = { az: 30, el: 20, zoom: 1, fov: 40 };  // ?az=&el=&zoom= set the first view
  ["az", "el", "zoom"].forEach(function (k) { var v = parseFloat(params.get(k)); if (isFinite(v)) view[k] = v; });
  var BG = meta.background;
  var off = document.createElement("canvas"), offCtx = off.getContext("2d"), image = null, zbuf = null;

  function fail(text) { msg.textContent = text; document.body.dataset.state = "error"; }

  function base64Bytes(text) {
    var bin = atob(text.replace(/\s+/g, "")), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // Inverse of the writer's byte planes + wrapping deltas: count values of `width` bytes at `at`.
  function unplane(bytes, at, count, width, Out) {
    var out = new Out(count), mask = width === 2 ? 0xffff : 0xffffffff, acc = 0;
    for (var i = 0; i < count; i++) {
      var v = 0;
      for (var b = width - 1; b >= 0; b--) v = v * 256 + bytes[at + b * count + i];
      acc = (acc + v) % (mask + 1);
      out[i] = acc;
    }
    return out;
  }

  function vertexNormals(pos, idx) {
    var nrm = new Float32Array(pos.length);
    for (var t = 0; t < idx.length; t += 3) {
      var a = 3 * idx[t], b = 3 * idx[t + 1], c = 3 * idx[t + 2];
      var ux = pos[b] - pos[a], uy = pos[b + 1] - pos[a + 1], uz = pos[b + 2] - pos[a + 2];
      var vx = pos[c] - pos[a], vy = pos[c + 1] - pos[a + 1], vz = pos[c + 2] - pos[a + 2];
      var nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
      nrm[a] += nx; nrm[a + 1] += ny; nrm[a + 2] += nz; nrm[b] += nx; nrm[b + 1] += ny; nrm[b + 2] += nz;
      nrm[c] += nx; nrm[c + 1] += ny; nrm[c + 2] += nz;
    }
    for (var i = 0; i < nrm.length; i += 3) {
      var l = Math.hypot(nrm[i], nrm[i + 1], nrm[i + 2]) || 1;
      nrm[i] /= l; nrm[i + 1] /= l; nrm[i + 2] /= l;
    }
    return nrm;
  }

  function unpack(bytes) {
    var at = 0;
    meta.frames.forEach(function (f) {
      var q = unplane(bytes, at, 3 * f.v, 2, Uint16Array), pos = new Float32Array(3 * f.v);
      at += 6 * f.v;
      for (var a = 0; a < 3; a++) {
        var scale = (hi[a] - lo[a]) / 65535;
        for (var i = 0; i < f.v; i++) pos[3 * i + a] = lo[a] + q[a * f.v + i] * scale;
      }
      var width = f.i32 ? 4 : 2, idx = unplane(bytes, at, 3 * f.f, width, f.i32 ? Uint32Array : Uint16Array);
      at += 3 * f.f * width;
      frames.push({ pos: pos, idx: idx, nrm: vertexNormals(pos, idx) });
    });
  }

  function resize() {
    var rect = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(rect.width * dpr));
    canvas.height = Math.max(1, Math.round(rect.height * dpr));
    var ss = dpr >= 2 ? 1 : 2;  // supersample for smooth edges
    off.width = canvas.width * ss; off.height = canvas.height * ss;
    image = offCtx.createImageData(off.width, off.height);
    zbuf = new Float32Array(off.width * off.height);
  }

  function draw() {
    if (!frames.length) return;
    var W = off.width, H = off.height, px = new Uint32Array(image.data.buffer);
    px.fill((255 << 24 | BG[2] << 16 | BG[1] << 8 | BG[0]) >>> 0);
    zbuf.fill(Infinity);
    var az = view.az * Math.PI / 180, el = view.el * Math.PI / 180;
    var dist = view.zoom * radius / Math.sin(view.fov * Math.PI / 360) * 1.05;
    var fx = -Math.sin(az) * Math.cos(el), fy = -Math.sin(el), fz = -Math.cos(az) * Math.cos(el);  // forward
    var ex = center[0] - dist * fx, ey = center[1] - dist * fy, ez = center[2] - dist * fz;
    var rl = Math.hypot(fz, fx) || 1, rx = -fz / rl, ry = 0, rz = fx / rl;  // right = forward x up
    var ux = ry * fz - rz * fy, uy = rz * fx - rx * fz, uz = rx * fy - ry * fx;  // up = right x forward
    var lx = -fx + 0.6 * ux - 0.5 * rx, ly = -fy + 0.6 * uy - 0.5 * ry, lz = -fz + 0.6 * uz - 0.5 * rz;
    var ll = Math.hypot(lx, ly, lz); lx /= ll; ly /= ll; lz /= ll;
    var focal = 0.5 * Math.min(W, H) / Math.tan(view.fov * Math.PI / 360);
    var fr = frames[current], pos = fr.pos, idx = fr.idx, nrm = fr.nrm, nv = pos.length / 3;
    var sx = new Float32Array(nv), sy = new Float32Array(nv), sz = new Float32Array(nv), sh = new Float32Array(nv);
    for (var i = 0; i < nv; i++) {
      var dx = pos[3 * i] - ex, dy = pos[3 * i + 1] - ey, dz = pos[3 * i + 2] - ez;
      var z = dx * fx + dy * fy + dz * fz;
      sz[i] = z;
      var zc = z > 1e-6 ? z : 1e-6;
      sx[i] = 0.5 * W + focal * (dx * rx + dy * ry + dz * rz) / zc;
      sy[i] = 0.5 * H - focal * (dx * ux + dy * uy + dz * uz) / zc;
      var d = nrm[3 * i] * lx + nrm[3 * i + 1] * ly + nrm[3 * i + 2] * lz;
      sh[i] = 0.35 + 0.65 * (d > 0 ? d : 0);
    }
    var cr = 0.72 * 255, cg = 0.72 * 255, cb = 0.75 * 255;
    for (var t = 0; t < idx.length; t += 3) {
      var a = idx[t], b = idx[t + 1], c = idx[t + 2];
      if (sz[a] <= 1e-6 || sz[b] <= 1e-6 || sz[c] <= 1e-6) continue;
      var x0 = sx[a], y0 = sy[a], x1 = sx[b], y1 = sy[b], x2 = sx[c], y2 = sy[c];
      var area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0);
      if (area > -1e-9) continue;  // back face (front faces wind clockwise on screen, y down)
      var minX = Math.max(0, Math.floor(Math.min(x0, x1, x2) - 0.5));
      var maxX = Math.min(W - 1, Math.ceil(Math.max(x0, x1, x2) - 0.5));
      var minY = Math.max(0, Math.floor(Math.min(y0, y1, y2) - 0.5));
      var maxY = Math.min(H - 1, Math.ceil(Math.max(y0, y1, y2) - 0.5));
      var iz0 = 1 / sz[a], iz1 = 1 / sz[b], iz2 = 1 / sz[c], s0 = sh[a], s1 = sh[b], s2 = sh[c];
      for (var y = minY; y <= maxY; y++) {
        var py = y + 0.5, row = y * W;
        for (var x = minX; x <= maxX; x++) {
          var pxl = x + 0.5;
          var b0 = ((x1 - pxl) * (y2 - py) - (y1 - py) * (x2 - pxl)) / area;
          if (b0 < 0) continue;
          var b1 = ((x2 - pxl) * (y0 - py) - (y2 - py) * (x0 - pxl)) / area;
          if (b1 < 0) continue;
          var b2 = 1 - b0 - b1;
          if (b2 < 0) continue;
          var depth = 1 / (b0 * iz0 + b1 * iz1 + b2 * iz2);
          var k = row + x;
          if (depth >= zbuf[k]) continue;
          zbuf[k] = depth;
          var s = b0 * s0 + b1 * s1 + b2 * s2;
          px[k] = (255 << 24 | (cb * s) << 16 | (cg * s) << 8 | (cr * s)) >>> 0;
        }
      }
    }
    offCtx.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = "high";
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
    var info = meta.frames[current];
    label.textContent = "frame_" + String(current).padStart(4, "0") + " (" + (current + 1) + " of " + n +
      ")  \u00b7  " + times[current].toFixed(3) + " s";
    msg.textContent = info.f ? (info.f < info.source_faces ? "simplified for the page: " + info.f + " of " +
      info.source_faces + " triangles" : "") : "no surface in this frame";
    document.body.dataset.frame = String(current);
    document.body.dataset.draws = String(++draws);
    document.body.dataset.state = "ready";
  }

  function setFrame(i) {
    current = Math.max(0, Math.min(n - 1, Math.round(+i) || 0));
    slider.value = String(current);
    draw();
  }
  function setPlaying(on) { playing = on && n > 1; button.textContent = playing ? "Pause" : "Play"; schedule(); }

  function schedule() {  // timers, not requestAnimationFrame: the frame times set the pace
    clearTimeout(timer);
    if (!playing) return;
    var next = (current + 1) % n, wait = next ? times[next] - times[current] : period;
    timer = setTimeout(function () { setFrame(next); schedule(); }, Math.max(1, 1000 * wait));
  }

  button.addEventListener("click", function () { setPlaying(!playing); });
  slider.addEventListener("input", function () { setPlaying(false); setFrame(slider.value); });
  window.addEventListener("keydown", function (e) {
    if (e.key === " ") { setPlaying(!playing); e.preventDefault(); }
    else if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      setPlaying(false); setFrame(current + (e.key === "ArrowRight" ? 1 : -1)); e.preventDefault();
    }
  });
  var drag = null;
  canvas.addEventListener("pointerdown", function (e) {
    drag = [e.clientX, e.clientY];
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointerup", function () { drag = null; });
  canvas.addEventListener("pointermove", function (e) {
    if (!drag) return;
    view.az -= 0.4 * (e.clientX - drag[0]);
    view.el = Math.max(-89, Math.min(89, view.el + 0.4 * (e.clientY - drag[1])));
    drag = [e.clientX, e.clientY];
    draw();
  });
  canvas.addEventListener("wheel", function (e) {
    view.zoom = Math.max(0.2, Math.min(5, view.zoom * Math.exp(0.001 * e.deltaY)));
    e.preventDefault();
    draw();
  }, { passive: false });
  window.addEventListener("resize", function () { resize(); draw(); });

  window.s4dViewer = {
    setFrame: function (i) { setPlaying(false); setFrame(i); },
    play: function () { setPlaying(true); }, pause: function () { setPlaying(false); },
    get frame() { return current; }, numFrames: n, times: times, view: view, redraw: function () { draw(); }
  };

  slider.max = String(n - 1);
  if (typeof DecompressionStream === "undefined") {
    fail("This browser cannot unpack the embedded meshes (it lacks DecompressionStream: " +
         "use Chrome/Edge 80+, Firefox 113+ or Safari 16.4+).");
    return;
  }
  var packed = base64Bytes(document.getElementById("s4d-data").textContent);
  var stream = new Blob([packed]).stream().pipeThrough(new DecompressionStream("deflate"));
  new Response(stream).arrayBuffer().then(function (buffer) {
    unpack(new Uint8Array(buffer));
    resize();
    var pinned = params.get("frame");
    setFrame(pinned === null ? 0 : pinned);
    setPlaying(pinned === null && params.get("autoplay") !== "0");
  }).catch(function (err) { fail("Cannot read the embedded meshes: " + err); });
})();
</script>
</body>
</html>
"""
