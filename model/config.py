"""Training settings: every option with its default, checked before Ray starts.

Kept apart from Ray Train (:mod:`speech_enhance.model.train`) so that the command line
reads defaults and help from here without importing Ray.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from speech_enhance.model.losses import LOSSES, get_loss
from speech_enhance.model.net import ARCHITECTURES, build_model, default_widths

PRECISIONS = ("auto", "bf16", "fp32")  # train --precision


@dataclass
class TrainConfig:
    """Every training setting, with its default: the one place the CLI takes them from."""

    data: str
    out: str
    epochs: int = 100  # maximum epochs
    patience: int = 8  # early-stopping patience in epochs
    time_limit: float | None = None  # minutes of training in all; the epoch under way ends early
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 1e-2  # AdamW weight decay
    batch_size: int = 16  # patches per batch per worker
    # Consecutive patches of one mixture joined into each training example: a recurrent
    # network then learns from (and carries its state over) that many 0.5 s patches.
    sequence: int = 1
    arch: str = "mask_cnn"  # network (model.net.ARCHITECTURES)
    widths: list[int] | None = None  # channel widths; None: the architecture's default
    model_options: dict | None = None  # other constructor arguments, e.g. {"hidden": 256} for crn
    loss: str = "mag_l1"  # model.losses.LOSSES
    loss_options: dict | None = None  # the loss's weights changed from their defaults, e.g. {"sisdr_weight": 0.003}
    step_size: int | None = None  # StepLR step in epochs; None: StepLR off
    gamma: float = 0.5  # StepLR decay factor
    # Per-step decay of an exponential moving average of the weights (0: off); validation,
    # checkpoint choice and the saved model then use the average.
    ema: float = 0.0
    workers: int = 1  # data-parallel workers
    gpu: str = "auto"  # auto | yes | no
    # Autocast precision of the network's forward pass: bf16 (weights and loss stay fp32);
    # auto is bf16 on GPUs and fp32 on CPUs, where bf16 pays only with AMX / AVX512-BF16.
    precision: str = "auto"  # auto | bf16 | fp32
    compile: bool = False  # torch.compile the network for training (a minute of compiling per worker)
    cpus_per_worker: float | None = None  # None: leave a CPU unreserved on small machines
    torch_threads: int | None = None  # None: the CPUs of the node divided among the workers
    seed: int = 0
    shuffle_buffer: int = 256  # patches in each worker's local shuffle buffer
    # Test hook: {"epoch": k, "rank": r, "marker": path} makes that rank crash once
    # at the end of epoch k (before reporting), to exercise Ray's worker restart.
    fault_injection: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def validated(self) -> TrainConfig:
        """This config with the architecture's defaults filled in, or ValueError naming
        the option that is wrong: a configuration error must stop before Ray starts
        (it is not something a re-run could resume from)."""
        checks = [
            ("--epochs", self.epochs, self.epochs >= 1, "at least 1"),
            ("--patience", self.patience, self.patience >= 1, "at least 1"),
            ("--time-limit", self.time_limit,
             self.time_limit is None or (self.time_limit > 0 and math.isfinite(self.time_limit)), "positive"),
            ("--lr", self.lr, self.lr > 0 and math.isfinite(self.lr), "a positive number"),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0 and math.isfinite(self.weight_decay),
             "zero or positive"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, "at least 1"),
            ("--sequence", self.sequence, self.sequence >= 1, "at least 1"),
            ("--batch-size", self.batch_size, self.batch_size % max(self.sequence, 1) == 0,
             f"a multiple of --sequence ({self.sequence})"),
            ("--step-size", self.step_size, self.step_size is None or self.step_size >= 1, "at least 1"),
            ("--gamma", self.gamma, 0 < self.gamma <= 1, "in (0, 1]"),
            ("--ema", self.ema, 0 <= self.ema < 1, "in [0, 1) (0: off)"),
            ("--workers", self.workers, self.workers >= 1, "at least 1"),
            ("--gpu", self.gpu, self.gpu in ("auto", "yes", "no"), "auto, yes or no"),
            ("--precision", self.precision, self.precision in PRECISIONS, "auto, bf16 or fp32"),
            # torch 2.13's compiler turns the U-Net's bf16 training into NaN after one step (CPU).
            ("--compile", self.compile, not (self.compile and self.precision == "bf16" and self.arch == "unet"),
             "left out with --precision bf16 for --arch unet (the compiled bf16 U-Net trains to NaN)"),
            ("--cpus-per-worker", self.cpus_per_worker, self.cpus_per_worker is None or self.cpus_per_worker >= 0,
             "zero or positive"),
            ("torch_threads", self.torch_threads, self.torch_threads is None or self.torch_threads >= 1,
             "at least 1"),
            ("shuffle_buffer", self.shuffle_buffer, self.shuffle_buffer >= 0, "zero or positive"),
            ("--arch", self.arch, self.arch in ARCHITECTURES, f"one of {', '.join(sorted(ARCHITECTURES))}"),
            ("--loss", self.loss, self.loss in LOSSES, f"one of {', '.join(LOSSES)}"),
        ]
        for option, value, ok, rule in checks:
            if not ok:
                raise ValueError(f"{option} must be {rule}, got {value!r}")
        try:
            get_loss(self.loss, **(self.loss_options or {}))
        except ValueError as err:
            raise ValueError(f"--loss-option: {err}") from None
        widths = list(self.widths) if self.widths else default_widths(self.arch)
        try:
            build_model(self.arch, widths, **(self.model_options or {}))
        except (ValueError, TypeError) as err:
            raise ValueError(f"--widths {','.join(map(str, widths))} / model options {self.model_options or {}} "
                             f"do not fit --arch {self.arch}: {err}") from None
        return replace(self, widths=widths)
