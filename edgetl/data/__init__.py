"""Image data: folders -> labelled file lists (:mod:`edgetl.data.folders`, no TensorFlow) and
in-memory arrays -> tf.data pipelines with the augmentation (:mod:`edgetl.data.tfdata`), files ->
tf.data pipelines that decode as they go (:mod:`edgetl.data.stream`; TensorFlow imported only inside
their functions). ``from edgetl.data import X`` works for the names of both."""

from edgetl.data.folders import (
    SPLITS,
    CheckShard,
    DataChangedError,
    Dataset,
    Sample,
    Split,
    decode_paths,
    load_dataset,
    resize_views,
    scan_folder,
    split_changes,
    split_sha256,
    stratified_sample,
    summarize_skipped,
)
from edgetl.data.stream import StreamDecodeError, files_dataset, load_pixels
from edgetl.data.tfdata import Augmenter, build_augmenter, labelled_batches, pixel_batches, pixels_dataset, training_dataset

__all__ = [
    "SPLITS", "Augmenter", "CheckShard", "DataChangedError", "Dataset", "Sample", "Split", "StreamDecodeError", "build_augmenter",
    "decode_paths", "files_dataset", "labelled_batches", "load_dataset", "load_pixels", "pixel_batches", "pixels_dataset",
    "resize_views", "scan_folder", "split_changes", "split_sha256", "stratified_sample", "summarize_skipped",
    "training_dataset",
]
