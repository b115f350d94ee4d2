"""Sculpt4D export tools: compute planning now; ONNX export and TensorRT engine builds follow."""
