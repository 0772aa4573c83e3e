"""Keep freed memory in the process for reuse instead of handing it back to the kernel.

Training allocates and frees the same large buffers every step (a batch of 16 patches
through a 64-channel layer is 67 MB of activations), and the dataset build a few
arrays of 1-10 MB per mixture. With glibc's default malloc settings such blocks go back
to the kernel as soon as they are freed (``mmap`` for blocks above a threshold of at
most 32 MiB, heap trimming above another), so every step faults the same memory back
in, zero-filled by the kernel. Measured on this project's 2-vCPU development VM
(BENCHMARKS.md): 4.1 million page faults and 8.5 s of system time per 128 training
patches on one thread; training ran at 6.4 patches/s with the defaults and 11.3 with
the settings below (2 threads: 10.9 and 20.2). The dataset build lost 1.7 s of 7.3 s
to 270,000 faults.

The settings: never serve a block by ``mmap``, keep up to 1 GiB of free heap, and one
heap for all threads. A process then holds on to its peak heap until it exits, which
for the build's and training's long-lived workers is the memory they reuse anyway.
Values a user has set in the environment win. glibc only: elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's environment names and the mallopt parameters (<malloc.h>) they stand for.
SETTINGS = {
    "MALLOC_MMAP_MAX_": (-4, 0),  # M_MMAP_MAX: no block is served by mmap
    "MALLOC_TRIM_THRESHOLD_": (-1, 2**30),  # M_TRIM_THRESHOLD: keep up to 1 GiB free heap
    # M_ARENA_MAX: every thread allocates from the main heap. Other threads' arenas hand
    # freed memory back whatever the trim threshold (Ray Train runs the training loop
    # in a thread: 2.8 million faults per 128 patches there with the two settings above).
    "MALLOC_ARENA_MAX": (-8, 1),
}


def worker_env() -> dict[str, str]:
    """The settings as environment variables, for processes yet to start (Ray workers):
    glibc reads them at start-up. A value already in this environment wins."""
    return {name: os.environ.get(name, str(value)) for name, (_, value) in SETTINGS.items()}


def keep_freed_memory() -> bool:
    """Apply the settings to this running process (``mallopt``), except those the
    environment already set at start-up. Call it before starting threads: a thread
    that already has its own arena keeps it. Returns False where there is no glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(bool(mallopt(param, value)) for name, (param, value) in SETTINGS.items() if name not in os.environ)
