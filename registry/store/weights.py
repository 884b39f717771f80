"""Check that a weights file really is safetensors, without loading or unpickling anything.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the tensor bytes. :func:`check_safetensors`
validates that structure against the file size, so a truncated file, a renamed pickle or a
PyTorch zip archive is refused with a message that says which it is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from loradex.core.errors import ArtifactError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
_MAX_HEADER = 100 * 1024 * 1024


def _sniff_pickle(head: bytes) -> str | None:
    if head[:4] == b"PK\x03\x04":
        return "a PyTorch zip archive (pickle inside)"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "a Python pickle"
    return None


def check_safetensors(path: Path) -> dict[str, dict]:
    """Return the tensor table of the safetensors file at ``path``; raise ArtifactError otherwise."""
    path = Path(path)
    refuse = f"{path}: not a valid safetensors file"
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            # A safetensors header length can look like a pickle opcode (0x280 bytes starts 80 02):
            # the file is called a pickle only once it has failed to parse as safetensors.
            kind = _sniff_pickle(head)
            pickled = ArtifactError(f"{path}: is {kind}, not safetensors; loradex never unpickles weights")
            if len(head) < 8:
                raise pickled if kind else ArtifactError(f"{refuse} (only {size} bytes; truncated?)")
            header_len = int.from_bytes(head, "little")
            if header_len > min(size - 8, _MAX_HEADER):
                raise pickled if kind else ArtifactError(
                    f"{refuse} (header of {header_len} bytes does not fit a {size}-byte file; truncated?)")
            raw = fh.read(header_len)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise (pickled if kind else ArtifactError(f"{refuse} (its header is not JSON)")) from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{refuse} (its header is not a JSON object)")
    data_len = size - 8 - header_len
    end = 0
    ranges = []
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, info in tensors.items():
        if not isinstance(info, dict):
            raise ArtifactError(f"{refuse} (entry {name!r} is malformed)")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPE_BYTES or not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
            raise ArtifactError(f"{refuse} (entry {name!r} is malformed)")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or not all(isinstance(o, int) for o in offsets):
            raise ArtifactError(f"{refuse} (entry {name!r} is malformed)")
        start, stop = offsets
        if not 0 <= start <= stop or stop - start != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise ArtifactError(f"{refuse} (tensor {name!r} has an inconsistent byte range)")
        if stop > data_len:
            raise ArtifactError(f"{refuse} (tensor {name!r} runs past the end of the file; truncated?)")
        ranges.append((start, stop))
        end = max(end, stop)
    ranges.sort()
    for (_, prev_stop), (start, _) in zip(ranges, ranges[1:]):
        if start < prev_stop:
            raise ArtifactError(f"{refuse} (tensor byte ranges overlap)")
    if end != data_len:
        raise ArtifactError(f"{refuse} ({data_len - end} bytes beyond the last tensor)")
    return tensors


def check_finite(path: Path) -> None:
    """Raise ArtifactError naming the file and tensor if a tensor of ``path`` holds NaN or infinity.

    A LoRA or head with a non-finite value predicts NaN scores (not JSON) and breaks merges;
    nothing holding one enters the registry.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise ArtifactError(f"{path}: tensor {name!r} holds {bad} NaN or infinite value"
                                        f"{'s' if bad != 1 else ''}; refusing to store it")
    except SafetensorError as exc:
        raise ArtifactError(f"{path}: not a valid safetensors file ({exc})") from None


def refuse_pickles(folder: Path) -> None:
    """Raise ArtifactError if ``folder`` holds pickle-based weight files (``.bin``, ``.pt``, ...)."""
    found = sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise ArtifactError(
            f"{folder}: holds pickle-based weights ({', '.join(found)}); loradex never unpickles. "
            "Save them with safetensors (PEFT: save_pretrained(..., safe_serialization=True))"
        )
