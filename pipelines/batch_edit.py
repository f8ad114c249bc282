"""Batch editing from a manifest: a thin wrapper of `diffusion-lab batch` (diffusion_lab/batch/runner.py).

    python pipelines/batch_edit.py examples/batch_manifest.yaml --out outputs/batch-example
    python pipelines/batch_edit.py manifest.csv --out DIR --chunk-size 8 --workers 2
    python pipelines/batch_edit.py manifest.csv --out DIR --executor dask --scheduler tcp://host:8786

See the README's "Batch editing" section for the manifest's fields, the output folder, resuming and Dask clusters.
"""

import sys

from diffusion_lab.batch.runner import main

if __name__ == "__main__":
    sys.exit(main())
