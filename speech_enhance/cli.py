"""`speech-enhance` command line: a thin layer over pipeline/, model/ and tune/."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from speech_enhance.pipeline import allocator


def _noises_per_clean(value: str) -> int | None:
    if value == "all":
        return None
    k = int(value)
    if k < 1:
        raise argparse.ArgumentTypeError("--noises-per-clean must be 'all' or a positive integer")
    return k


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to attach to: 'auto' or HOST:PORT (default: RAY_ADDRESS, else a local Ray)",
    )


def cmd_corpus(args: argparse.Namespace) -> int:
    from speech_enhance.pipeline.corpus import make_corpus

    counts = make_corpus(args.out_dir, seed=args.seed)
    print(
        f"wrote {counts['speech_files']} utterances by {counts['speakers']} speakers to {args.out_dir}/speech "
        f"and {counts['noise_files']} noise files of {counts['noise_types']} types to {args.out_dir}/noise"
    )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from speech_enhance.pipeline.build import build_dataset
    from speech_enhance.pipeline.cluster import init_ray
    from speech_enhance.pipeline.config import BuildConfig

    cfg = BuildConfig(**_given(args, BuildConfig))
    cfg.validate()  # before Ray starts
    if args.address:
        init_ray(args.address)
    # A local Ray started for the build alone runs without the dashboard (cluster.local_ray_options).
    build_dataset(cfg, overwrite=args.overwrite, dashboard=False)
    return 0


def _widths(value: str) -> list[int]:
    try:
        widths = [int(w) for w in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--widths takes comma-separated integers, got {value!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError("--widths must be positive")
    return widths


def _name_value(value: str) -> tuple[str, object]:
    name, sep, raw = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"takes NAME=VALUE, got {value!r}")
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


def cmd_train(args: argparse.Namespace) -> int:
    from speech_enhance.model.config import TrainConfig
    from speech_enhance.model.train import train
    from speech_enhance.pipeline.cluster import init_ray

    values = _load_config_file(args.config) if args.config else {}
    if args.model_options:
        args.model_options = dict(args.model_options)
    if args.loss_options:
        args.loss_options = dict(args.loss_options)
    values.update(_given(args, TrainConfig))
    cfg = TrainConfig(**values).validated()  # before Ray starts
    if args.address:
        init_ray(args.address)
    train(cfg, overwrite=args.overwrite)
    return 0


def _load_config_file(path: str) -> dict:
    from speech_enhance.model.config import TrainConfig
    from speech_enhance.pipeline import storage

    data = storage.read_json(path)  # a local file or a URI (s3://.../best_config.json)
    data = data.get("config", data)  # best_config.json wraps the parameters
    return {k: v for k, v in data.items() if k in TrainConfig.__dataclass_fields__ and k not in ("data", "out")}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from speech_enhance.model.evaluate import evaluate, evaluate_pairs
    from speech_enhance.pipeline.cluster import init_ray

    pairs = args.noisy is not None or args.clean is not None
    if pairs == (args.data is not None):
        raise ValueError("give either --data (a build) or --noisy and --clean (folders of recordings)"
                         + (", not both" if pairs else ""))
    if pairs and (args.noisy is None or args.clean is None):
        raise ValueError(f"--{'clean' if args.clean is None else 'noisy'} is missing: --noisy and --clean come together")
    if pairs and args.split is not None:
        raise ValueError("--split picks a build's split; folders of recordings have none")
    if args.address:
        init_ray(args.address)
    if pairs:
        evaluate_pairs(args.noisy, args.clean, args.model, args.out, max_mixtures=args.max_mixtures or None,
                       samples=args.samples)
    else:
        evaluate(args.data, args.model, args.out, max_mixtures=args.max_mixtures or None, samples=args.samples,
                 split=args.split or "test")
    return 0


def cmd_enhance(args: argparse.Namespace) -> int:
    import functools

    from speech_enhance.model.enhance import enhance_paths_parallel, latency_ms, stream_pcm
    from speech_enhance.model.export import load_backend

    pcm = args.inputs == ["-"]
    if "-" in args.inputs and not pcm:
        raise ValueError("'-' (PCM on stdin) cannot be combined with files")
    if not pcm and args.out is None:
        raise ValueError("--out is required: the folder for the enhanced files")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a file; give a folder for the enhanced files")
    if args.strength is not None and not 0 <= args.strength <= 1:
        raise ValueError(f"--strength must be in [0, 1], got {args.strength}")
    if args.post_filter is not None:
        from speech_enhance.model.net import check_post_filter

        check_post_filter(args.post_filter, "--post-filter")
    for option, value in (("--jobs", args.jobs), ("--threads", args.threads), ("--rate", args.rate),
                          ("--channels", args.channels)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be at least 1, got {value}")
    log = functools.partial(print, file=sys.stderr) if pcm else print  # stdout carries the audio
    model_path = args.model
    if model_path is None:
        from speech_enhance.pretrained import default_model

        model_path = default_model()
        log(f"model: the pretrained model {model_path} (MODEL_CARD.md; --model overrides)")
    model, meta = load_backend(model_path, args.backend, args.threads, args.post_filter)
    strength = args.strength if args.strength is not None else float(meta.get("strength", 1.0))
    if args.strength is None:
        source = "chosen on validation data when it was trained" if "strength" in meta else "full mask"
        log(f"strength {strength} (the model's default: {source}; --strength overrides)")
    if args.post_filter is None and model.post_filter:
        log(f"post-filter {model.post_filter:g} (the model's default; --post-filter overrides, 0: off)")
    if pcm:
        latency = latency_ms(model)
        log(f"streaming {args.channels}-channel 16-bit PCM at {args.rate} Hz, stdin to stdout"
            + (f", algorithmic latency {latency:.0f} ms" if latency else " (this network needs the whole input)"))
        stream_pcm(model, sys.stdin.buffer, sys.stdout.buffer, args.rate, args.channels, strength)
        return 0
    # Files run in parallel processes of one thread each, unless --threads asks for one process.
    if args.backend == "onnx":  # workers take the graph exported here, not a model file to export again
        from speech_enhance.model.export import OnnxNet

        load = functools.partial(OnnxNet, model.source, args.threads or 1)
    else:
        load = functools.partial(_loaded_model, str(model_path), args.backend, args.threads or 1, args.post_filter)
    results = enhance_paths_parallel(load, args.inputs, args.out, strength=strength, jobs=args.jobs or
                                     (1 if args.threads else None))
    done = [r for r in results if not r.error]
    failed = [r for r in results if r.error]
    audio_s = sum(r.seconds_audio for r in done)
    wall_s = sum(r.seconds_wall for r in done)
    print(f"enhanced {len(done)} file(s), {audio_s:.1f} s of audio in {wall_s:.1f} s of compute "
          f"(real-time factor {wall_s / max(audio_s, 1e-9):.3f}); {len(failed)} failed")
    for r in failed:
        print(f"  failed: {r.path}: {r.error}", file=sys.stderr)
    return 1 if failed or not done else 0


def _loaded_model(path: str, backend: str, threads: int, post_filter: float | None = None) -> object:
    """The model alone (enhance's worker processes each load their own)."""
    from speech_enhance.model.export import load_backend

    return load_backend(path, backend, threads, post_filter)[0]


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from speech_enhance.model.export import OnnxNet, export_onnx
    from speech_enhance.model.net import load_model

    model, meta = load_model(args.model)
    export_onnx(model, args.onnx, meta)
    # Check what was written: ONNX Runtime's mask against PyTorch's on random input.
    mag = torch.rand(1, model.input_channels, 257, 200) * 2
    with torch.no_grad():
        error = float((OnnxNet(args.onnx)(mag) - model(mag)).abs().max())
    print(f"wrote {args.onnx} ({Path(args.onnx).stat().st_size / 2**20:.1f} MiB, {meta['model_config']['arch']}); "
          f"largest mask difference from PyTorch on random input: {error:.1e}")
    return 0 if error < 1e-4 else 1


def cmd_tune(args: argparse.Namespace) -> int:
    from speech_enhance.pipeline.cluster import init_ray
    from speech_enhance.tune.config import TuneConfig
    from speech_enhance.tune.search import search

    cfg = TuneConfig(**_given(args, TuneConfig))
    if args.address:
        init_ray(args.address)
    search(cfg)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from speech_enhance.demo import run_demo

    run_demo(args.out, epochs=args.epochs)
    return 0


def _default(config: type, name: str) -> object:
    """A config dataclass's default for ``name``: the CLI shows it, never repeats it."""
    spec = config.__dataclass_fields__[name]
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default


def _shown(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _option(p: argparse.ArgumentParser, flag: str, config: type, dest: str, text: str, default_text: str | None = None,
            **kwargs: object) -> None:
    """An option whose default lives in ``config`` (left None here, so that a flag the user
    did not give never overrides a --config file or the dataclass)."""
    shown = default_text if default_text is not None else _shown(_default(config, dest))
    p.add_argument(flag, dest=dest, default=None, help=f"{text} (default: {shown})", **kwargs)


def _given(args: argparse.Namespace, config: type) -> dict:
    """The options the user gave that are fields of ``config``."""
    return {k: v for k, v in vars(args).items() if v is not None and k in config.__dataclass_fields__}


def build_parser() -> argparse.ArgumentParser:
    from speech_enhance.model.config import PRECISIONS, TrainConfig
    from speech_enhance.model.losses import LOSSES
    from speech_enhance.model.net import ARCHITECTURES
    from speech_enhance.pipeline.config import BuildConfig
    from speech_enhance.tune.config import TuneConfig

    parser = argparse.ArgumentParser(
        prog="speech-enhance",
        description="Noisy-speech datasets, speech-denoising training, evaluation, enhancement and tuning on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("corpus", help="write the embedded default corpus (synthetic speech + noise)")
    p.add_argument("out_dir", help="folder to create speech/ and noise/ in")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("build", help="render clean x noise x SNR mixtures into Parquet patches")
    p.add_argument("--clean", dest="clean_dir", required=True, nargs="+", metavar="DIR",
                   help="folder(s) of clean speech, one sub-folder per speaker; several corpora combine "
                        "(speakers are then named FOLDER/SPEAKER)")
    p.add_argument("--noise", dest="noise_dir", required=True, nargs="+", metavar="DIR",
                   help="folder(s) of noise recordings (searched recursively; the parent folder is the type)")
    p.add_argument("--out", dest="out_dir", required=True, help="dataset folder to write")
    _option(p, "--snr", BuildConfig, "snrs", "SNRs in dB", type=float, nargs="+")
    _option(p, "--split", BuildConfig, "split", "fractions of speakers (and noise files) per split, summing to 1",
            type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"))
    _option(p, "--seed", BuildConfig, "seed", "random seed of the plan and every mixture", type=int)
    _option(p, "--noises-per-clean", BuildConfig, "noises_per_clean",
            "noise files mixed with each utterance: all of the split's, or K sampled", default_text="all",
            type=_noises_per_clean, metavar="all|K")
    p.add_argument("--no-split-noise", dest="split_noise", action="store_false", default=None,
                   help="share noise files between the splits")
    p.add_argument("--train-on-val-noise", dest="train_on_val_noise", action="store_true", default=None,
                   help="the final fit: train on the validation split's noise files too (validation keeps its "
                        "unseen speakers; the test split's noise stays unseen)")
    _option(p, "--speaker-regex", BuildConfig, "speaker_regex",
            "regex on the path relative to --clean whose first group is the speaker", default_text="the parent folder")
    _option(p, "--rows-per-file", BuildConfig, "rows_per_file", "patch rows per Parquet file",
            default_text="about 128 MiB", type=int)
    _option(p, "--dtype", BuildConfig, "dtype", "storage type of the tensors", choices=["float32", "float16"])
    variety = p.add_argument_group("variety (README \"Dataset variety\"; all off by default)")
    _option(variety, "--snr-range", BuildConfig, "snr_range", "draw each mixture's SNR uniformly from LOW..HIGH dB "
            "instead of taking every --snr", default_text="off", type=float, nargs=2, metavar=("LOW", "HIGH"))
    _option(variety, "--mixtures-per-clean", BuildConfig, "mixtures_per_clean",
            "K mixtures per utterance, each with a noise file of the split drawn at random "
            "(instead of every noise file x SNR)", default_text="off", type=int, metavar="K")
    _option(variety, "--rir", BuildConfig, "rir_dir", "folder(s) of room impulse responses (any format and rate)",
            default_text="none", nargs="+", metavar="DIR")
    for flag, dest, text in (
        ("--rir-prob", "rir_prob", "fraction of mixtures reverberated with an --rir file"),
        ("--simulate-rooms", "simulate_rooms",
         "fraction of mixtures reverberated in a simulated shoebox room (needs the reverb extra)"),
        ("--mic-eq", "mic_eq", "fraction of mixtures with a random microphone response"),
        ("--clip", "clip", "fraction of mixtures clipped at a random level"),
        ("--noise-transforms", "noise_transforms",
         "fraction of train mixtures whose noise gets a random EQ, slow gain modulation or a second noise file"),
        ("--synthetic-noise", "synthetic_noise",
         "fraction of train mixtures with babble of the split's other speakers or generated noise (coloured, shaped, "
         "impulsive, tonal) instead"),
        ("--speech-gaps", "speech_gaps",
         "fraction of train mixtures with 20-50%% of their speech silenced in gaps of 0.2-1.5 s, so the network "
         "also learns noise alone"),
        ("--noise-speed", "noise_speed",
         "fraction of train mixtures with a recorded noise whose noise is played 0.5-2x as fast (pitch and tempo "
         "together), so eight recordings sound like many"),
    ):
        _option(variety, flag, BuildConfig, dest, text, type=float, metavar="P")
    _option(variety, "--reverb-target", BuildConfig, "reverb_target",
            "training target of reverberant mixtures: early (denoise, keep 50 ms of reflections) or dry "
            "(denoise and dereverberate)", choices=["early", "dry"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing or unfinished dataset")
    _add_address(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("train", help="train a speech-denoising network with Ray Train (resumes when re-run)")
    p.add_argument("--data", required=True, help="dataset folder from `build`")
    p.add_argument("--out", required=True, help="run folder (checkpoints, best model, history)")
    p.add_argument("--config", default=None, help="JSON of training settings, e.g. TUNE_DIR/best_config.json; "
                                                  "flags given here override it")
    _option(p, "--epochs", TrainConfig, "epochs", "maximum epochs", type=int)
    _option(p, "--patience", TrainConfig, "patience", "early-stopping patience in epochs", type=int)
    _option(p, "--time-limit", TrainConfig, "time_limit",
            "minutes of training in all (the epoch under way ends early, is validated and saved)",
            default_text="none", type=float)
    _option(p, "--lr", TrainConfig, "lr", "AdamW learning rate", type=float)
    _option(p, "--weight-decay", TrainConfig, "weight_decay", "AdamW weight decay", type=float)
    _option(p, "--batch-size", TrainConfig, "batch_size", "patches per batch per worker", type=int)
    _option(p, "--sequence", TrainConfig, "sequence",
            "consecutive patches (0.5 s each) of one mixture per training example, for recurrent networks "
            "to learn longer context", type=int)
    _option(p, "--arch", TrainConfig, "arch", "network", choices=sorted(ARCHITECTURES))
    _option(p, "--widths", TrainConfig, "widths", "comma-separated channel widths",
            default_text="the architecture's own", type=_widths)
    p.add_argument("--model-option", dest="model_options", action="append", type=_name_value, default=None,
                   metavar="NAME=VALUE", help="another constructor argument of the architecture, e.g. hidden=256 "
                                              "for crn (repeatable)")
    _option(p, "--loss", TrainConfig, "loss", "training loss (model/losses.py)", choices=list(LOSSES))
    p.add_argument("--loss-option", dest="loss_options", action="append", type=_name_value, default=None,
                   metavar="NAME=VALUE", help="a weight of the loss, e.g. sisdr_weight=0.003 for cmag_asym_sisdr "
                                              "(repeatable; model/losses.py lists them)")
    _option(p, "--step-size", TrainConfig, "step_size", "StepLR step in epochs", default_text="StepLR off", type=int)
    _option(p, "--gamma", TrainConfig, "gamma", "StepLR decay factor", type=float)
    _option(p, "--ema", TrainConfig, "ema", "per-step decay of a moving average of the weights, which validation "
            "and the saved model use (e.g. 0.999)", default_text="off", type=float)
    _option(p, "--workers", TrainConfig, "workers", "data-parallel workers", type=int)
    _option(p, "--gpu", TrainConfig, "gpu", "use GPUs", choices=["auto", "yes", "no"])
    _option(p, "--precision", TrainConfig, "precision",
            "autocast precision of the network: bf16 (fast on GPUs and on CPUs with AMX), fp32, or auto "
            "(bf16 on GPUs, fp32 on CPUs)", choices=PRECISIONS)
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile the network for training: faster steps after about a minute of "
                        "compiling per worker")
    _option(p, "--cpus-per-worker", TrainConfig, "cpus_per_worker", "CPUs reserved per worker",
            default_text="leaves one CPU unreserved on small machines", type=float)
    _option(p, "--seed", TrainConfig, "seed", "random seed", type=int)
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    _add_address(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test loss, PESQ/STOI/SI-SDR against baselines, report with samples")
    p.add_argument("--data", help="dataset folder (its test split is evaluated, or --split)")
    p.add_argument("--noisy", help="instead of --data: a folder of noisy recordings, each scored against its "
                                   "clean file in --clean (same path below the folder, or same fileid_N)")
    p.add_argument("--clean", help="the folder of clean references for --noisy")
    p.add_argument("--model", required=True, help="a model file (RUN_DIR/cnn_enhancer_best.pth)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--split", choices=["test", "val"], default=None,
                   help="split to score: test (default) or val, to compare recipes and settings without "
                        "reading the test split")
    p.add_argument("--max-mixtures", type=int, default=200,
                   help="evaluate at most this many mixtures or pairs, evenly spaced (0: all; default: 200)")
    p.add_argument("--samples", type=int, default=3, help="mixtures written as audio + spectrogram figures (default: 3)")
    _add_address(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("enhance", help="denoise audio files or folders of any length, rate and channels")
    p.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively); '-': raw 16-bit PCM "
                                             "from stdin, enhanced to stdout as it arrives (see --rate)")
    p.add_argument("--model", default=None, help="a model file (RUN_DIR/cnn_enhancer_best.pth) or, with "
                                                 "--backend onnx, an exported .onnx (default: the pretrained model)")
    p.add_argument("--out", default=None, help="output folder (file names are kept); not used with '-'")
    p.add_argument("--strength", type=float, default=None,
                   help="0 = unchanged ... 1 = full mask (default: the strength saved in the model file, "
                        "chosen on validation data at training, else 1)")
    p.add_argument("--post-filter", dest="post_filter", type=float, default=None, metavar="BETA",
                   help="deepen suppression where the mask is low: PercepNet's post-filter, 0 = off (default: "
                        "the model file's, else 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="run the network with PyTorch or with ONNX Runtime (the onnx extra; faster on CPU) "
                        "(default: torch)")
    p.add_argument("--jobs", type=int, default=None,
                   help="files enhanced at once, each on one thread (default: every CPU when there are several files)")
    p.add_argument("--rate", type=int, default=16000, help="sample rate of PCM on stdin (default: 16000)")
    p.add_argument("--channels", type=int, default=1, help="channels of PCM on stdin (default: 1)")
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("export", help="export a model file to ONNX (network only; STFT outside)")
    p.add_argument("model", help="a model file (RUN_DIR/cnn_enhancer_best.pth)")
    p.add_argument("--onnx", required=True, help="ONNX file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("tune", help="Ray Tune + Optuna + ASHA search over lr, widths, StepLR (resumes when re-run)")
    p.add_argument("--data", required=True, help="dataset folder from `build`")
    p.add_argument("--out", required=True, help="search folder")
    _option(p, "--samples", TuneConfig, "samples", "trials", type=int)
    _option(p, "--max-concurrent", TuneConfig, "max_concurrent", "concurrent trials", default_text="what fits",
            type=int)
    _option(p, "--epochs", TuneConfig, "epochs", "maximum epochs per trial", type=int)
    _option(p, "--workers-per-trial", TuneConfig, "workers_per_trial", "training workers per trial", type=int)
    _option(p, "--gpus-per-trial", TuneConfig, "gpus_per_trial", "GPUs per training worker", type=int, choices=[0, 1])
    _option(p, "--space", TuneConfig, "space", "YAML/JSON search space replacing the default",
            default_text="tune/space.py's DEFAULT_SPACE")
    _option(p, "--seed", TuneConfig, "seed", "random seed of the search", type=int)
    _add_address(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("demo", help="corpus -> build -> train -> evaluate on the embedded corpus (CPU, minutes)")
    p.add_argument("--out", default="runs/demo", help="folder for everything the demo writes (default: runs/demo)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    allocator.keep_freed_memory()  # for the work this process does itself
    try:
        return args.func(args)
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"speech-enhance {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
