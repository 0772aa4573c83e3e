"""The pretrained model that `speech-enhance enhance` uses when no --model is given.

Its training data, commands and scores: MODEL_CARD.md at the repository root. Rebuilt
from the shared recordings with `make pretrained`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MODEL_NAME = "crn_v9.pth"


def default_model() -> Path:
    """Path of the shipped model file, or FileNotFoundError saying how to get one."""
    path = Path(str(resources.files(__package__) / MODEL_NAME))
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained model in this installation ({path}); pass --model, "
                                "or rebuild it with `make pretrained`")
    return path
