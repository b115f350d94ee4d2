"""Video in, meshes out: the steps of :class:`~sdk.generation.pipeline.Generator`.

``settings`` (the one resolution and check of run settings), ``runtimes`` (torch, ONNX Runtime and
TensorRT behind one interface), ``sampling`` (the flow-matching sampler), ``decode`` (dense and
hierarchical field decoding), ``mcubes`` (marching cubes on CPU or GPU) and ``pipeline``
(``Generator``: frames -> conditioning -> sampling -> decoding -> meshes).
"""
