"""Reading foreign files safely: what a file is, its tensors as numpy, never code.

Half-precision tensors (bfloat16, float16) are upcast to float32 on reading, which is
exact; every other float dtype is kept.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile

import numpy as np

from saecommon.checkpoint import CheckpointError

MSGPACK_EXTENSIONS = (".msgpack", ".flax")
TORCH_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")


class ForeignError(CheckpointError):
    """A file is not a model this converter can read or write, and why."""


def head(path: str, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_safetensors(path: str) -> bool:
    """An 8-byte little-endian header length followed by a JSON object."""
    start = head(path, 9)
    if len(start) < 9 or start[8:9] != b"{":
        return False
    size = int.from_bytes(start[:8], "little")
    return 0 < size <= os.path.getsize(path) - 8


def is_torch_zip(path: str) -> bool:
    return zipfile.is_zipfile(path) and any(
        name.endswith("data.pkl") for name in zipfile.ZipFile(path).namelist()
    )


def is_pickle(path: str) -> bool:
    return head(path, 1) == b"\x80"


def is_msgpack_map(path: str) -> bool:
    """A msgpack map: fixmap (0x80-0x8f), map16 (0xde) or map32 (0xdf). A pickle
    also starts with 0x80, so ask is_pickle first."""
    first = head(path, 1)
    return bool(first) and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF))


def describe(path: str) -> str:
    """What ``path`` holds, in words, for an error that says what was found."""
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return f"a folder holding {shown}" if names else "an empty folder"
    if not os.path.exists(path):
        return "nothing (no such file or folder)"
    if os.path.getsize(path) == 0:
        return "an empty file"
    if is_safetensors(path):
        return "a safetensors file"
    if is_torch_zip(path):
        return "a torch.save zip archive"
    if zipfile.is_zipfile(path):
        if path.endswith(".npz"):
            return "a numpy .npz archive"
        return "a zip archive that is neither torch.save's nor numpy's"
    if is_pickle(path):
        return "a Python pickle"
    if head(path, 6) == b"\x93NUMPY":
        return "a single numpy .npy array"
    if is_msgpack_map(path):
        return "a msgpack map"
    if os.path.getsize(path) <= 1 << 20:  # a config-sized file may be JSON
        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
            return "a JSON file"
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    return f"a file of unknown kind (it starts with {head(path)!r})"


def to_numpy(value) -> np.ndarray:
    """A torch tensor or array as numpy; bfloat16/float16 upcast to float32."""
    if hasattr(value, "detach"):
        import torch

        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.numpy().copy()
    value = np.asarray(value)
    if value.dtype == np.float16 or value.dtype.name == "bfloat16":
        value = value.astype(np.float32)
    return value


def read_safetensors(path: str) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of any safetensors file, bfloat16 included: the tensors
    come as torch tensors (numpy has no bfloat16); ``float_arrays`` makes them
    numpy."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ForeignError(
            f"{path} is not a readable safetensors file: {err}"
        ) from None


def torch_load(path: str) -> dict:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and
    containers only. A file that needs more is refused, never unpickled."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        operand = re.search(r"Unsupported operand \d+", str(err))
        if found is None and operand:
            raise ForeignError(
                f"{path} is a damaged or non-torch pickle ({operand[0]}): torch.load "
                "cannot read it"
            ) from None
        what = f"the Python object {found[1]}" if found else "Python objects"
        raise ForeignError(
            f"{path} is a pickle that needs {what}, not only tensors; unpickling it "
            "could run code from the file, so it is refused (torch.load with "
            "weights_only=True). Save the weights alone instead: "
            "torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ForeignError(
            f"{path} could not be read by torch.load ({describe(path)}): "
            f"{first_line(err)}"
        ) from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name if it has none."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def torch_save_bytes(tensors: dict) -> bytes:
    """``torch.save`` of a dict of numpy arrays (as tensors) or plain values."""
    import torch

    buffer = io.BytesIO()
    torch.save(
        {
            k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v
            for k, v in tensors.items()
        },
        buffer,
    )
    return buffer.getvalue()


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ForeignError(f"{path} is not a readable JSON file: {err}") from None
    if not isinstance(data, dict):
        raise ForeignError(f"{path} holds JSON that is not an object")
    return data


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def float_arrays(tensors: dict, source: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """(every value as a numpy float array, a note naming the half-precision ones
    read as float32); ints and bools are refused by name."""
    out, upcast = {}, []
    for name, value in tensors.items():
        dtype = str(getattr(value, "dtype", ""))
        array = to_numpy(value)
        if not np.issubdtype(array.dtype, np.floating):
            raise ForeignError(f"{source}: {name} is {array.dtype}, not a float tensor")
        if "float16" in dtype:  # bfloat16 and float16, torch's or numpy's
            upcast.append(name)
        out[name] = array
    notes = (
        [f"{', '.join(upcast)} read from half precision as float32"] if upcast else []
    )
    return out, notes
