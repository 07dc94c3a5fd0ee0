"""Cohorts: segment and measure many scans on a Dask cluster (``napari-vit3d batch``).

Public API::

    from napari_vit3d.batch import run_batch
    rows = run_batch(["study/"], "out/", model="segformer3d-brain")              # a LocalCluster here
    rows = run_batch(paths, "out/", scheduler="tcp://10.0.0.5:8786")             # the user's cluster

``inputs`` finds the scans, ``task`` is what runs on a worker (one scan; the model is loaded once per
worker process), ``run`` drives the cluster and writes ``summary.csv``. Nothing here imports Qt.
"""

from .inputs import find_inputs
from .run import EXIT_SOME_FAILED, run_batch

__all__ = ["EXIT_SOME_FAILED", "find_inputs", "run_batch"]
