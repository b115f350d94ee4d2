"""The bottom layer: what every other part of the SDK reads and nothing here imports back.

``contract`` (the deployment contract: part names, I/O, profiles, manifests), ``atomic`` (write to
a temporary, then rename; never replace what we did not write), ``tensorfile`` (safetensors read
and write without copies), ``grid`` (the one world box), ``extras`` (missing optional
dependencies), ``errors`` (the error types that cross layers), ``notices`` (one-line fallback
warnings), ``progress`` (progress bars), ``lazy`` (lazy package names), ``moved`` (the old module
paths, kept for one release) and ``version``.
"""
