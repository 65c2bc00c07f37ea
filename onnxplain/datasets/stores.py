"""The outputs of a run: a ``.npy`` file written in place, or a zarr group; each write made durable on request.

This is the store API that :func:`~onnxplain.datasets.explain_dataset` and :mod:`onnxplain.dask` write through:

- :class:`Layout`: what one row of output holds (per attributed input its attribution row shape and dtype,
  and the delta's dtype);
- :class:`Output` (``Output(out, single)``): where a run writes, checked before any work: its ``kind``
  (``"npy"`` or ``"zarr"``), ``path``, ``exists()``, ``remove()``, and
  ``open(layout, rows, chunk_rows, fresh)``, its writer;
- a writer (:class:`NpyWriter`, :class:`ZarrWriter`): ``write(start, stop, attributions, delta)``,
  ``sync(start, stop)`` (those rows are on the disk when it returns), ``finish(rows)``, and
  ``delta_location``; a zarr writer's ``arrays`` (by attributed input) and ``delta`` are its zarr arrays;
- :func:`write_durably` (a small file replaced atomically, then synced), :func:`zarr_module`,
  :func:`attribution_array_name`.
"""
from __future__ import annotations

import ast
import os
import shutil
from dataclasses import dataclass

import numpy as np

#: bytes reserved for a .npy header, so that a header naming any number of rows has the same length
NPY_HEADER_BYTES = 256
_NPY_MAGIC = b"\x93NUMPY\x01\x00"


@dataclass
class Layout:
    """What one row of output holds: attribution row shape and dtype per attributed input, and the delta's."""

    attributions: dict          # input name -> (row shape, dtype)
    delta: np.dtype | None


class Output:
    """Where a run writes: a ``.npy`` file, or a zarr store (a directory, ``.zarr`` or existing); refused here,
    before any work, when it cannot be written.  ``single``: one input is attributed (a ``.npy`` file holds
    one array)."""

    def __init__(self, out, single: bool):
        self.path = os.path.abspath(os.fspath(out))
        if self.path.endswith(".npy"):
            self.kind = "npy"
            if not single:
                raise ValueError(f"several inputs are attributed: write to a zarr store (a path ending in .zarr), "
                                 f"one array per input, not to {out!r}")
        elif self.path.endswith(".zarr") or os.path.isdir(self.path):
            self.kind = "zarr"
        else:
            raise ValueError(f"out must be a .npy path or a zarr store (a path ending in .zarr), got {out!r}")
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise ValueError(f"cannot write {out!r}: folder {folder!r} does not exist")
        if not os.access(folder, os.W_OK):
            raise ValueError(f"cannot write {out!r}: folder {folder!r} is not writable")
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            raise ValueError(f"cannot write {out!r}: it exists and is read-only")
        #: the per-row deltas of a .npy output: ``<out minus .npy>.delta.npy``
        self.delta_path = self.path[:-4] + ".delta.npy" if self.kind == "npy" else None

    def exists(self) -> bool:
        """Anything of an output is on disk."""
        return os.path.exists(self.path) or (self.delta_path is not None and os.path.exists(self.delta_path))

    def remove(self) -> None:
        """Delete the output (the file or store, and the deltas beside a .npy file)."""
        for p in (self.path, self.delta_path):
            if p is None or not os.path.lexists(p):
                continue
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)

    def open(self, layout: Layout, rows: int | None, chunk_rows: int, fresh: bool):
        """The writer of ``layout``'s arrays: ``rows`` of them (None: unknown, grown as batches come), a zarr
        store chunked by ``chunk_rows`` rows; ``fresh``: whatever is on disk is removed first, else it is
        reused (it must have the layout's row shapes and dtypes)."""
        if fresh:
            self.remove()
        if self.kind == "npy":
            return NpyWriter(self, layout, rows)
        return ZarrWriter(self, layout, rows, chunk_rows)


