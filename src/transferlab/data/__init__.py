"""Images in, tensors out: image files, datasets and splits, preprocessing, the decoded-image cache, batches.

The names below are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._faces import lazy_face

_EXPORTS = {  # module -> the public names it lends the package
    "datasets": ("Dataset", "Split", "resolve_data", "dataset_for", "scan_folder", "stratified_split", "elpv_root",
        "hotdog_root", "IMAGE_EXTENSIONS", "safe_extract"),
    "images": ("ImageError", "load_rgb", "to_tensor", "max_pixels"),
    "transforms": ("Preprocessing", "decode_one", "normalize", "center_crop", "resize_shorter"),
    "cache": ("decode", "DecodedImages"),
    "batches": ("Batch", "train_batches", "probe_batches", "global_batches", "prefetch_batches"),
}
__all__ = ["Dataset", "Split", "resolve_data", "dataset_for", "scan_folder", "stratified_split", "elpv_root",
           "hotdog_root", "IMAGE_EXTENSIONS", "safe_extract", "ImageError", "load_rgb", "to_tensor", "max_pixels",
           "Preprocessing", "decode_one", "normalize", "center_crop", "resize_shorter", "decode", "DecodedImages",
           "Batch", "train_batches", "probe_batches", "global_batches", "prefetch_batches"]
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .batches import Batch, global_batches, prefetch_batches, probe_batches, train_batches
    from .cache import DecodedImages, decode
    from .datasets import (
        IMAGE_EXTENSIONS,
        Dataset,
        Split,
        dataset_for,
        elpv_root,
        hotdog_root,
        resolve_data,
        safe_extract,
        scan_folder,
        stratified_split,
    )
    from .images import ImageError, load_rgb, max_pixels, to_tensor
    from .transforms import Preprocessing, center_crop, decode_one, normalize, resize_shorter
