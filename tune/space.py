"""The hyperparameter search space: the default, and loading a replacement from YAML/JSON.

Each entry is ``name: {type: ..., ...}`` with type one of ``loguniform``/``uniform``
(``low``, ``high``), ``randint`` (``low``, ``high`` inclusive) or ``choice`` (``values``).
Names are TrainConfig fields (``arch``, ``loss``, ``lr`` …), plus ``width1``..``width4``
(the four channel widths every registered architecture takes) and ``use_step_lr`` (when
false, ``step_size``/``gamma`` are ignored and StepLR is off). The default space searches
every registered architecture (:data:`speech_enhance.model.net.ARCHITECTURES`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from ray import tune

from speech_enhance.model.net import ARCHITECTURES

DEFAULT_SPACE: dict[str, dict] = {
    "arch": {"type": "choice", "values": sorted(ARCHITECTURES)},
    "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "width1": {"type": "choice", "values": [16, 32, 48]},
    "width2": {"type": "choice", "values": [32, 64, 96]},
    "width3": {"type": "choice", "values": [32, 64, 96]},
    "width4": {"type": "choice", "values": [16, 32, 48]},
    "use_step_lr": {"type": "choice", "values": [False, True]},
    "step_size": {"type": "randint", "low": 2, "high": 10},
    "gamma": {"type": "uniform", "low": 0.1, "high": 0.9},
    "weight_decay": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
}


def load_space(path: str | os.PathLike | None) -> dict[str, dict]:
    if path is None:
        return DEFAULT_SPACE
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        space = yaml.safe_load(text)
    else:
        space = json.loads(text)
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{path}: a search space is a non-empty mapping of name -> distribution")
    for name, spec in space.items():
        if not isinstance(spec, dict) or spec.get("type") not in ("loguniform", "uniform", "randint", "choice"):
            raise ValueError(f"{path}: {name!r} needs type loguniform|uniform|randint|choice")
    return space


def to_tune(space: dict[str, dict]) -> dict:
    """The space as Ray Tune sampling objects (which OptunaSearch converts)."""
    out = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "loguniform":
            out[name] = tune.loguniform(spec["low"], spec["high"])
        elif kind == "uniform":
            out[name] = tune.uniform(spec["low"], spec["high"])
        elif kind == "randint":
            out[name] = tune.randint(spec["low"], spec["high"] + 1)
        else:
            out[name] = tune.choice(list(spec["values"]))
    return out


def train_settings(params: dict) -> dict:
    """Sampled parameters → TrainConfig fields."""
    settings = {k: v for k, v in params.items()
                if k not in ("width1", "width2", "width3", "width4", "use_step_lr", "step_size", "gamma")}
    widths = [params[f"width{i}"] for i in range(1, 5) if f"width{i}" in params]
    if widths:
        settings["widths"] = [int(w) for w in widths]
    if params.get("use_step_lr", "step_size" in params):
        if "step_size" in params:
            settings["step_size"] = int(params["step_size"])
        if "gamma" in params:
            settings["gamma"] = float(params["gamma"])
    return settings
