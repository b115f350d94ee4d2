"""Quality of a mesh sequence against ground truth (``metrics``): Chamfer, F-score, voxel IoU,
optional rigid registration and temporal jitter, the conventions of ``s4d-eval``."""
