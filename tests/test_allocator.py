"""glibc malloc keeps freed memory for reuse once speech_enhance.pipeline.allocator says so."""

import os
import platform
import subprocess
import sys

import pytest

from speech_enhance.pipeline import allocator

# Two training steps of the mask CNN in a thread (as Ray Train runs its loop), after one
# warm-up step; prints their page faults. With "apply", keep_freed_memory runs first.
PROGRAM = """
import resource, sys, threading, torch
from speech_enhance.pipeline import allocator
from speech_enhance.model.net import build_model

if sys.argv[1] == "apply":
    allocator.keep_freed_memory()
torch.set_num_threads(1)

def train_steps(out):
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters())
    noisy, clean = torch.rand(8, 1, 257, 64), torch.rand(8, 1, 257, 64)
    for step in range(3):
        if step == 1:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        loss = torch.nn.functional.l1_loss(model(noisy) * noisy, clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

out = []
worker = threading.Thread(target=train_steps, args=(out,))
worker.start()
worker.join()
print(out[0])
"""


def page_faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in allocator.SETTINGS}
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], env=env, capture_output=True, text=True,
                          check=True, timeout=120)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    default, kept = page_faults("default"), page_faults("apply")
    # Measured: 270,000-340,000 faults with glibc's defaults, 17,000-33,000 kept (and
    # 115,000 without the one-arena setting).
    assert default > 100_000
    assert kept < default / 5


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_keep_freed_memory_applies_on_glibc():
    assert allocator.keep_freed_memory()


def test_environment_values_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    assert allocator.worker_env() == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "12345", "MALLOC_ARENA_MAX": "1"}