# ---------------------------------------------------------------------- durable writes
def write_durably(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, on disk when this returns (file and folder synced)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_folder(os.path.dirname(path))


def _sync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sync_tree(path: str) -> None:
    """fsync a file, or every file under a folder and the folders themselves."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        _sync_folder(folder)


# ---------------------------------------------------------------------- .npy files
class NpyFile:
    """A .npy file written in place: a header of fixed length first (so that the number of rows it names can
    change without moving the data), rows at their offsets, fsync on demand."""

    def __init__(self, path: str, row: tuple, dtype: np.dtype, rows: int | None):
        self.path, self.row, self.dtype = path, tuple(row), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row, dtype=np.int64)) * self.dtype.itemsize
        new = not os.path.exists(path)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if new:
            os.pwrite(self.fd, self.header(rows or 0), 0)
        else:
            self._check_header()

    def header(self, rows: int) -> bytes:
        """The header naming ``rows`` rows, :data:`NPY_HEADER_BYTES` long."""
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
             "shape": (int(rows),) + self.row}
        text = repr(d).encode("latin1")
        body = NPY_HEADER_BYTES - 10   # magic (6), version (2), header length (2)
        if len(text) + 1 > body:
            raise ValueError(f"the .npy header for rows of shape {self.row} does not fit {NPY_HEADER_BYTES} bytes")
        return _NPY_MAGIC + body.to_bytes(2, "little") + text.ljust(body - 1) + b"\n"

    def _check_header(self) -> None:
        head = os.pread(self.fd, NPY_HEADER_BYTES, 0)
        try:
            d = ast.literal_eval(head[10:].decode("latin1").strip())
            ok = head[:8] == _NPY_MAGIC and tuple(d["shape"][1:]) == self.row and np.dtype(d["descr"]) == self.dtype
        except (ValueError, SyntaxError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"{self.path!r} is not the .npy file of the run being resumed; pass overwrite=True")

    def write(self, start: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        os.pwrite(self.fd, data, NPY_HEADER_BYTES + start * self.row_bytes)

    def sync(self) -> None:
        os.fsync(self.fd)

    def finish(self, rows: int) -> None:
        """Name ``rows`` rows in the header, cut what lies past them, sync and close."""
        os.pwrite(self.fd, self.header(rows), 0)
        os.ftruncate(self.fd, NPY_HEADER_BYTES + rows * self.row_bytes)
        os.fsync(self.fd)
        os.close(self.fd)


class NpyWriter:
    """Attributions of the one attributed input in ``out``, per-row deltas in ``<out minus .npy>.delta.npy``."""

    def __init__(self, output: Output, layout: Layout, rows: int | None):
        (name, (row, dtype)), = layout.attributions.items()
        self.name = name
        self.attr = NpyFile(output.path, row, dtype, rows)
        self.delta = NpyFile(output.delta_path, (), layout.delta, rows) if layout.delta is not None else None
        self.delta_location = output.delta_path if self.delta is not None else None

    def write(self, start: int, stop: int, attr: dict, delta) -> None:
        self.attr.write(start, attr[self.name])
        if self.delta is not None:
            self.delta.write(start, delta)

    def sync(self, start: int, stop: int) -> None:
        self.attr.sync()
        if self.delta is not None:
            self.delta.sync()

    def finish(self, rows: int) -> None:
        self.attr.finish(rows)
        if self.delta is not None:
            self.delta.finish(rows)


# ---------------------------------------------------------------------- zarr stores
def zarr_module():
    """The zarr package, or an ImportError naming the extra that installs it."""
    try:
        import zarr
    except ImportError as e:
        raise ImportError("writing a zarr store needs zarr: pip install 'onnxplain[dask]'") from e
    return zarr


def attribution_array_name(single: bool, name: str) -> str:
    """The zarr array of input ``name``'s attributions (the graph's output names)."""
    return "attributions" if single else f"attributions_{name}"


class ZarrWriter:
    """One zarr array per attributed input (``attributions`` or ``attributions_<input>``) and ``delta``, chunked
    by ``chunk_rows`` rows; a batch's chunk files are synced to the disk by :meth:`sync` (local stores)."""

    def __init__(self, output: Output, layout: Layout, rows: int | None, chunk_rows: int):
        zarr = zarr_module()
        self.root = output.path
        group = zarr.open_group(self.root, mode="a")
        single = len(layout.attributions) == 1
        self.arrays = {}
        for name, (row, dtype) in layout.attributions.items():
            self.arrays[name] = _zarr_array(group, attribution_array_name(single, name), row, dtype, rows, chunk_rows)
        self.delta = (_zarr_array(group, "delta", (), layout.delta, rows, chunk_rows)
                      if layout.delta is not None else None)
        self.delta_location = f"{self.root}/delta" if self.delta is not None else None
        self.growing = rows is None

    def _all(self) -> list:
        return list(self.arrays.values()) + ([self.delta] if self.delta is not None else [])

    def write(self, start: int, stop: int, attr: dict, delta) -> None:
        for a in self._all():
            if self.growing and a.shape[0] < stop:
                a.resize((stop,) + tuple(a.shape[1:]))
        for name, a in self.arrays.items():
            a[start:stop] = attr[name]
        if self.delta is not None:
            self.delta[start:stop] = delta

    def sync(self, start: int, stop: int) -> None:
        for a in self._all():
            folder = os.path.join(self.root, a.path)
            chunk = a.chunks[0]
            for i in range(start // chunk, (stop - 1) // chunk + 1):
                _sync_tree(os.path.join(folder, "c", str(i)))
            _sync_tree(os.path.join(folder, "zarr.json"))

    def finish(self, rows: int) -> None:
        for a in self._all():
            if a.shape[0] != rows:
                a.resize((rows,) + tuple(a.shape[1:]))
            _sync_tree(os.path.join(self.root, a.path, "zarr.json"))


def _zarr_array(group, name: str, row, dtype, rows: int | None, chunk_rows: int):
    """The array ``name`` of ``group``: the one on disk (checked against the row shape and dtype), or a new one."""
    shape = (rows or 0,) + tuple(row)
    if name in group:
        a = group[name]
        if tuple(a.shape[1:]) != tuple(row) or np.dtype(a.dtype) != np.dtype(dtype):
            raise ValueError(f"the zarr array {name!r} is not the one of the run being resumed; pass overwrite=True")
        return a
    return group.create_array(name, shape=shape, chunks=(chunk_rows,) + tuple(row), dtype=dtype, fill_value=0)
