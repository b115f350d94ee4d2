"""safetensors files without holding a model twice in memory.

``map_safetensors`` maps a file and returns tensors that VIEW the mapping (copy-on-write, private):
pages are read on first touch, shared with the page cache, and nothing is copied up front, so a
6 GB fp16 DiT costs no anonymous memory until something writes to it. ``SafetensorsWriter``
streams tensors to disk one at a time, so a checkpoint can be produced part by part.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``
(offsets relative to the data section that follows), then the raw little-endian tensor bytes.
Parsing is JSON and arithmetic only: a hostile file can fail to load, never run code.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .jsonfile import JSONFileError, loads_limited, special_file_reason

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
CODES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024
_ALIGN = 8  # data section start; keeps every tensor of 8-byte-or-smaller elements aligned when sizes allow


class TensorFileError(ValueError):
    """Not a readable safetensors file (truncated, malformed header, offsets out of range)."""


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """(header dict, byte offset of the data section) of a safetensors file, validated."""
    path = Path(path)
    special = special_file_reason(path)
    if special:  # open() would block on a FIFO
        raise TensorFileError(f"{path}: is {special}; expected a safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TensorFileError(f"{path}: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise TensorFileError(f"{path}: header length {n} does not fit the file ({size} bytes)")
        try:
            header = loads_limited(f.read(n), f"{path} header")
        except JSONFileError as exc:
            raise TensorFileError(str(exc)) from None
    if not isinstance(header, dict):
        raise TensorFileError(f"{path}: header is not a JSON object")
    data_start, data_size = 8 + n, size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = DTYPES[info["dtype"]], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise TensorFileError(f"{path}: tensor {name!r} has a malformed entry {info!r}") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if any(d < 0 for d in shape) or not (isinstance(begin, int) and isinstance(end, int)) or \
                not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise TensorFileError(f"{path}: tensor {name!r} ({info['dtype']} {shape}) has byte range "
                                  f"[{begin}, {end}) outside or inconsistent with the {data_size}-byte data section")
    return header, data_start


def map_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of ``path`` as a CPU tensor backed by a private memory map of the file."""
    path = Path(path)
    header, data_start = read_header(path)
    tensors: dict[str, torch.Tensor] = {}
    if not any(k != "__metadata__" for k in header):
        return tensors
    with open(path, "rb") as f:
        # ACCESS_COPY: writable for torch (no read-only warnings), writes stay private to this process
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = DTYPES[info["dtype"]], [int(d) for d in info["shape"]]
        begin, end = info["data_offsets"]
        count = math.prod(shape)
        offset = data_start + begin
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        elif offset % torch.empty((), dtype=dtype).element_size():  # unaligned: torch needs a copy
            tensors[name] = torch.frombuffer(bytearray(mapped[offset:data_start + end]), dtype=dtype).reshape(shape)
        else:
            tensors[name] = torch.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape)
    return tensors


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor: the shapes and dtypes are declared up front
    (so the header can be written first), then ``write(name, tensor)`` streams each one in order.
    Only one tensor is in memory at a time. The file is complete once ``close()`` checks that
    every declared tensor was written."""

    def __init__(self, path: str | os.PathLike, specs: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
                 metadata: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
        self._order: list[tuple[str, tuple[int, ...], torch.dtype]] = []
        offset = 0
        for name, shape, dtype in specs:
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, tuple(shape), dtype))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-(8 + len(raw)) % _ALIGN)
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next declared tensor; its name, shape and dtype must be the ones declared next."""
        if self._next >= len(self._order):
            raise TensorFileError(f"{self.path}: {name!r} written after every declared tensor")
        want_name, shape, dtype = self._order[self._next]
        if name != want_name or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise TensorFileError(f"{self.path}: expected {want_name!r} {shape} {dtype} next, got {name!r} "
                                  f"{tuple(tensor.shape)} {tensor.dtype}")
        data = tensor.detach().to("cpu").contiguous()
        if data.numel():
            self._file.write(data.view(torch.uint8).numpy().tobytes() if data.dim() else
                             data.reshape(1).view(torch.uint8).numpy().tobytes())
        self._next += 1

    def close(self) -> None:
        """Close the file; ``TensorFileError`` if a declared tensor was never written."""
        try:
            if self._next != len(self._order):
                raise TensorFileError(f"{self.path}: {len(self._order) - self._next} declared tensor(s) not written "
                                      f"(next: {self._order[self._next][0]!r})")
        finally:
            self._file.close()

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._file.close()
