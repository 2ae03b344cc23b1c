"""Datasets: sources, the IDX reader, downloads and validation.

Batching and input pipelines live in their own modules of this package
(``pipeline``: device-resident splits; ``stream``: splits streamed from ``npy_dir``
files).
"""

from jdl.data.download import default_data_dir
from jdl.data.download import download_files
from jdl.data.idx import read_idx
from jdl.data.npy_dir import NpyRows
from jdl.data.npy_dir import StreamDataset
from jdl.data.sources import DATASETS
from jdl.data.sources import Dataset
from jdl.data.sources import checksum
from jdl.data.sources import fingerprint
from jdl.data.sources import load_dataset
from jdl.data.validate import check_example_shapes
from jdl.data.validate import validate_arrays

__all__ = (
    "DATASETS",
    "check_example_shapes",
    "checksum",
    "Dataset",
    "NpyRows",
    "StreamDataset",
    "default_data_dir",
    "download_files",
    "fingerprint",
    "load_dataset",
    "read_idx",
    "validate_arrays",
)
