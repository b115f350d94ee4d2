"""User inputs -> the conditioning images of the video -> 4D mesh pipeline (SPEC section 5).

Three stages, each usable on its own and each in its own module:

1. ``sdk.frames``: :func:`load_frames` decodes a video file, a directory of frame images or an
   in-memory list of images, and samples ``num_frames`` of them evenly (optionally inside a
   ``[start, end)`` time window). The SDK's one video writer, :func:`write_video`, lives there too.
2. ``sdk.matting``: :func:`remove_background` turns the frames into RGBA (the input's alpha,
   rembg when its model is on disk, or a border-colour key).
3. ``sdk.conditioning``: :func:`prepare_sequence` crops every frame with ONE box and scales it
   onto a white square: ``[T, 3, size, size]`` in [-1, 1], what the image conditioner expects.

This module keeps the names' old home: ``from sdk.video import X`` works as before.
Every bad input raises :class:`InputError` (a ``ValueError``) whose message names the input and
says what was expected.
"""

from __future__ import annotations

from .conditioning import PreparedSequence, object_box, prepare_sequence, save_conditioning_images
from .frames import (IMAGE_EXTENSIONS, MAX_FRAME_PIXELS, MAX_FRAME_PIXELS_ENV, VIDEO_EXTENSIONS,  # noqa: F401
                     FrameSequence, InputError, as_frame_list, broken_link_reason, check_time_window, load_frames,
                     max_frame_pixels, natural_sort_key, sample_indices, write_video)
from .matting import (BORDER_KEY_THRESHOLD, MATTING_METHODS, REMBG_MODEL_FILE, REMBG_MODEL_MD5,  # noqa: F401
                      border_key_alpha, rembg_model_path, rembg_status, remove_background)

__all__ = [
    "BORDER_KEY_THRESHOLD",
    "FrameSequence",
    "IMAGE_EXTENSIONS",
    "InputError",
    "MATTING_METHODS",
    "MAX_FRAME_PIXELS",
    "PreparedSequence",
    "REMBG_MODEL_FILE",
    "VIDEO_EXTENSIONS",
    "border_key_alpha",
    "broken_link_reason",
    "check_time_window",
    "load_frames",
    "max_frame_pixels",
    "natural_sort_key",
    "object_box",
    "prepare_sequence",
    "rembg_model_path",
    "rembg_status",
    "remove_background",
    "sample_indices",
    "save_conditioning_images",
    "write_video",
]
