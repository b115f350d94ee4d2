"""Many clips at once: ``s4d-convert``'s per-clip work shared by the local loop and the cluster
(``clips``: expand inputs, plan outputs, convert one clip with a timeout), inputs and outputs in
object storage (``storage``) and scale-out on a Ray cluster (``distributed``).

``sdk.batch`` used to be one module; its names still resolve here, with a deprecation warning.
"""

from ..core.moved import forward_moved_names

__getattr__ = forward_moved_names(__name__)
