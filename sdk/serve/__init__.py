"""``s4d-serve``: the HTTP service around the Generator (FastAPI + uvicorn, the ``[serve]`` extra).

- ``store``: the durable job queue (SQLite, WAL) in the data directory.
- ``jobs``: a job's request, the data directory, one run, the workers of one machine.
- ``app``: the HTTP API (routes, auth, upload limit, metrics).
- ``ray_serve``: the same application as a Ray Serve deployment (``s4d-serve --ray``).
"""
