"""glibc malloc settings that keep freed memory in the process for reuse.

Training allocates and frees the same large buffers every step, and the dataset build a
few arrays of 1-10 MB per mixture. With glibc's defaults such blocks go back to the
kernel as soon as they are freed (``mmap`` above a threshold, heap trimming above
another), so every step faults the same memory back in, zero-filled by the kernel
(BENCHMARKS.md, "Training throughput", has the measured effect). The settings: never
serve a block by ``mmap``, keep up to 1 GiB of free heap, one heap for all threads. A
process then holds its peak heap until it exits, which for the build's and training's
long-lived workers is the memory they reuse anyway.

This module is the only place they are set: :func:`worker_env` for Ray's worker
processes (:func:`speech_enhance.pipeline.cluster.worker_runtime_env`) and
:func:`keep_freed_memory` for the ``speech-enhance`` process itself. A value already in
the environment wins; ``SPEECH_ENHANCE_MALLOC=default`` turns all of them off. glibc
only: elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# The switch: "default" leaves glibc's malloc as it is.
SWITCH = "SPEECH_ENHANCE_MALLOC"

# glibc's environment names and the mallopt parameters (<malloc.h>) they stand for.
SETTINGS = {
    "MALLOC_MMAP_MAX_": (-4, 0),  # M_MMAP_MAX: no block is served by mmap
    "MALLOC_TRIM_THRESHOLD_": (-1, 2**30),  # M_TRIM_THRESHOLD: keep up to 1 GiB free heap
    # M_ARENA_MAX: every thread allocates from the main heap; other threads' arenas hand
    # freed memory back whatever the trim threshold (Ray Train runs its loop in a thread).
    "MALLOC_ARENA_MAX": (-8, 1),
}


def enabled() -> bool:
    """False when the user turned the settings off (``SPEECH_ENHANCE_MALLOC=default``)."""
    return os.environ.get(SWITCH, "").strip().lower() not in ("default", "0", "off", "no")


def worker_env() -> dict[str, str]:
    """The settings as environment variables, for processes yet to start (Ray workers):
    glibc reads them at start-up. A value already in this environment wins; empty when
    the settings are off."""
    if not enabled():
        return {}
    return {name: os.environ.get(name, str(value)) for name, (_, value) in SETTINGS.items()}


def keep_freed_memory() -> bool:
    """Apply the settings to this running process (``mallopt``), except those the
    environment already set at start-up. Call it before starting threads: a thread
    that already has its own arena keeps it. Returns False where there is no glibc or
    the settings are off."""
    if not enabled():
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(bool(mallopt(param, value)) for name, (param, value) in SETTINGS.items() if name not in os.environ)
