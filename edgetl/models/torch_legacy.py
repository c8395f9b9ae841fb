"""Read a PyTorch checkpoint in the legacy (pre-1.6, non-zip) format without importing torch.

A legacy ``.pth`` file is a sequence of pickles followed by raw tensor data:

1. magic number ``0x1950a86a20f9469cfc6c``
2. protocol version (1001)
3. ``sys_info`` (endianness, type sizes)
4. the saved object (here a state dict); tensors appear as
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose
   ``storage`` is a persistent id ``('storage', StorageType, key, location, numel, view_metadata)``
5. the list of storage keys, in the order their data follows
6. for each key: an int64 little-endian element count, then the raw little-endian data.

The unpickler resolves globals only from an explicit allow-list, mapped to inert
stand-ins defined here: anything else (``os.system``, ``builtins.eval``, ...) is
refused with :class:`~edgetl.errors.ModelFileError` before it can run.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edgetl.errors import ModelFileError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

#: Storage class name -> numpy dtype (little-endian).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Inert stand-in for ``torch.FloatStorage`` & co: only carries a dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


class _StorageRef:
    """A storage (or a view of one) whose bytes are read after the pickles."""

    def __init__(self, key: str, dtype: np.dtype, numel: int, view_offset: int = 0) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.view_offset = view_offset


class _TensorRef:
    """A tensor to materialize once storage data is known."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise ModelFileError("malformed checkpoint: tensor without a storage")
    try:
        return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))
    except (TypeError, ValueError):
        raise ModelFileError("malformed checkpoint: bad tensor size/stride") from None


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    return data


def _ordered_dict(*args: Any, **kwargs: Any) -> collections.OrderedDict:
    return collections.OrderedDict(*args, **kwargs)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _StorageRef] | None = None) -> None:
        super().__init__(file, encoding="latin1")
        self.storages = storages if storages is not None else {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ModelFileError(
                f"checkpoint refers to {module}.{name}, which is not allowed in a weights file (refusing to load it)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise ModelFileError(f"malformed checkpoint: unsupported persistent id {str(pid)[:80]!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise ModelFileError("malformed checkpoint: unknown storage type")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, storage_type.dtype, int(numel))
        root = self.storages[key]
        if view_metadata is None:
            return root
        _view_key, view_offset, view_size = view_metadata
        return _StorageRef(root.key, root.dtype, int(view_size), int(view_offset))


def _load_pickle(f: BinaryIO, storages: dict[str, _StorageRef] | None = None) -> Any:
    try:
        return _RestrictedUnpickler(f, storages).load()
    except ModelFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile or damaged input may raise anything while unpickling
        raise ModelFileError(f"not a readable legacy PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a legacy-format PyTorch state dict as numpy arrays.

    Args:
        path: the ``.pth`` file.

    Returns:
        parameter name -> contiguous numpy array (shape, storage offset and strides honoured).

    Raises:
        ModelFileError: missing, truncated or malformed file, a zip-format checkpoint,
            or a pickle that refers to anything outside the allow-list.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _read(f, str(path))
    except ModelFileError as exc:
        msg = " ".join(str(exc).split())  # one line, whatever the unpickler said
        raise ModelFileError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None


def _read(f: BinaryIO, name: str) -> dict[str, np.ndarray]:
    head = f.read(4)
    if head[:2] == b"PK":
        raise ModelFileError("zip-format (torch >= 1.6) checkpoint; only the legacy format is supported")
    f.seek(0)
    if _load_pickle(f) != MAGIC_NUMBER:
        raise ModelFileError("not a PyTorch checkpoint (bad magic number)")
    if _load_pickle(f) != PROTOCOL_VERSION:
        raise ModelFileError("unsupported PyTorch checkpoint protocol version")
    sys_info = _load_pickle(f)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ModelFileError("big-endian checkpoints are not supported")
    storages: dict[str, _StorageRef] = {}
    obj = _load_pickle(f, storages)
    keys = _load_pickle(f)
    if not isinstance(keys, list):
        raise ModelFileError("malformed checkpoint: storage key list missing")

    data: dict[str, np.ndarray] = {}
    for key in keys:
        key = str(key)
        ref = storages.get(key)
        if ref is None:
            raise ModelFileError(f"malformed checkpoint: storage {key!r} is not used by any tensor")
        raw = f.read(8)
        if len(raw) != 8:
            raise ModelFileError("truncated checkpoint (storage data missing)")
        (numel,) = struct.unpack("<q", raw)
        if numel < 0 or numel != ref.numel:
            raise ModelFileError(f"malformed checkpoint: storage {key!r} holds {numel} elements, expected {ref.numel}")
        nbytes = numel * ref.dtype.itemsize
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise ModelFileError("truncated checkpoint (storage data cut short)")
        data[key] = np.frombuffer(buf, dtype=ref.dtype)

    if not isinstance(obj, dict):
        raise ModelFileError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if isinstance(v, _TensorRef):
            out[str(k)] = _materialize(str(k), v, data)
    if not out:
        raise ModelFileError("checkpoint holds no tensors")
    return out


def _materialize(name: str, t: _TensorRef, data: dict[str, np.ndarray]) -> np.ndarray:
    if t.storage.key not in data:
        raise ModelFileError(f"malformed checkpoint: data for tensor {name!r} is missing")
    storage = data[t.storage.key][t.storage.view_offset:]
    if len(t.size) != len(t.stride) or any(s < 0 for s in t.size) or any(s < 0 for s in t.stride) or t.offset < 0:
        raise ModelFileError(f"malformed checkpoint: tensor {name!r} has an invalid shape/stride")
    if 0 in t.size:
        return np.zeros(t.size, storage.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= storage.size:
        raise ModelFileError(f"malformed checkpoint: tensor {name!r} reaches past its storage")
    if int(np.prod(t.size, dtype=np.float64)) > 16 * storage.size:  # stride-0 "broadcast" memory bomb
        raise ModelFileError(f"malformed checkpoint: tensor {name!r} is far larger than its storage")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[t.offset:], shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    return np.array(view, order="C", copy=True)


def loads_state_dict(blob: bytes) -> dict[str, np.ndarray]:
    """Like :func:`load_state_dict` for bytes in memory (used by tests)."""
    return _read(io.BytesIO(blob), "<bytes>")
