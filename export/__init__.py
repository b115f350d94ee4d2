"""Sculpt4D export: ONNX graphs with the ``s4d::BlockSparseAttention`` op (``onnx``), TensorRT and
TensorRT-RTX engines (``tensorrt``), the content-hashed engine cache (``builder``) and the
``s4d-export`` command (``cli``)."""
