"""`vidops bench NAME`: benchmarks that print ratios against an anchor timed in the same run (benchmarks/README.md)."""

from __future__ import annotations

import argparse
from typing import Any


def add(
    commands: Any, project: argparse.ArgumentParser, params: argparse.ArgumentParser, overrides: argparse.ArgumentParser
) -> None:
    bench = commands.add_parser(
        "bench",
        parents=[project],
        help="benchmarks that print ratios against an anchor timed in the same run (data: <root>/.vidops/bench)",
    )
    bench.add_argument("name", choices=["extract", "train", "pipeline", "stack", "scale"])
    bench.add_argument(
        "--clips",
        type=int,
        help="extract: clips (24); train: clips per class (24); pipeline: clips per class (the demo's); "
        "scale: the largest dataset (4000)",
    )
    bench.add_argument(
        "--epochs",
        type=int,
        help="pipeline: training epochs of both models; train --encoder: of the classifier (default: the demo's)",
    )
    bench.add_argument("--seconds", type=float, help="extract: seconds a clip (default: 10 long-GOP, 7 short-GOP)")
    bench.add_argument(
        "--corpus",
        choices=["long-gop", "short-gop", "both"],
        default="both",
        help="extract: x264-default clips with one keyframe each, UCF101-shaped XviD clips with one every 25 frames, "
        "or both",
    )
    bench.add_argument("--workers", type=int, default=2, help="extract: worker processes")
    bench.add_argument(
        "--ucf101-clips", type=int, help="scale: UCF101-shaped clips, and 1%% more for the re-run (default: 300)"
    )
    bench.add_argument("--batches", type=int, default=60, help="train: timed batches")
    bench.add_argument(
        "--encoder",
        help="train: instead, the classifier with this frame encoder against small: accuracy and training time",
    )
    bench.add_argument("--runs", type=int, default=8, help="stack: flow runs submitted at once (default: 8)")
    bench.add_argument(
        "--database",
        default="postgresql://postgres@127.0.0.1:5432",
        help="stack: the PostgreSQL server to load (databases of a new prefix, dropped afterwards)",
    )
    bench.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> None:
    where = args.root.resolve() / ".vidops" / "bench"  # the generated clips, kept for the next run
    if args.name == "extract":
        from vidops.benchmarks import extract

        for corpus in extract.CORPORA if args.corpus == "both" else (args.corpus,):
            config = extract.BenchConfig(
                clips=args.clips or 24, seconds=args.seconds, corpus=corpus, workers=args.workers
            )
            print(extract.report(extract.run(where / "extract", config), config))
    elif args.name == "train":
        from vidops.benchmarks import train

        trained = train.BenchConfig(clips_per_class=args.clips or 24, batches=args.batches)
        if args.encoder:
            print(
                train.encoders_report(
                    train.compare_encoders(where / "train", trained, args.encoder, args.epochs), trained
                )
            )
        else:
            print(train.report(train.run(where / "train", trained), trained))
    elif args.name == "scale":
        from vidops.benchmarks import scale

        print(scale.report(scale.run(where / "scale", scale.sizes(args.clips), args.ucf101_clips or scale.UCF_CLIPS)))
    elif args.name == "stack":
        from vidops.benchmarks import stack

        print(stack.report(stack.run(where / "stack", args.runs, args.database)))
    else:
        from vidops.benchmarks import pipeline

        piped = pipeline.BenchConfig(clips_per_class=args.clips, epochs=args.epochs)
        print(pipeline.report(pipeline.run(where / "pipeline", piped), piped))
