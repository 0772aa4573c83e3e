"""`speech-enhance` command line: a thin layer over pipeline/, model/ and tune/."""

from __future__ import annotations

import argparse
import sys

from speech_enhance import allocator


def _fractions(values: list[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise argparse.ArgumentTypeError("--split takes three numbers: train val test")
    return (values[0], values[1], values[2])


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
    from pipeline.corpus import make_corpus

    counts = make_corpus(args.out_dir, seed=args.seed)
    print(
        f"wrote {counts['speech_files']} utterances by {counts['speakers']} speakers to {args.out_dir}/speech "
        f"and {counts['noise_files']} noise files of {counts['noise_types']} types to {args.out_dir}/noise"
    )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from pipeline.build import BuildConfig, build_dataset
    from speech_enhance.raysetup import init_ray

    cfg = BuildConfig(
        clean_dir=args.clean,
        noise_dir=args.noise,
        out_dir=args.out,
        snrs=args.snr,
        split=_fractions(args.split),
        seed=args.seed,
        noises_per_clean=args.noises_per_clean,
        rows_per_file=args.rows_per_file,
        dtype=args.dtype,
        split_noise=not args.no_split_noise,
        speaker_regex=args.speaker_regex,
    )
    if args.address:
        init_ray(args.address)
    # A local Ray started for the build alone runs without the dashboard (raysetup.local_ray_options).
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


def cmd_train(args: argparse.Namespace) -> int:
    from model.train import TrainConfig, train
    from speech_enhance.raysetup import init_ray

    values = {}
    if args.config:
        values.update(_load_config_file(args.config))
    explicit = {k: v for k, v in vars(args).items() if v is not None and k in TrainConfig.__dataclass_fields__}
    values.update(explicit)
    cfg = TrainConfig(**values)
    if args.address:
        init_ray(args.address)
    train(cfg, overwrite=args.overwrite)
    return 0


def _load_config_file(path: str) -> dict:
    from model.train import TrainConfig
    from pipeline import storage

    data = storage.read_json(path)  # a local file or a URI (s3://.../best_config.json)
    data = data.get("config", data)  # best_config.json wraps the parameters
    return {k: v for k, v in data.items() if k in TrainConfig.__dataclass_fields__ and k not in ("data", "out")}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.evaluate import evaluate
    from speech_enhance.raysetup import init_ray

    if args.address:
        init_ray(args.address)
    evaluate(args.data, args.model, args.out, max_mixtures=args.max_mixtures or None, samples=args.samples)
    return 0


def cmd_enhance(args: argparse.Namespace) -> int:
    import torch

    from model.enhance import enhance_paths
    from model.net import load_model

    model, meta = load_model(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    strength = args.strength if args.strength is not None else float(meta.get("strength", 1.0))
    if args.strength is None:
        source = "chosen on validation data when it was trained" if "strength" in meta else "full mask"
        print(f"strength {strength} (the model's default: {source}; --strength overrides)")
    results = enhance_paths(model, args.inputs, args.out, strength=strength)
    done = [r for r in results if not r.error]
    failed = [r for r in results if r.error]
    audio_s = sum(r.seconds_audio for r in done)
    wall_s = sum(r.seconds_wall for r in done)
    print(f"enhanced {len(done)} file(s), {audio_s:.1f} s of audio in {wall_s:.1f} s "
          f"(real-time factor {wall_s / max(audio_s, 1e-9):.3f}); {len(failed)} failed")
    for r in failed:
        print(f"  failed: {r.path}: {r.error}", file=sys.stderr)
    return 1 if failed or not done else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from speech_enhance.raysetup import init_ray
    from tune.search import TuneConfig, search

    if args.address:
        init_ray(args.address)
    search(TuneConfig(data=args.data, out=args.out, samples=args.samples, max_concurrent=args.max_concurrent,
                      epochs=args.epochs, workers_per_trial=args.workers_per_trial,
                      gpus_per_trial=args.gpus_per_trial, space=args.space, seed=args.seed))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from speech_enhance.demo import run_demo

    run_demo(args.out, epochs=args.epochs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speech-enhance",
        description="Noisy-speech datasets, mask-CNN training, evaluation and tuning on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("corpus", help="write the embedded default corpus (synthetic speech + noise)")
    p.add_argument("out_dir", help="folder to create speech/ and noise/ in")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("build", help="render every clean x noise x SNR mixture into Parquet patches")
    p.add_argument("--clean", required=True, help="folder of clean speech, one sub-folder per speaker")
    p.add_argument("--noise", required=True, help="folder of noise recordings (searched recursively)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--snr", type=float, nargs="+", default=[10.0, 5.0, 0.0, -5.0], help="SNRs in dB")
    p.add_argument("--split", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"),
                   help="fractions of speakers (and noise files) per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noises-per-clean", type=_noises_per_clean, default=None, metavar="all|K",
                   help="noise files mixed with each utterance: all of the split's (default) or K sampled")
    p.add_argument("--no-split-noise", action="store_true", help="share noise files between the splits")
    p.add_argument("--speaker-regex", default=None,
                   help="regex on the path relative to --clean whose first group is the speaker "
                        "(default: the parent folder name)")
    p.add_argument("--rows-per-file", type=int, default=None, help="patch rows per Parquet file (default ~128 MiB)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--overwrite", action="store_true", help="replace an existing or unfinished dataset")
    _add_address(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("train", help="train the mask CNN with Ray Train (resumes when re-run)")
    p.add_argument("--data", required=True, help="dataset folder from `build`")
    p.add_argument("--out", required=True, help="run folder (checkpoints, best model, history)")
    p.add_argument("--config", default=None, help="JSON of training settings, e.g. TUNE_DIR/best_config.json; "
                                                  "flags given here override it")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 100)")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (default 8)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 1e-2)")
    p.add_argument("--batch-size", type=int, default=None, help="patches per batch per worker (default 16)")
    p.add_argument("--arch", choices=["mask_cnn", "unet"], default=None, help="network (default mask_cnn)")
    p.add_argument("--widths", type=_widths, default=None, help="channel widths (default 32,64,64,32)")
    p.add_argument("--step-size", type=int, default=None, help="StepLR step in epochs (off unless given)")
    p.add_argument("--gamma", type=float, default=None, help="StepLR decay factor (default 0.5)")
    p.add_argument("--workers", type=int, default=None, help="data-parallel workers (default 1)")
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default=None, help="use GPUs (default auto)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs reserved per worker (default: leaves one CPU for Ray Data on small machines)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    _add_address(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test loss, PESQ/STOI/SI-SDR against baselines, report with samples")
    p.add_argument("--data", required=True, help="dataset folder (its test split is evaluated)")
    p.add_argument("--model", required=True, help="cnn_enhancer_best.pth")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--max-mixtures", type=int, default=200,
                   help="evaluate at most this many test mixtures, evenly spaced (0: all)")
    p.add_argument("--samples", type=int, default=3, help="mixtures written as audio + spectrogram figures")
    _add_address(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("enhance", help="denoise audio files or folders of any length, rate and channels")
    p.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    p.add_argument("--model", required=True, help="cnn_enhancer_best.pth")
    p.add_argument("--out", required=True, help="output folder (file names are kept)")
    p.add_argument("--strength", type=float, default=None,
                   help="0 = unchanged ... 1 = full mask; default: the strength saved in the model file "
                        "(chosen on validation data at training), else 1")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("tune", help="Ray Tune + Optuna + ASHA search over lr, widths, StepLR (resumes when re-run)")
    p.add_argument("--data", required=True, help="dataset folder from `build`")
    p.add_argument("--out", required=True, help="search folder")
    p.add_argument("--samples", type=int, default=20, help="trials")
    p.add_argument("--max-concurrent", type=int, default=None, help="concurrent trials (default: what fits)")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs per trial")
    p.add_argument("--workers-per-trial", type=int, default=1)
    p.add_argument("--gpus-per-trial", type=int, choices=[0, 1], default=0)
    p.add_argument("--space", default=None, help="YAML/JSON search space replacing the default (tune/space.py)")
    p.add_argument("--seed", type=int, default=0)
    _add_address(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("demo", help="corpus -> build -> train -> evaluate on the embedded corpus (CPU, minutes)")
    p.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    p.add_argument("--epochs", type=int, default=4)
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
