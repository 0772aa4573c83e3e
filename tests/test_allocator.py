"""glibc malloc keeps freed memory for reuse once speech_enhance.allocator says so."""

import os
import platform
import subprocess
import sys

import pytest

from speech_enhance import allocator

# Allocates and frees a 64 MB tensor 40 times (as a training step does its activations),
# before and after keep_freed_memory, and prints the page faults of each half.
PROGRAM = """
import resource, torch
from speech_enhance import allocator

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        torch.ones(16_000_000).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults()
applied = allocator.keep_freed_memory()
print(default, applied, faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    env = {k: v for k, v in os.environ.items() if k not in allocator.SETTINGS}
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    default, applied, kept = out.stdout.split()
    assert applied == "True"
    # 40 x 64 MB is 625,000 faults of 4 KiB pages when every block goes back to the
    # kernel; kept, the block is faulted in once (15,625).
    assert int(default) > 300_000
    assert int(kept) < int(default) / 10


def test_environment_values_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    assert allocator.worker_env() == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "12345"}
