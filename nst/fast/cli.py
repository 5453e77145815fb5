"""`nst fast`, `nst train`, `nst video`: feed-forward inference, training (Prefect + MLflow), video.

Heavy packages (prefect, mlflow, cv2, av) are imported inside the commands so
`nst --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import ConfigError, NSTError


def add_commands(sub) -> None:
    _add_fast(sub)
    _add_train(sub)
    _add_video(sub)
    _add_models(sub)
    _add_export(sub)


def _style_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style-index", type=int, help="which style of a multi-style model (default 0)")
    p.add_argument("--blend", nargs="+", type=float, help="blend weights of a multi-style model's styles")
    p.add_argument("--preserve-color", action="store_true", help="keep the content's colours (luminance transfer)")


def _choice(args) -> int | list[float] | None:
    if args.style_index is not None and args.blend:
        raise ConfigError("give either --style-index or --blend, not both")
    return args.blend if args.blend else args.style_index


# --------------------------------------------------------------------------- fast


def _add_fast(sub) -> None:
    p = sub.add_parser("fast", help="stylise images with a trained feed-forward network",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="model file written by `nst train`, or a shipped network's name (see `nst models`)")
    p.add_argument("--content", help="content image")
    p.add_argument("--out", help="output image (PNG)")
    p.add_argument("--in-dir", help="stylise every image of this folder ...")
    p.add_argument("--out-dir", help="... into this folder")
    p.add_argument("--size", type=int, help="longest side of the output (default: the input's)")
    _style_choice(p)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 on GPUs and on CPUs with native bf16, else fp32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (~30 s once per image size; pays for folders of same-size images)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_fast)


def cmd_fast(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from .infer import Stylizer, stylize_file, stylize_folder

    single = args.content is not None or args.out is not None
    batch = args.in_dir is not None or args.out_dir is not None
    if single == batch:
        raise ConfigError("give --content and --out, or --in-dir and --out-dir")
    if single and not (args.content and args.out):
        raise ConfigError("--content and --out go together")
    if batch and not (args.in_dir and args.out_dir):
        raise ConfigError("--in-dir and --out-dir go together")
    stylizer = Stylizer(args.model, style=_choice(args), preserve_color=args.preserve_color,
                        precision=args.precision, device=args.device, compile=args.compile)
    t = time.perf_counter()
    if single:
        from ..images import load_image

        load_image(args.content)  # a bad file fails before anything is written
        out = stylize_file(stylizer, args.content, args.out, args.size)
        print(f"saved {out} in {time.perf_counter() - t:.2f}s on {stylizer.device}")
    else:
        written = stylize_folder(stylizer, args.in_dir, args.out_dir, args.size,
                                 progress=lambda x: tqdm(x, desc="fast"))
        print(f"saved {len(written)} images to {args.out_dir} in {time.perf_counter() - t:.2f}s on {stylizer.device}")
    return 0


# --------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train feed-forward style networks on COCO (Prefect flow, MLflow tracking)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--style", action="append", required=True, help="style image (repeat for several)")
    p.add_argument("--multi", action="store_true",
                   help="one network for all --style images (conditional instance norm); "
                        "default: one network per style")
    p.add_argument("--coco", help="COCO annotation JSON (e.g. annotations/instances_train2014.json)")
    p.add_argument("--images", required=True, help="image folder (COCO's train2014/, or any folder without --coco)")
    p.add_argument("--out-dir", default="models", help="where the model files go (<style>.pt)")
    add_train_flags(p)
    p.add_argument("--experiment", default="fast-train", help="MLflow experiment (nst-grid/<name>)")
    p.add_argument("--no-track", action="store_true", help="plain training: no Prefect flow, no MLflow")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)


#: `nst train` flags that are `TrainConfig` fields one to one: type, choices, default and help come from
#: the model (`add_train_flags`), so the CLI restates no default but the two of `TRAIN_CLI_DEFAULTS`.
TRAIN_FLAGS = (
    "size", "style_size", "batch_size", "steps", "lr", "content_weight", "style_weight", "tv_weight", "backbone",
    "weights", "pooling", "content_layers", "style_layers", "norm", "width", "n_residual", "seed", "device",
    "precision", "compile", "workers", "val_image", "val_every", "eval_photos", "eval_every", "eval_size",
    "keep_best", "checkpoint_every",
)
#: The only flags whose default is not `TrainConfig`'s, each with the reason `--help` gives for it.
#: TrainConfig's 0 (only at the end) suits a library call and a grid cell's short training (whose
#: `nst.options.TrainOptions` sets its own val_every); an `nst train` run is a long one.
TRAIN_CLI_DEFAULTS = {
    "val_every": (100, "a tracked run logs its evolution to MLflow"),
    "checkpoint_every": (500, "a killed run resumes from its last checkpoint, not from step 0"),
}
#: Help for fields without a description in `TrainConfig`.
TRAIN_HELP = {"weights": "backbone weights file", "seed": "network initialisation and sample order"}


def add_train_flags(p: argparse.ArgumentParser, fields: tuple[str, ...] = TRAIN_FLAGS) -> None:
    """One ``--flag`` per `TrainConfig` field, typed from its annotation (a Literal: choices; a tuple: several)."""
    from typing import Literal, Union, get_args, get_origin

    from .train import TrainConfig

    for name in fields:
        info = TrainConfig.model_fields[name]
        kind, extra = info.annotation, {}
        if get_origin(kind) is Union:  # Optional[X]
            kind = next(a for a in get_args(kind) if a is not type(None))
        if get_origin(kind) is Literal:
            extra["choices"] = get_args(kind)
            kind = type(get_args(kind)[0])
        elif get_origin(kind) is tuple:
            extra["nargs"] = "+"
            kind = get_args(kind)[0]
        default, help_ = info.default, TRAIN_HELP.get(name) or info.description or name.replace("_", " ")
        if name in TRAIN_CLI_DEFAULTS:
            default, why = TRAIN_CLI_DEFAULTS[name]
            help_ += f"; not TrainConfig's {info.default}, so that {why}"
        if kind is bool:  # a switch: --keep-best / --no-keep-best
            p.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=default,
                           help=help_)
            continue
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=help_, **extra)


def train_configs(args: argparse.Namespace) -> list[dict]:
    """One config dict per network to train (validated here, before any work)."""
    from .train import make_train_config

    groups = [list(args.style)] if args.multi else [[s] for s in args.style]
    out_dir = Path(args.out_dir)
    configs = []
    for styles in groups:
        name = "+".join(Path(s).stem for s in styles)
        cfg = dict(styles=styles, images=args.images, coco=args.coco, **{f: getattr(args, f) for f in TRAIN_FLAGS},
                   checkpoint=str(out_dir / f"{name}.ckpt"), out=str(out_dir / f"{name}.pt"))
        make_train_config(**cfg)
        configs.append(cfg)
    return configs


def cmd_train(args: argparse.Namespace) -> int:
    from ..images import load_image
    from .train import train, training_files

    configs = train_configs(args)
    for s in args.style:
        load_image(s, size=16)
    training_files(args.images, args.coco)
    if args.no_track:
        from tqdm import tqdm

        for cfg in configs:
            bar = tqdm(total=cfg["steps"], desc=Path(cfg["out"]).stem, disable=args.quiet, dynamic_ncols=True)

            def on_step(info, bar=bar) -> None:
                bar.update(info.step - bar.n)
                bar.set_postfix(total=f"{info.losses['total']:.3g}", ips=f"{info.images_per_s:.1f}")

            try:
                r = train(cfg, callback=on_step)
            finally:
                bar.close()
            print(f"saved {r.model_path}: {r.timings['train_s']:.1f}s, {r.timings['images_per_s']:.2f} images/s")
        return 0
    try:
        run_training = tracked_training()
    except ImportError as exc:
        raise NSTError(f"nst train needs the flows package and prefect/mlflow ({exc}); or use --no-track") from None
    results = run_training(configs, experiment=args.experiment, progress=not args.quiet)
    for r in results:
        print(f"saved {r['model']}: {r['train_s']:.1f}s, {r['images_per_s']:.2f} images/s, MLflow run {r['run_id']}")
    return 0


#: Entry-point group of the tracked training (`flows` provides ``tracked``: a Prefect flow into MLflow).
TRAINING_GROUP = "nst.training"


def tracked_training():
    """``run_training(configs, experiment=, progress=)`` from the installed `TRAINING_GROUP` entry point
    (which imports Prefect: an ImportError when it is missing)."""
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group=TRAINING_GROUP)}
    if "tracked" not in eps:
        raise ImportError(f"no '{TRAINING_GROUP}' entry point 'tracked' (is nst-lab installed with its flows?)")
    return eps["tracked"].load()()


# --------------------------------------------------------------------------- video


def _add_video(sub) -> None:
    p = sub.add_parser("video", help="stylise a video (fast network per frame, or optimisation with temporal loss)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--in", dest="src", required=True, help="video file, or a folder of frame images")
    p.add_argument("--out", required=True, help="output video (.mp4, .mkv, ...)")
    p.add_argument("--mode", choices=("fast", "optim"), default="fast")
    p.add_argument("--model", help="fast mode: model file from `nst train`, or a shipped network's name")
    _style_choice(p)
    p.add_argument("--style", action="append", help="optim mode: style image (repeat for several)")
    p.add_argument("--size", type=int, help="longest side to process at (default: the video's)")
    p.add_argument("--max-frames", type=int, help="only the first N frames")
    p.add_argument("--fps", type=float, help="frame rate of a frame folder (default 24)")
    p.add_argument("--steps", type=int, default=200, help="optim: steps for the first frame")
    p.add_argument("--frame-steps", type=int, default=100, help="optim: steps for each later frame")
    p.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    p.add_argument("--content-weight", type=float, default=1.0)
    p.add_argument("--style-weight", type=float, default=20.0)
    p.add_argument("--temporal-weight", type=float, default=200.0, help="optim: weight of Ruder's temporal loss")
    p.add_argument("--no-temporal", action="store_true", help="optim: independent frames (the flickering baseline)")
    p.add_argument("--flow", choices=("dis", "raft"), default="dis",
                   help="optical flow: OpenCV DIS or torchvision RAFT")
    p.add_argument("--flow-weights", help="RAFT weights file (default: the torch hub cache)")
    p.add_argument("--stabilize", type=float, default=0.0, metavar="A",
                   help="fast: temporal stabilisation, 0..1: each network frame blended with the previous output "
                        "warped by optical flow, weight A where the occlusion mask allows (0 = off)")
    p.add_argument("--warp-error-every", type=int, metavar="N",
                   help="measure the temporal warping error on every N-th frame pair, 0 = not at all (its two "
                        "optical flows cost more than a network frame); None: every pair, but every "
                        f"{FAST_WARP_ERROR_EVERY}th in fast mode without --stabilize")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help=f"fast: torch.compile the network (seconds once per frame size); auto: for clips of "
                        f">= {COMPILE_MIN_FRAMES} frames")
    p.add_argument("--workers", type=int, metavar="N",
                   help="fast: frames in the network at once, each on 1/N of the CPU threads; None: 2 on a CPU "
                        "with >= 2 cores, else 1")
    p.add_argument("--preset", choices=X264_PRESETS, metavar="PRESET",
                   help="x264 preset, ultrafast .. veryslow; None: veryfast in fast mode (at 640x360 half the "
                        "encoding time of medium, a file ~7%% smaller), medium in optim mode")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 on GPUs and on CPUs with native bf16, else fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_video)


#: `nst video --mode fast`: the network is compiled for clips of at least this many frames (compiling takes
#: seconds, a compiled frame is ~1.8x faster on a CPU) ...
COMPILE_MIN_FRAMES = 48
#: ... and without --stabilize the warping error is measured on every N-th frame pair only (its two optical
#: flows take longer than the network's frame; with --stabilize they are computed for every frame anyway).
FAST_WARP_ERROR_EVERY = 24
#: libx264's presets (`nst.video.X264_PRESETS`, restated so that `nst --help` imports no video code).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def cmd_video(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from .. import video
    from ..config import make_config

    started = time.perf_counter()
    out = Path(args.out)
    if out.suffix.lower() not in video.VIDEO_SUFFIXES:
        raise ConfigError(f"--out {out}: must be a video file ({', '.join(video.VIDEO_SUFFIXES)})")
    if not 0 <= args.stabilize <= 1:
        raise ConfigError(f"--stabilize: must be between 0 and 1, got {args.stabilize:g}")
    if args.stabilize and args.mode != "fast":
        raise ConfigError("--stabilize is for network frames (--mode fast); --mode optim has --temporal-weight")
    if args.warp_error_every is not None and args.warp_error_every < 0:
        raise ConfigError(f"--warp-error-every: must be >= 0, got {args.warp_error_every}")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {args.workers}")
    info = video.probe(args.src, args.fps)
    total = min(info.frames, args.max_frames) if info.frames and args.max_frames else (info.frames or args.max_frames)
    every = args.warp_error_every
    if every is None:
        every = FAST_WARP_ERROR_EVERY if args.mode == "fast" and not args.stabilize else 1
    measure = dict(measure=every > 0, measure_every=max(every, 1))
    flow = video.make_flow(args.flow, args.flow_weights, "cpu" if args.device == "auto" else args.device)
    if args.mode == "fast":
        if not args.model:
            raise ConfigError("--mode fast needs --model")
        from .infer import Stylizer

        compile_net = args.compile == "on" or (args.compile == "auto" and (not total or total >= COMPILE_MIN_FRAMES))
        model = Stylizer(args.model, style=_choice(args), preserve_color=args.preserve_color,
                         precision=args.precision, device=args.device, compile=compile_net)
        fs = video.FrameStylizer("fast", model=model, flow=flow, stabilize=args.stabilize, **measure)
        workers = args.workers or (2 if model.device.type == "cpu" and (os.cpu_count() or 1) >= 2 else 1)
        net_info = {"precision": model.precision, "compiled": compile_net}
    else:
        if not args.style:
            raise ConfigError("--mode optim needs --style")
        from ..images import load_image

        styles = [load_image(s) for s in args.style]
        config = make_config(steps=args.steps, optimizer=args.optimizer, content_weight=args.content_weight,
                             style_weight=args.style_weight, device=args.device, precision=args.precision,
                             preserve_color="luminance" if args.preserve_color else None)
        fs = video.FrameStylizer("optim", styles=styles, config=config, temporal=not args.no_temporal,
                                 temporal_weight=args.temporal_weight, frame_steps=args.frame_steps, flow=flow,
                                 **measure)
        workers, net_info = 1, {}
    preset = args.preset or ("veryfast" if args.mode == "fast" else "medium")
    res = video.stylize_video(args.src, out, fs, size=args.size, max_frames=args.max_frames, fps=args.fps,
                              progress=lambda g: tqdm(g, total=total, desc=f"video {args.mode}", unit="frame",
                                                      disable=args.quiet), workers=workers, preset=preset)
    command_s = time.perf_counter() - started
    n, later = max(res.frames, 1), max(res.frames - 1, 1)  # flows, network and blend: after the first frame
    ms = {"decode": 1000 * res.info["decode_s"] / n, "flow": 1000 * res.info["flow_s"] / later,
          "stylize": 1000 * res.info["stylize_s"] / later, "temporal": 1000 * res.info["temporal_s"] / later,
          "encode": 1000 * res.info["encode_s"] / n}
    summary = {"out": str(out), "mode": res.mode, "frames": res.frames, "fps": float(info.fps),
               "audio": info.has_audio and not Path(args.src).is_dir(), "warp_error": res.warp_error,
               "seconds": res.seconds, "frames_per_s": res.fps_processed,
               "stylize_frames_per_s": res.info["steady_frames_per_s"],
               "command_s": command_s, "command_frames_per_s": res.frames / command_s,
               "ms_per_frame": ms,
               "preset": preset, **net_info, **res.info}
    if args.json:
        print(json.dumps(summary))
        return 0
    what = [res.mode] + (["temporal"] if args.mode == "optim" and not args.no_temporal else [])
    what += [f"stabilize {args.stabilize:g}"] if args.stabilize else []
    pairs = res.info.get("measured_pairs", 0)
    error = (f"temporal warping error {res.warp_error:.5g} over {pairs} of {res.info.get('pairs', 0)} frame pairs"
             if pairs else "warping error not measured")
    print(f"saved {out}: {res.frames} frames at {float(info.fps):g} fps; stylised at "
          f"{summary['stylize_frames_per_s']:.1f} frames/s after the first frame ({res.info['first_output_s']:.1f}s"
          f"{', compiling' if net_info.get('compiled') else ''}), {summary['command_frames_per_s']:.1f} frames/s "
          f"for the whole command ({command_s:.1f}s); {error} ({', '.join(what)})")
    return 0


# --------------------------------------------------------------------------- models, export


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the pretrained feed-forward networks installed with nst")
    p.add_argument("--json", action="store_true", help="machine-readable output (with each network's provenance)")
    p.set_defaults(func=cmd_models)


def _hours(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _num(v, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def cmd_models(args: argparse.Namespace) -> int:
    from .models import models_dir, score, shipped_models

    broken: list[str] = []
    found = shipped_models(broken=broken)
    for reason in broken:  # the others are still listed; the exit status says something is wrong
        print(f"nst models: {reason}", file=sys.stderr)
    status = 2 if broken else 0
    if args.json:
        print(json.dumps([m.to_dict() for m in found], indent=1))
        return status
    if not found:
        print(f"no pretrained networks are installed (none in {models_dir()}); train one with `nst train`")
        return status
    rows = [("name", "styles", "MB", "steps", "content", "style", "trained")]
    for m in found:
        prov, scores = m.provenance, m.provenance.get("scores") or {}
        rows.append((m.name, ", ".join(m.styles), f"{m.size / 1e6:.1f}", _num(prov.get("steps"), "d"),
                     _num(score(scores, "content_distance"), ".3f"), _num(score(scores, "style_distance"), ".3f"),
                     _hours(prov.get("wall_s"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("content/style: the evaluator's distances on validation photos (lower is better); "
          "use a name with `nst fast --model NAME`")
    return status


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a feed-forward network for another runtime (ONNX)")
    p.add_argument("--onnx", nargs=2, required=True, metavar=("MODEL", "OUT"),
                   help="model file or shipped network's name, and the .onnx file to write (inputs `image` "
                        "[N,3,H,W] in 0..1 and, for a multi-style network, `style_weights` [S])")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    model, out = args.onnx
    path = export_onnx(model, out)
    print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
