"""What the user gives, up to the conditioning images (SPEC section 5), one stage a module:

1. ``frames``: :func:`~sdk.inputs.frames.load_frames` decodes a video file, a directory of frame
   images or an in-memory list and samples ``num_frames`` evenly (optionally in a time window).
2. ``matting``: :func:`~sdk.inputs.matting.remove_background` turns frames into RGBA (the input's
   alpha, rembg when its model is on disk, or a border-colour key).
3. ``conditioning``: :func:`~sdk.inputs.conditioning.prepare_sequence` crops every frame with ONE
   box onto a white square, what the image conditioner expects.

Every bad input raises :class:`~sdk.inputs.frames.InputError` (a ``ValueError``) naming the input.
"""
