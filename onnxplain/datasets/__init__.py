"""explain_dataset: whole datasets streamed through an Explainer, within its memory budget, resumable.

A *source* is read one batch at a time and each batch's attributions are
written before the next batch is read, so memory does not grow with the
dataset.  Sources: any array-like with ``shape`` and slicing (a numpy memmap,
``np.load(path, mmap_mode="r")``, a zarr array, an h5py dataset), a dict of
them by input name, an iterable of batches (arrays, dicts by input name, or
``(batch, target)`` pairs), or a dask array (see :mod:`onnxplain.dask`).
Outputs: a ``.npy`` file (header first, rows written in place) or a zarr
store (a directory; one array per attributed input, and ``delta``).

Resuming: a small manifest beside the output (``<out>.manifest.json``)
records what the run is (model digest, method, parameters, targets, source
shape, batch size) and which batches are on disk; a batch is recorded only
after its data has been flushed to the disk (fsync), and the manifest itself
is replaced atomically.  A run killed at any moment and started again with the
same arguments recomputes only the batches not recorded and leaves the same
bytes as one uninterrupted run; different arguments are refused unless
``overwrite=True``.

The parts: :mod:`.sources` reads (sources as batches by input name, per-row
targets), :mod:`.stores` writes (``.npy`` files and zarr groups, durably: the
store API :mod:`onnxplain.dask` writes through too), :mod:`.resume` knows what
a run is and what of it is on disk (the manifest, fingerprints), and
:mod:`.schedule` streams (batch sizes, the loop, the progress bar).
:func:`onnxplain.files.explain_npy` streams an ``.npy`` file from a model path.
"""
from .resume import MANIFEST_SUFFIX, MANIFEST_VERSION, Manifest, check_reproducible, fingerprint, run_identity
from .schedule import (BATCH_SHARE, MAX_DEFAULT_BATCH, DatasetRun, batch_params, check_rows_first,
                       default_batch_size, explain_dataset, probe_layout, register_dask_runner)
from .sources import first_rows
from .stores import NPY_HEADER_BYTES, Layout, Output, attribution_array_name, write_durably, zarr_module

__all__ = ["BATCH_SHARE", "MANIFEST_SUFFIX", "MANIFEST_VERSION", "MAX_DEFAULT_BATCH", "NPY_HEADER_BYTES",
           "DatasetRun", "Layout", "Manifest", "Output", "attribution_array_name", "batch_params",
           "check_reproducible", "check_rows_first", "default_batch_size", "explain_dataset", "first_rows",
           "fingerprint", "probe_layout", "register_dask_runner", "run_identity", "write_durably", "zarr_module"]
