"""Batch editing: a manifest of edits in, edited images and a report out, through papermill, resumable, on local
processes or a Dask cluster. `diffusion-lab batch MANIFEST --out DIR` (see the README's "Batch editing" section).

    manifest   read CSV / YAML manifests and check every row before any work starts
    runner     chunks, row keys, executors (local processes, Dask), progress, exit code; the command line
    rows       what the notebook edit_chunk.ipynb runs in its kernel: one chunk of rows, one model load
    report     report.md / report.html with a before/after contact sheet and the metrics table
    files      atomic writes, paths kept inside the output folder, the run lock
    claims     a row is claimed (an flock on rows/<id>/.claim) before it starts: never edited twice at once
    lifeline   workers and kernels end when the driver dies (they watch it: pid, parent, heartbeat file)
    kernels    Jupyter kernels with CurveZMQ transport encryption (batch chunks, run_labs, `diffusion-lab lab`)
"""

from .manifest import InvalidRow, ManifestError, Row, read_manifest, row_key, validate_manifest
from .runner import BatchError, BatchResult, run_batch

__all__ = [
    "BatchError", "BatchResult", "InvalidRow", "ManifestError", "Row", "read_manifest", "row_key", "run_batch",
    "validate_manifest",
]
