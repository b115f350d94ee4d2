"""What a run produces: :class:`~sdk.outputs.meshseq.MeshSequence` and its files.

``meshseq`` (the sequence, per-frame meshes, USD, the manifest, atomic saving), ``gltf`` (the
animated ``sequence.glb``), ``preview`` (``preview.mp4``), ``viewer`` (``viewer.html``),
``watchable`` (the three together), ``render`` (the headless NumPy rasteriser of contact sheets and
previews) and ``video`` (the SDK's one video writer).
"""
