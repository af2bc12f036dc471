"""Decoded batches in input order: threads on CPU (featdump/data/loading.py), DataLoader workers on GPUs."""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from typing import Any

from featdump.data.datasets import Batch, ImageDataset, collate
from featdump.data.discover import ImageRef
from featdump.data.loading import ThreadLoader
from featdump.model.layers import Backbone
from featdump.options import ExtractConfig


class Loader:
    """Decoded batches in list order: DataLoader workers decode and transform (each
    ``prefetch`` batches ahead), pinned memory on CUDA; with ``--decode gpu`` the workers only read JPEG bytes
    and :class:`DeviceDecoder` finishes each batch on the device in this thread."""

    def __init__(
        self,
        todo: Sequence[ImageRef],
        backbone: Backbone,
        cfg: ExtractConfig,
        device: Any,
        batch_size: int,
        workers: int,
        prefetch: int,
        decode_nice: int = 0,
    ) -> None:
        import functools

        import torch

        from featdump.data.datasets import DeviceDecoder, EncodedDataset
        from featdump.data.decode import fast_decode_size, load_rgb
        from featdump.data.transform import ResizeGuard

        transform = backbone.data.transform()
        guard = ResizeGuard(backbone.data, cfg.max_image_pixels)
        self.decoder: Any = None
        if cfg.decode == "gpu":
            dataset: ImageDataset = EncodedDataset(todo, transform, cfg.max_image_pixels, guard=guard)
            self.decoder = DeviceDecoder(transform, device)
        elif cfg.fast_decode:
            size = fast_decode_size(backbone.data.input_size, backbone.data.crop_pct)
            loader = functools.partial(load_rgb, shrink_to=size)
            dataset = ImageDataset(todo, transform, cfg.max_image_pixels, loader, guard)
        else:
            dataset = ImageDataset(todo, transform, cfg.max_image_pixels, guard=guard)
        batches = -(-len(todo) // batch_size)
        workers = min(workers, max(1, batches))  # no idle processes for a handful of images
        self.loader: Any
        if device.type == "cpu" and self.decoder is None:  # threads: see featdump/data/loading.py
            self.loader = ThreadLoader(dataset, batch_size, workers, prefetch, decode_nice)
            return
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=prefetch if workers else None,
            persistent_workers=False,  # one pass over the list: workers live exactly as long as it
        )

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield self.decoder(batch) if self.decoder is not None else batch


def _worker_init(_: int) -> None:
    # Ctrl-C goes to the whole process group; the main process decides when to stop.
    # Slurm and `kill -TERM -PGID` signal every process: workers ignore both and end with the
    # DataLoader (or, if the main process dies, by PyTorch's parent watchdog).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
