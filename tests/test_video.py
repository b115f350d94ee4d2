"""sdk.inputs (frames, matting, conditioning): loading and sampling frames, background removal, the one-crop-box conditioning.

Every video, image and array is drawn fresh here (random colours and positions, never blank)
and written with PyAV / PIL into ``tmp_path``.
"""

from __future__ import annotations

import sys
import types

import av
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from sdk.inputs import matting as matting_mod
from sdk.outputs.video import write_video as sdk_write_video
from sdk.inputs.conditioning import PreparedSequence, prepare_sequence, save_conditioning_images
from sdk.inputs.frames import FrameSequence, InputError, load_frames, natural_sort_key, sample_indices
from sdk.inputs.matting import BORDER_KEY_THRESHOLD, border_key_alpha, rembg_model_path, remove_background

W, H, FPS, N = 96, 64, 30, 30
SQ = 16  # side of the moving square


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()


def saturated_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour far from any grey: one channel high, one low, one anywhere."""
    c = [int(rng.integers(215, 256)), int(rng.integers(0, 40)), int(rng.integers(0, 256))]
    rng.shuffle(c)
    return tuple(c)


def square_x(i: int) -> int:
    return 4 + 2 * i  # moves 2 px per frame, stays inside the 96 px width for 30 frames


def draw_frames(rng, n=N, w=W, h=H):
    """n RGB frames: a coloured square moving right on a grey background, plus masks."""
    grey = int(rng.integers(100, 156))
    colour = saturated_colour(rng)
    y = 2 * int(rng.integers(2, (h - SQ) // 2 - 2))  # even: 4:2:0 chroma covers 2x2 blocks
    frames, masks = [], []
    for i in range(n):
        f = np.full((h, w, 3), grey, np.uint8)
        m = np.zeros((h, w), bool)
        m[y:y + SQ, square_x(i):square_x(i) + SQ] = True
        f[m] = colour
        frames.append(f)
        masks.append(m)
    return frames, masks


def write_video(path, frames, codec, rate=FPS, pix_fmt="yuv420p", options=None):
    # crf 12 (libx264): near-lossless, the tests measure matting, not x264
    return sdk_write_video(frames, path, fps=rate, crf=12, codec=codec, pix_fmt=pix_fmt, options=options,
                           container=None)


def _writable(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
        return True
    except Exception:
        return False


MP4_CODEC = next((c for c in ("libx264", "h264", "mpeg4") if _writable(c)), None)


@pytest.fixture
def mp4(tmp_path, rng):
    if MP4_CODEC is None:
        pytest.skip("this PyAV build writes no mp4 video codec")
    frames, masks = draw_frames(rng)
    path = write_video(tmp_path / "clip.mp4", frames, MP4_CODEC)
    return path, frames, masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())



# --------------------------------------------------------------------------------------------
# Sampling rule and sort order
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("total,k", [(30, 8), (30, 30), (7, 1), (100, 16), (17, 16), (2, 2)])
def test_sample_indices_even_distinct(total, k):
    idx = sample_indices(total, k)
    assert idx == [int(i) for i in np.round(np.linspace(0, total - 1, k))]
    assert len(set(idx)) == k and idx == sorted(idx)
    assert idx[0] == 0 and (k == 1 or idx[-1] == total - 1)
    gaps = np.diff(idx)
    assert k < 3 or gaps.max() - gaps.min() <= 1


def test_natural_sort_key():
    names = ["f10.png", "f2.png", "F1.png", "f1a.png", "f100.png", "g.png"]
    assert sorted(names, key=natural_sort_key) == [
        "F1.png", "f1a.png", "f2.png", "f10.png", "f100.png", "g.png"]


# --------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------

def test_mp4_counts_samples_and_times(mp4):
    path, _, _ = mp4
    with av.open(str(path)) as c:  # the file really holds N frames
        assert sum(1 for _ in c.decode(video=0)) == N
    seq = load_frames(path, 8)
    assert isinstance(seq, FrameSequence)
    assert seq.total_frames == N
    assert seq.indices == sample_indices(N, 8)
    assert seq.source == str(path)
    assert len(seq.frames) == len(seq.times) == 8
    for f, i, t in zip(seq.frames, seq.indices, seq.times):
        assert f.dtype == np.uint8 and f.shape == (H, W, 3)
        assert t == pytest.approx(i / FPS, abs=1e-3)


def test_mp4_frames_match_drawn_content(mp4):
    path, drawn, masks = mp4
    seq = load_frames(path, 5)
    for f, i in zip(seq.frames, seq.indices):
        err = np.abs(f.astype(int) - drawn[i].astype(int)).mean()
        other = np.abs(f.astype(int) - drawn[(i + 10) % N].astype(int)).mean()
        assert err < 6 and err < other


def test_video_time_window(mp4):
    path, _, _ = mp4
    seq = load_frames(path, 5, start=0.5, end=1.0)  # frames 15..29 (t = 0.5 .. 0.967)
    assert seq.total_frames == 15
    assert seq.indices == [15 + i for i in sample_indices(15, 5)]
    assert all(0.5 - 1e-6 <= t < 1.0 for t in seq.times)
    assert seq.times[0] == pytest.approx(0.5, abs=1e-3)

    head = load_frames(path, 3, end=0.2)  # t < 0.2: frames 0..5
    assert head.total_frames == 6 and head.indices == [0, 2, 5]
    tail = load_frames(path, 2, start=0.9)  # frames 27..29
    assert tail.total_frames == 3 and tail.indices == [27, 29]


def test_too_few_frames_message_has_counts(mp4):
    path, _, _ = mp4
    with pytest.raises(InputError, match=r"has only 30 frames, 31 requested"):
        load_frames(path, 31)
    # 0.5 <= t < 0.73: frames 15..21 = 7 frames
    with pytest.raises(InputError, match=r"has only 7 frames in the selected range.*16 requested"):
        load_frames(path, 16, start=0.5, end=0.73)


@pytest.mark.parametrize("suffix,codec,pix_fmt,rate", [
    (".webm", "libvpx-vp9", "yuv420p", FPS),
    (".webm", "libvpx", "yuv420p", FPS),
    (".gif", "gif", "rgb8", 10),
    (".mkv", "ffv1", "yuv420p", FPS),
])
def test_other_containers(tmp_path, rng, suffix, codec, pix_fmt, rate):
    if not _writable(codec):
        pytest.skip(f"this PyAV build cannot write {codec}")
    frames, _ = draw_frames(rng, n=12)
    path = write_video(tmp_path / f"clip{suffix}", frames, codec, rate=rate, pix_fmt=pix_fmt)
    seq = load_frames(path, 4)
    assert seq.total_frames == 12
    assert seq.indices == [0, 4, 7, 11]
    assert seq.times == pytest.approx([i / rate for i in seq.indices], abs=2e-3)
    for f, i in zip(seq.frames, seq.indices):
        assert f.shape == (H, W, 3)  # GIF decodes to BGRA, but fully opaque -> RGB
        err = np.abs(f.astype(int) - frames[i].astype(int)).mean()
        other = np.abs(f.astype(int) - frames[(i + 6) % 12].astype(int)).mean()
        assert err < (30 if codec == "gif" else 8) and err < other  # GIF: 3-3-2 bit colour


def test_cut_stream_counts_real_frames(tmp_path, rng):
    """A Matroska file cut short has no frame count in its metadata: count what decodes."""
    if not _writable("ffv1"):
        pytest.skip("no ffv1 encoder")
    frames, _ = draw_frames(rng)
    path = write_video(tmp_path / "full.mkv", frames, "ffv1")
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    seq = load_frames(cut, 2)
    assert 2 <= seq.total_frames < N
    assert seq.indices == [0, seq.total_frames - 1]
    with pytest.raises(InputError, match=rf"has only {seq.total_frames} frames, {N} requested"):
        load_frames(cut, N)


def test_truncated_and_corrupt_videos(tmp_path, mp4):
    path, frames, _ = mp4
    data = path.read_bytes()
    half = tmp_path / "half.mp4"  # moov atom at the end: cut off
    half.write_bytes(data[: len(data) // 2])
    rand = tmp_path / "noise.mp4"
    rand.write_bytes(np.random.default_rng().integers(0, 256, 4096, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video, just text renamed to .mp4\n")
    empty = tmp_path / "empty.mov"
    empty.write_bytes(b"")
    for bad in (half, rand, text, empty):
        with pytest.raises(InputError, match="cannot decode video") as err:
            load_frames(bad, 4)
        assert bad.name in str(err.value)

    # moov first (faststart), data cut: the container opens and claims N frames, decoding fails
    fast = write_video(tmp_path / "fast.mp4", frames, MP4_CODEC,
                       options={"movflags": "faststart"})
    d = fast.read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(d[: len(d) // 2])
    with pytest.raises(InputError, match=r"cut\.mp4|only \d+ frames"):
        load_frames(cut, N)


def test_path_errors(tmp_path, rng):
    with pytest.raises(InputError, match="does not exist"):
        load_frames(tmp_path / "missing.mp4", 4)
    img = tmp_path / "one.png"
    Image.fromarray(draw_frames(rng, n=1)[0][0]).save(img)
    with pytest.raises(InputError, match="single image"):
        load_frames(img, 1)
    with pytest.raises(InputError, match="source must be"):
        load_frames(12345, 1)


# --------------------------------------------------------------------------------------------
# Directories and lists
# --------------------------------------------------------------------------------------------

def _rgba_frames(rng, n):
    frames, masks = draw_frames(rng, n=n)
    out = []
    for f, m in zip(frames, masks):
        a = np.where(m, 255, 0).astype(np.uint8)
        out.append(np.concatenate([f, a[..., None]], axis=2))
    return out, masks


def test_directory_natural_order_and_rgba(tmp_path, rng):
    frames, _ = _rgba_frames(rng, 12)
    d = tmp_path / "frames"
    d.mkdir()
    for i in rng.permutation(12):  # written in random order, named f1 .. f12
        Image.fromarray(frames[i]).save(d / f"f{i + 1}.png")
    (d / "notes.txt").write_text("not a frame")
    (d / "sub").mkdir()
    seq = load_frames(d, 4)
    assert seq.total_frames == 12
    assert seq.indices == [0, 4, 7, 11]
    assert seq.times == [None] * 4
    assert seq.source == str(d)
    for f, i in zip(seq.frames, seq.indices):
        assert f.shape == (H, W, 4)
        np.testing.assert_array_equal(f, frames[i])  # f10 comes after f2, alpha kept


def test_directory_jpg_and_webp(tmp_path, rng):
    frames, _ = draw_frames(rng, n=3)
    d = tmp_path / "mixed"
    d.mkdir()
    Image.fromarray(frames[0]).save(d / "a1.jpg", quality=95)
    Image.fromarray(frames[1]).save(d / "a2.webp", lossless=True)
    Image.fromarray(frames[2]).save(d / "a10.JPEG", quality=95)
    seq = load_frames(d, 3)
    assert [f.shape for f in seq.frames] == [(H, W, 3)] * 3
    for f, g in zip(seq.frames, frames):
        assert np.abs(f.astype(int) - g.astype(int)).mean() < 4


def test_directory_errors(tmp_path, rng):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="contains no images"):
        load_frames(empty, 1)
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="contains no images"):
        load_frames(only_text, 1)

    mixed = tmp_path / "sizes"
    mixed.mkdir()
    a, _ = draw_frames(rng, n=2)
    Image.fromarray(a[0]).save(mixed / "f1.png")
    Image.fromarray(a[1][:, : W // 2]).save(mixed / "f2.png")
    with pytest.raises(InputError, match="same size.*f2.png"):
        load_frames(mixed, 1)

    few = tmp_path / "few"
    few.mkdir()
    for i, f in enumerate(a):
        Image.fromarray(f).save(few / f"f{i}.png")
    with pytest.raises(InputError, match="has only 2 frames, 3 requested"):
        load_frames(few, 3)
    with pytest.raises(InputError, match="only apply to video"):
        load_frames(few, 1, start=0.0)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "f1.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="f1.png"):
        load_frames(broken, 1)


def test_list_of_arrays_and_pil(rng):
    frames, _ = draw_frames(rng, n=10)
    seq = load_frames(frames, 3)
    assert seq.indices == [0, 4, 9] and seq.total_frames == 10
    assert seq.times == [None] * 3
    assert seq.source == "<list of 10 images>"
    np.testing.assert_array_equal(seq.frames[1], frames[4])

    pil = [Image.fromarray(f) for f in frames]
    seq = load_frames(tuple(pil), 10)
    assert seq.indices == list(range(10))
    np.testing.assert_array_equal(seq.frames[7], frames[7])

    rgba, _ = _rgba_frames(rng, 4)
    seq = load_frames([Image.fromarray(f) for f in rgba], 2)
    assert seq.frames[0].shape == (H, W, 4)
    np.testing.assert_array_equal(seq.frames[1], rgba[3])

    stacked = load_frames(np.stack(frames), 2)  # a [T, H, W, 3] array
    np.testing.assert_array_equal(stacked.frames[1], frames[9])


def test_list_errors(rng):
    frames, _ = draw_frames(rng, n=4)
    with pytest.raises(InputError, match="empty"):
        load_frames([], 1)
    with pytest.raises(InputError, match="same size.*image 2"):
        load_frames(frames[:2] + [frames[2][:-2]], 1)
    with pytest.raises(InputError, match="image 1 .*dtype float32"):
        load_frames([frames[0], frames[1].astype(np.float32)], 1)
    with pytest.raises(InputError, match="image 0 .*shape"):
        load_frames([frames[0][..., 0]], 1)
    with pytest.raises(InputError, match="image 0 .*str"):
        load_frames(["frame.png"], 1)
    with pytest.raises(InputError, match="has only 4 frames, 16 requested"):
        load_frames(frames, 16)
    with pytest.raises(InputError, match="only apply to video"):
        load_frames(frames, 2, start=0.0, end=1.0)


def test_argument_errors(rng, mp4):
    path, _, _ = mp4
    frames, _ = draw_frames(rng, n=4)
    for bad in (0, -3):
        with pytest.raises(InputError, match="num_frames"):
            load_frames(frames, bad)
    with pytest.raises(InputError, match="num_frames"):
        load_frames(frames, 2.5)
    with pytest.raises(InputError, match=r"start \(1.0 s\) must be before end \(1.0 s\)"):
        load_frames(path, 2, start=1.0, end=1.0)
    with pytest.raises(InputError, match="start .* must be before end"):
        load_frames(path, 2, start=0.8, end=0.2)
    with pytest.raises(InputError, match="start must be"):
        load_frames(path, 2, start="soon")


# --------------------------------------------------------------------------------------------
# Background removal
# --------------------------------------------------------------------------------------------

def test_alpha_path_and_none(rng):
    rgba, _ = _rgba_frames(rng, 3)
    out, method = remove_background(rgba, "auto")
    assert method == "alpha"
    for a, b in zip(out, rgba):
        np.testing.assert_array_equal(a, b)
    out, method = remove_background(rgba, "none")  # real alpha is still trusted
    assert method == "alpha"

    frames, _ = draw_frames(rng, n=2)
    out, method = remove_background(frames, "none")
    assert method == "none"
    assert all(f.shape == (H, W, 4) and (f[..., 3] == 255).all() for f in out)
    np.testing.assert_array_equal(out[1][..., :3], frames[1])

    opaque = [np.concatenate([f, np.full((H, W, 1), 255, np.uint8)], axis=2) for f in frames]
    _, method = remove_background(opaque, "none")  # all-255 alpha is not "real" alpha
    assert method == "none"

    with pytest.raises(InputError, match="matting must be one of"):
        remove_background(frames, "magic")
    with pytest.raises(InputError, match="frames"):
        remove_background([], "none")


def test_border_key_quality(rng):
    h, w = 120, 160
    for _ in range(4):
        bg = saturated_colour(rng) if rng.random() < 0.5 else (int(rng.integers(0, 256)),) * 3
        obj = saturated_colour(rng)
        while np.linalg.norm(np.subtract(obj, bg)) < 3 * BORDER_KEY_THRESHOLD:
            obj = saturated_colour(rng)
        img = np.empty((h, w, 3), np.uint8)
        img[:] = bg
        s = int(rng.integers(25, 60))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        mask = np.zeros((h, w), bool)
        mask[y:y + s, x:x + s] = True
        img[mask] = obj
        noise = rng.integers(-6, 7, img.shape)
        img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
        alpha = border_key_alpha(img)
        assert set(np.unique(alpha)) <= {0, 255}
        assert iou(alpha > 127, mask) > 0.9


def test_border_key_on_decoded_video(mp4, monkeypatch, tmp_path):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no_models"))  # auto -> border key
    path, _, masks = mp4
    seq = load_frames(path, 6)
    out, method = remove_background(seq.frames, "auto")
    assert method == "border-key"
    for f, i in zip(out, seq.indices):
        assert f.shape == (H, W, 4)
        assert iou(f[..., 3] > 127, masks[i]) > 0.9
    out2, method2 = remove_background(seq.frames, "border")
    assert method2 == "border-key"
    np.testing.assert_array_equal(out2[0], out[0])


def test_rembg_model_path_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("U2NET_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert rembg_model_path() == tmp_path / "home" / ".u2net" / "u2net.onnx"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert rembg_model_path() == tmp_path / "xdg" / ".u2net" / "u2net.onnx"
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "models"))
    assert rembg_model_path() == tmp_path / "models" / "u2net.onnx"


def test_rembg_explicit_errors(monkeypatch, tmp_path, rng):
    frames, _ = draw_frames(rng, n=2)
    models = tmp_path / "models"
    monkeypatch.setenv("U2NET_HOME", str(models))
    expected = str(models / "u2net.onnx")
    with pytest.raises(InputError, match="model file is missing") as err:
        remove_background(frames, "rembg")
    assert expected in str(err.value)

    # model on disk but rembg does not import
    models.mkdir()
    (models / "u2net.onnx").write_bytes(b"stand-in")
    monkeypatch.setitem(sys.modules, "rembg", None)  # makes `import rembg` raise ImportError
    with pytest.raises(InputError, match="import rembg") as err:
        remove_background(frames, "rembg")
    assert expected in str(err.value)
    _, method = remove_background(frames, "auto")
    assert method == "border-key"


def test_rembg_used_when_available(monkeypatch, tmp_path, rng):
    """With the model on disk and an importable rembg, auto uses it (a stand-in module here)."""
    frames, masks = draw_frames(rng, n=3)
    models = tmp_path / "models"
    models.mkdir()
    (models / "u2net.onnx").write_bytes(b"stand-in")
    monkeypatch.setenv("U2NET_HOME", str(models))
    calls = {"sessions": 0, "frames": 0}

    def new_session(name="u2net", *args, **kwargs):
        assert name == "u2net"
        calls["sessions"] += 1
        return object()

    def remove(image, session=None, **kwargs):
        assert session is not None
        calls["frames"] += 1
        arr = np.asarray(image)
        a = np.full(arr.shape[:2], 7, np.uint8)
        a[: arr.shape[0] // 2] = 200
        return Image.fromarray(np.concatenate([arr, a[..., None]], axis=2))

    fake = types.ModuleType("rembg")
    fake.new_session, fake.remove = new_session, remove
    monkeypatch.setitem(sys.modules, "rembg", fake)
    monkeypatch.setattr(matting_mod, "_REMBG_SESSIONS", {})
    out, method = remove_background(frames, "auto")
    assert method == "rembg"
    assert calls == {"sessions": 1, "frames": 3}
    assert (out[0][: H // 2, :, 3] == 200).all() and (out[0][H // 2:, :, 3] == 7).all()
    np.testing.assert_array_equal(out[2][..., :3], frames[2])
    _, method = remove_background(frames, "rembg")
    assert method == "rembg" and calls["sessions"] == 1  # session cached


# --------------------------------------------------------------------------------------------
# One crop box, white background
# --------------------------------------------------------------------------------------------

def _object_pixels(img: torch.Tensor) -> np.ndarray:
    """Object mask of a [3, S, S] image in [-1, 1] (one object colour on white).

    A pixel counts when it is more than half-way from white to the object colour, so the edge
    sits where a linear (bilinear) ramp crosses 50 %: at the object's true edge.
    """
    d = (1.0 - img).sum(dim=0)
    return (d > 0.5 * d.max()).numpy()


def test_prepare_union_box_consistent_scale_and_position(rng):
    rgba, masks = _rgba_frames(rng, 5)  # the square moves 2 px right per frame
    prep = prepare_sequence(rgba, matting="auto", size=512, fill=0.85)
    assert isinstance(prep, PreparedSequence)
    assert prep.matting == "alpha"
    ys, xs = np.nonzero(np.any(masks, axis=0))
    assert prep.crop_box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    x0, y0, x1, y1 = prep.crop_box
    assert (x1 - x0, y1 - y0) == (SQ + 2 * 4, SQ)

    imgs = prep.images
    assert imgs.shape == (5, 3, 512, 512) and imgs.dtype == torch.float32
    assert imgs.min() >= -1.0 and imgs.max() <= 1.0
    assert torch.all(imgs[:, :, :8, :] == 1.0) and torch.all(imgs[:, :, :, -8:] == 1.0)

    scale = 0.85 * 512 / (x1 - x0)
    boxes = []
    for t in range(5):
        m = _object_pixels(imgs[t])
        r, c = np.nonzero(m)
        boxes.append((c.min(), r.min(), c.max() + 1, r.max() + 1))
    widths = {b[2] - b[0] for b in boxes}
    heights = {b[3] - b[1] for b in boxes}
    assert max(widths) - min(widths) <= 2 and max(heights) - min(heights) <= 2  # same size
    assert abs(np.mean(list(widths)) - SQ * scale) <= 3
    lefts = [b[0] for b in boxes]
    assert all(np.diff(lefts) > 0)  # it moves, it is not re-centred
    assert np.allclose(np.diff(lefts), 2 * scale, atol=2)
    assert len({b[1] for b in boxes}) == 1  # same vertical position
    # the union spans fill * size along its long side, centred
    assert abs((boxes[-1][2] - boxes[0][0]) - 0.85 * 512) <= 2
    assert abs((boxes[0][0] + boxes[-1][2]) / 2 - 256) <= 2
    # colour is the drawn colour (object on white, alpha 255 inside)
    colour = rgba[0][masks[0]][0, :3].astype(np.float32) / 127.5 - 1.0
    cy, cx = (boxes[0][1] + boxes[0][3]) // 2, (boxes[0][0] + boxes[0][2]) // 2
    assert torch.allclose(imgs[0, :, cy, cx], torch.from_numpy(colour), atol=0.02)


def test_prepare_premultiplies_over_white_and_ignores_empty_frames(rng):
    h, w = 80, 100
    colour = np.array(saturated_colour(rng), np.uint8)
    frames = []
    for x in (10, 40):
        f = np.zeros((h, w, 4), np.uint8)
        f[..., :3] = rng.integers(0, 256, (h, w, 3))  # garbage under alpha 0
        f[20:50, x:x + 30, :3] = colour
        f[20:50, x:x + 30, 3] = 200
        frames.append(f)
    empty = np.zeros((h, w, 4), np.uint8)
    empty[..., :3] = 255 - colour
    prep = prepare_sequence([frames[0], empty, frames[1]], size=128)
    assert prep.crop_box == (10, 20, 70, 50)
    assert prep.images.shape == (3, 3, 128, 128)
    a = 200 / 255
    expected = (colour * a + 255 * (1 - a)) / 127.5 - 1.0
    m = _object_pixels(prep.images[0])
    r, c = np.nonzero(m)
    centre = prep.images[0, :, (r.min() + r.max()) // 2, (c.min() + c.max()) // 2]
    assert torch.allclose(centre, torch.tensor(expected, dtype=torch.float32), atol=0.02)
    assert torch.all(prep.images[1] == 1.0)  # the empty frame is plain white
    # background garbage (alpha 0) never shows: beyond the object's resampled edge, all white
    near = ndimage.binary_dilation(m, iterations=3)
    assert (prep.images[0][:, ~near] == 1.0).all()


def test_prepare_from_video_with_border_key(mp4, monkeypatch, tmp_path):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no_models"))
    path, _, masks = mp4
    seq = load_frames(path, 4)
    prep = prepare_sequence(seq.frames, matting="auto", size=256)
    assert prep.matting == "border-key"
    assert prep.images.shape == (4, 3, 256, 256)
    union = np.any([masks[i] for i in seq.indices], axis=0)
    ys, xs = np.nonzero(union)
    x0, y0, x1, y1 = prep.crop_box
    # lossy 4:2:0 video smears colour edges by a pixel or two
    assert abs(x0 - xs.min()) <= 2 and abs(x1 - xs.max() - 1) <= 2
    assert abs(y0 - ys.min()) <= 2 and abs(y1 - ys.max() - 1) <= 2
    assert torch.all(prep.images[:, :, :4, :] == 1.0)


def test_prepare_errors(rng):
    empty = [np.zeros((H, W, 4), np.uint8) for _ in range(3)]
    for f in empty:
        f[..., :3] = rng.integers(0, 256, (H, W, 3))
    with pytest.raises(InputError, match=r"no object found in any frame \(matting=alpha\)"):
        prepare_sequence(empty)
    frames, _ = draw_frames(rng, n=2)
    with pytest.raises(InputError, match="fill"):
        prepare_sequence(frames, matting="none", fill=1.5)
    with pytest.raises(InputError, match="size"):
        prepare_sequence(frames, matting="none", size=0)
    with pytest.raises(InputError, match="same size"):
        prepare_sequence([frames[0], frames[1][:-4]], matting="none")


def test_save_conditioning_images(tmp_path, rng):
    rgba, _ = _rgba_frames(rng, 3)
    prep = prepare_sequence(rgba)
    paths = save_conditioning_images(prep, tmp_path / "out" / "cond")
    assert [p.name for p in paths] == ["cond_0000.png", "cond_0001.png", "cond_0002.png"]
    for p, img in zip(paths, prep.images):
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.size == (512, 512)
            arr = torch.from_numpy(np.asarray(im).astype(np.float32)).permute(2, 0, 1)
        assert torch.allclose(arr / 127.5 - 1.0, img, atol=1 / 127.5 + 1e-6)
