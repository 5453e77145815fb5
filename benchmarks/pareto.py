"""Pareto time-to-quality against pastiche (issue 14): for every pastiche output, nst's cheapest setting as good.

For each content/style pair (six from ../shared/data by default), in one process on one machine, with the same
Caffe VGG19 weights and the same torch threads:

* **the peer's outputs**: pastiche (its L-BFGS, its loss weights, the style image at the content's pixel count)
  with its max pooling and with its average pooling, after 100 and after 300 steps.  A 100-step run is the
  first 100 steps of the 300-step one (one L-BFGS step per ``draw()``), so one run per pooling gives both,
  each with the time of its own draws (network and targets are built before its clock starts).
* **nst's front**: its default schedule (coarse-to-fine, its defaults) at each style weight of ``--weights``,
  each run timed from the call to ``stylize`` (its targets at every scale included; the network is loaded
  and one short run made before the clock starts, as pastiche's clock starts after the forward pass of its
  targets has warmed its kernels).

Every output is scored by the scale-robust evaluator (``nst.evaluate.RobustEvaluator``): content distance
and the style distance averaged over three style scales, so no engine's style-size convention decides.
For every peer output the benchmark finds the *cheapest* nst run that is at least as good on both axes
(content distance <= and robust style distance <=), and its time as a ratio to the peer's time; ``inf``
when no weight of the sweep dominates.  The summary is the geometric mean of those ratios and the worst
one.  Issue 14's target: every peer output dominated, geometric mean <= 0.1, none over 0.25.

    python benchmarks/pareto.py --json benchmarks/results/pareto.json --plot docs/images/pareto.png
    python benchmarks/pareto.py --quick                  # seconds: the whole procedure at 64 px
    python benchmarks/pareto.py --table benchmarks/results/pareto.json [--plot P]  # tables (and plot) from the JSON

``--table`` rewrites the block between ``<!-- pareto:begin -->`` and ``<!-- pareto:end -->`` in README.md
and docs/performance.md from a JSON file, so the figures there are regenerated, not retyped.
``--reuse-pastiche`` takes the peer's outputs from the cache of benchmarks/time_to_quality.py (keyed by
the images, size, steps, pooling and pastiche's version) when they were made on a CPU of the same model:
exploration only; the JSON records for every peer output whether it was recomputed in the run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_quality import DEFAULT_CACHE_DIR, geomean, parse_sets, pastiche_reference, pastiche_version  # noqa: E402

from nst import backbones, load_image, stylize  # noqa: E402
from nst.config import make_config  # noqa: E402
from nst.data import image  # noqa: E402
from nst.evaluate import RobustEvaluator  # noqa: E402
from nst.features import DEFAULT_CACHE  # noqa: E402
from nst.hardware import cpu_isa, cpu_model  # noqa: E402
from nst.images import atomic_write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
#: The three pairs of time_to_quality.py and the three of style_floor.py (which the defaults were not tuned on):
#: landscape, portrait and square photos against portrait, landscape and square paintings.
PAIRS = (
    ("contents/tubingen.jpg", "styles/starry_night.jpg"),
    ("contents/chelsea.png", "styles/the_scream.jpg"),
    ("contents/astronaut.png", "styles/kandinsky.jpg"),
    ("contents/coffee.png", "styles/woman-with-hat-matisse.jpg"),
    ("contents/tubingen.jpg", "styles/udnie.jpg"),
    ("contents/astronaut.png", "styles/wave.jpg"),
)
#: The run of record's sweep: below 2 nst is far from the painting, and above 50 no peer output is left to
#: dominate (the fronts in docs/images/pareto.png); each extra weight costs ~6 x 25 s.
WEIGHTS = (2, 5, 8, 12, 20, 30, 50)
PEER_STEPS = (100, 300)
PEER_POOLINGS = ("max", "avg")
TARGET_GEOMEAN, TARGET_WORST = 0.1, 0.25
MARKERS = ("<!-- pareto:begin -->", "<!-- pareto:end -->")


def resolve(name: str) -> Path:
    p = Path(name)
    return p if p.exists() else DATA / name


def machine_line() -> str:
    return (f"{cpu_model()} ({', '.join(cpu_isa()) or 'no AVX'}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, pastiche {pastiche_version()}")


def _scores(ev: RobustEvaluator, img: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict:
    sc = ev.score(img, content, [style])
    return {"content_d": sc.content_distance, "style_d": sc.style_distance,
            "style_scales": dict(sc.style_distance_scales), "swd": sc.style_swd, "color_d": sc.color_distance}


def peer_outputs(c_path: Path, s_path: Path, size: int, steps: tuple[int, ...], poolings: tuple[str, ...],
                 cache_dir: Path, reuse: bool) -> list[dict]:
    """pastiche's outputs: one run of max(steps) per pooling, the shorter step counts taken on the way."""
    out = []
    last = max(steps)
    for pooling in poolings:
        ref = pastiche_reference(c_path, s_path, size, last, None, cache_dir, reuse,
                                 snapshot_steps=tuple(steps), pooling=pooling)
        if ref.get("cached") and ref.get("cpu") != cpu_model():
            ref = pastiche_reference(c_path, s_path, size, last, None, cache_dir, False,
                                     snapshot_steps=tuple(steps), pooling=pooling)  # another CPU's time: redo
        for n in steps:
            image = ref["image"] if n == last else ref["snapshot_images"][n]
            seconds = ref["seconds"] if n == last else ref["snapshot_seconds"][str(n)]
            out.append({"peer": f"pastiche {pooling} {n}", "pooling": pooling, "steps": n, "seconds": seconds,
                        "cached": bool(ref.get("cached")), "image": image})
    return out


def nst_front(content: torch.Tensor, style: torch.Tensor, base, weights: tuple[float, ...]) -> list[dict]:
    """nst's default schedule at each style weight, each run timed from the call to `stylize`."""
    backbones.get_backbone(base.backbone, base.pooling, base.weights, torch.device("cpu"))  # load, untimed
    # A process's first run pays one-off costs (oneDNN kernel generation, allocator growth: a 64 px run took
    # 2.9 s cold, 0.7 s warm) that pastiche pays before its clock starts (its targets' forward pass).
    stylize(torch.nn.functional.interpolate(content, scale_factor=0.25), [style], base.replace(steps=2))
    out = []
    for w in weights:
        cfg = base.replace(style_weight=float(w))
        DEFAULT_CACHE.clear()  # no targets from an earlier pair or weight
        t0 = time.perf_counter()
        res = stylize(content, [style], cfg)
        seconds = time.perf_counter() - t0
        stages = res.info.get("stages", [])
        out.append({"style_weight": float(w), "seconds": seconds, "steps": len(res.history), "image": res.image,
                    "schedule": [[st["size"][1], st["size"][0], st["steps"]] for st in stages]})
    return out


def cheapest_dominating(peer: dict, front: list[dict]) -> dict | None:
    """The fastest nst run at least as good as `peer` on both axes."""
    good = [r for r in front if r["content_d"] <= peer["content_d"] and r["style_d"] <= peer["style_d"]]
    return min(good, key=lambda r: r["seconds"]) if good else None


def pareto_front(front: list[dict]) -> list[dict]:
    """nst's runs that no other run beats on time, content and style distance at once."""
    def beaten(a):
        return any(b is not a and b["seconds"] <= a["seconds"] and b["content_d"] <= a["content_d"]
                   and b["style_d"] <= a["style_d"] for b in front)
    return [r for r in front if not beaten(r)]


def style_falls(row: dict) -> dict:
    """Issue 14's second criterion on one pair: while nst's style distance is above the best of the peer's longest
    runs (both poolings), every step up the weight sweep lowers it, and the sweep's lowest is at or below that best.

    ``rises`` lists every step up the sweep that did not lower it; ``rises_above`` only those that started above the
    peer's level (the ones that fail the criterion): below it, the sweep is already as good as the peer."""
    sweep = sorted(row["nst"], key=lambda r: r["style_weight"])
    longest = max(m["steps"] for m in row["matches"])
    peer_best = min(m["style_d"] for m in row["matches"] if m["steps"] == longest)
    steps = list(zip(sweep, sweep[1:]))
    rises = [(a["style_weight"], b["style_weight"]) for a, b in steps if b["style_d"] >= a["style_d"]]
    rises_above = [(a["style_weight"], b["style_weight"]) for a, b in steps
                   if b["style_d"] >= a["style_d"] and a["style_d"] > peer_best]
    lowest = min(r["style_d"] for r in sweep)
    reaches = lowest <= peer_best
    return {"falls": not rises_above and reaches, "monotonic": not rises, "rises": rises,
            "rises_above": rises_above, "lowest": lowest, "peer_best": peer_best, "peer_steps": longest,
            "reaches": reaches}


def summarise(rows: list[dict]) -> dict:
    ratios = [m["ratio"] for r in rows for m in r["matches"]]
    per_pair = [max(m["ratio"] for m in r["matches"]) for r in rows]
    gm, worst = geomean(ratios), max(ratios) if ratios else float("nan")
    dominated = sum(1 for x in ratios if math.isfinite(x))
    falls = [style_falls(r) for r in rows if r.get("nst")]
    return {"peer_outputs": len(ratios), "dominated": dominated, "geomean_ratio": gm, "worst_ratio": worst,
            "worst_pair_ratio": max(per_pair) if per_pair else float("nan"),
            "meets_target": dominated == len(ratios) and gm <= TARGET_GEOMEAN and worst <= TARGET_WORST,
            "style_falls_pairs": sum(1 for f in falls if f["falls"]), "style_falls_of": len(falls),
            "style_monotonic_pairs": sum(1 for f in falls if f["monotonic"])}


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "image"}


# --------------------------------------------------------------------------- outputs


def plot(data: dict, path: Path) -> None:
    """One panel per pair: nst's sweep (content vs robust style distance, labelled by weight and seconds)
    and the peer's outputs, each joined to the nst run that dominates it; the dashed line is the level the sweep's
    style distance must fall to (issue 14's no-floor criterion)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    cols = min(3, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(max(5.2 * cols, 9.0), 4.4 * nrows + 0.8), squeeze=False)
    marks = {"max": "s", "avg": "D"}
    for ax, row in zip(axes.flat, rows):
        front = row["nst"]
        ax.plot([r["content_d"] for r in front], [r["style_d"] for r in front], "o-", color="tab:blue",
                label="nst default schedule, style-weight sweep")
        for r in front:
            ax.annotate(f"{r['style_weight']:g} ({r['seconds']:.0f}s)", (r["content_d"], r["style_d"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points", color="tab:blue")
        for m in row["matches"]:
            color = "tab:red" if m["steps"] == max(p["steps"] for p in row["matches"]) else "tab:orange"
            ax.scatter([m["content_d"]], [m["style_d"]], marker=marks.get(m["pooling"], "x"), color=color, zorder=3,
                       label=f"pastiche {m['pooling']} pool, {m['steps']} steps")
            ax.annotate(f"{m['seconds']:.0f}s", (m["content_d"], m["style_d"]), fontsize=6, xytext=(3, -8),
                        textcoords="offset points", color=color)
            if m["nst"] is not None:
                ax.plot([m["content_d"], m["nst"]["content_d"]], [m["style_d"], m["nst"]["style_d"]], ":",
                        color=color, linewidth=0.8)
        bar = style_falls(row)
        ax.axhline(bar["peer_best"], color="grey", linestyle="--", linewidth=0.7,
                   label=f"pastiche's best style distance in {bar['peer_steps']} steps (the sweep must get below it)")
        ax.set_title(f"{row['pair']} ({row['hw'][1]}x{row['hw'][0]})", fontsize=9)
        ax.set_xlabel("content distance (lower: closer to the photo)", fontsize=8)
        ax.set_ylabel("robust style distance", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    s = data["summary"]
    fig.suptitle(f"Time to quality against pastiche at {data['size']} px: geometric-mean ratio "
                 f"{s['geomean_ratio']:.3f}, worst {s['worst_ratio']:.3f}, {s['dominated']}/{s['peer_outputs']} "
                 f"dominated; style distance falls to pastiche's level on {s.get('style_falls_pairs', '?')}/"
                 f"{s.get('style_falls_of', len(rows))} pairs\n{data['machine']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def table(data: dict) -> str:
    """The Markdown block README.md and docs/performance.md show, from a JSON file of this benchmark."""
    s = data["summary"]
    commands = list(dict.fromkeys(r.get("command", data["command"]) for r in data["rows"])) or [data["command"]]
    lines = [f"Pareto time to quality at {data['size']} px, robust evaluator; {data['machine']}; "
             + " then ".join(f"`{c}`" for c in commands) + f" ({data['created']}; pairs {data.get('pairs_done', 'all')}"
             + (", some peer outputs from the cache: exploration" if data.get("peer_cached") else "") + ").",
             "",
             "| pair | pastiche output | its time | its content / style | cheapest nst as good (weight) "
             "| its time | ratio |",
             "|---|---|---:|---|---|---:|---:|"]
    for row in data["rows"]:
        for m in row["matches"]:
            n = m["nst"]
            nst_cell = "none of the sweep" if n is None else (
                f"{n['content_d']:.3f} / {n['style_d']:.4f} (w {n['style_weight']:g})")
            lines.append(f"| {row['pair']} | {m['pooling']} pool, {m['steps']} steps | {m['seconds']:.0f} s | "
                         f"{m['content_d']:.3f} / {m['style_d']:.4f} | {nst_cell} | "
                         + ("-" if n is None else f"{n['seconds']:.1f} s") + f" | {m['ratio']:.3f} |")
    lines += ["", f"**{s['dominated']}/{s['peer_outputs']} peer outputs dominated; geometric-mean ratio "
              f"{s['geomean_ratio']:.3f}, worst {s['worst_ratio']:.3f}** (target: all, <= {TARGET_GEOMEAN}, "
              f"<= {TARGET_WORST})."]
    if "style_falls_of" in s:
        misses, wiggles = [], []
        for row in data["rows"]:
            f = style_falls(row)
            if f["rises_above"]:
                misses.append(f"{row['pair']}: rises above pastiche's level from w "
                              + ", ".join(f"{a:g} to {b:g}" for a, b in f["rises_above"]))
            if not f["reaches"]:
                misses.append(f"{row['pair']}: lowest {f['lowest']:.4f} > pastiche's {f['peer_best']:.4f}")
            below = [r for r in f["rises"] if r not in f["rises_above"]]
            if below:
                wiggles.append(f"{row['pair']} from w " + ", ".join(f"{a:g} to {b:g}" for a, b in below)
                               + f", all below pastiche's {f['peer_best']:.4f}")
        lines += ["", f"Style distance falls with every step up the weight sweep down to pastiche's level (the best of "
                  f"its {max(data['peer_steps'])}-step runs) on **{s['style_falls_pairs']}/{s['style_falls_of']} "
                  f"pairs**" + (f" ({'; '.join(misses)})" if misses else "")
                  + f"; at every step of the sweep on {s['style_monotonic_pairs']}/{s['style_falls_of']}"
                  + (f" (it rises on {'; '.join(wiggles)})." if wiggles else ".")]
    return "\n".join(lines)


def readme_row(data: dict) -> str:
    """README's figures-table row (a Markdown table cannot hold a comment marker: the row is found by its start)."""
    s = data["summary"]
    steps = "/".join(str(n) for n in sorted(data["peer_steps"]))
    pools = "/".join(data["peer_pooling"])
    return (f"{README_ROW} {data['size']} px, {data['pairs_done']} pairs | {s['dominated']}/{s['peer_outputs']} "
            f"pastiche outputs ({steps} steps, {pools} pooling) dominated; nst's cheapest as good at "
            f"**{s['geomean_ratio']:.3f}** of pastiche's time (geometric mean; worst {s['worst_ratio']:.3f}), "
            f"robust evaluator{'; exploration (peers from the cache)' if data.get('peer_cached') else ''} "
            f"([performance.md](docs/performance.md#pareto-time-to-quality-issue-14)) | `{data['command']}` |")


README_ROW = "| time to quality vs pastiche,"


def write_tables(data: dict, files: list[Path]) -> list[Path]:
    """Replace the marked block (and README's row) of each file that has one; returns the files changed."""
    block = f"{MARKERS[0]}\n{table(data)}\n{MARKERS[1]}"
    pattern = re.compile(re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1]), re.S)
    row = re.compile("^" + re.escape(README_ROW) + ".*$", re.M)
    changed = []
    for f in files:
        text = f.read_text()
        new = row.sub(lambda _: readme_row(data), pattern.sub(lambda _: block, text))
        if new != text:
            atomic_write(f, lambda tmp, t=new: Path(tmp).write_text(t))
            changed.append(f)
    return changed


# --------------------------------------------------------------------------- main


def _pairs(args) -> list[tuple[str, str]]:
    """The (content, style) pairs asked for: ``--pairs C:S ...`` or the benchmark's six."""
    return [tuple(p.split(":", 1)) for p in args.pairs] if args.pairs else list(PAIRS)


def _settings(args, base, ev) -> dict:
    """What a run was measured with, and so what must match for a pair measured by an earlier process to stand
    beside this one's (the machine line holds the CPU model, its ISA, the threads, torch's and pastiche's versions)."""
    return {"size": args.size, "machine": machine_line(), "evaluator": ev.id, "overrides": parse_sets(args.set),
            "weights": args.weights, "peer_steps": args.peer_steps, "peer_pooling": args.peer_pooling,
            "config": base.model_dump(mode="json")}


def _data(args, command: str, base, ev, rows: list[dict]) -> dict:
    return {**_settings(args, base, ev), "command": command, "created": time.strftime("%Y-%m-%d"),
            "pairs_done": f"{len(rows)}/{len(_pairs(args))}",
            "peer_cached": any(m["cached"] for r in rows for m in r["matches"]), "rows": rows,
            "summary": summarise(rows)}


def resumed_rows(args, base, ev) -> list[dict]:
    """The pairs of an earlier run of the same benchmark on this kind of machine; [] when there is none."""
    if not args.json or not args.json.exists():
        return []
    old = json.loads(args.json.read_text())
    now = json.loads(json.dumps(_settings(args, base, ev)))  # as the JSON holds them (lists, string keys)
    differ = [k for k, v in now.items() if old.get(k) != v]
    if differ:
        print(f"not resumed: {args.json} was measured with another {', '.join(differ)}")
        return []
    if old.get("peer_cached"):
        print(f"not resumed: {args.json} has peer outputs from the cache")
        return []
    wanted = {(str(c), str(s)) for c, s in _pairs(args)}
    rows = [r for r in old["rows"] if (r["content"], r["style"]) in wanted]
    for r in rows:  # a pair keeps the command and date of the process that measured it
        r.setdefault("command", old["command"])
        r.setdefault("created", old["created"])
    return rows


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--pairs", nargs="+", help="CONTENT:STYLE paths (or relative to ../shared/data)")
    ap.add_argument("--weights", nargs="+", type=float, default=list(WEIGHTS), help="nst's style-weight sweep")
    ap.add_argument("--peer-steps", nargs="+", type=int, default=list(PEER_STEPS))
    ap.add_argument("--peer-pooling", nargs="+", default=list(PEER_POOLINGS), choices=["max", "avg"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a StyleConfig field of nst's runs (exploration), e.g. --set steps=20")
    ap.add_argument("--reuse-pastiche", action="store_true",
                    help="peer outputs from the cache when made on this CPU model (exploration)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    ap.add_argument("--threads", type=int, help="torch threads for both engines (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 pair, 64 px, peer 3/6 steps, 2 weights")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--resume", action="store_true",
                    help="keep the pairs already in --json when they were measured with the same settings on this "
                         "CPU model, torch and pastiche (each pair's peer and nst runs stay in one process), and run "
                         "the others")
    ap.add_argument("--plot", type=Path, help="write the fronts as a PNG here")
    ap.add_argument("--table", type=Path, metavar="JSON",
                    help="only rewrite the marked tables in README.md and docs/performance.md (and --plot) from "
                         "this JSON")
    args = ap.parse_args(argv)
    if args.table:
        data = json.loads(args.table.read_text())
        data["summary"] = summarise(data["rows"])  # a JSON written before a criterion was added gets it too
        for f in write_tables(data, [ROOT / "README.md", ROOT / "docs" / "performance.md"]):
            print(f"rewrote the Pareto table in {f.relative_to(ROOT)}")
        if args.plot:
            plot(data, args.plot)
            print(f"fronts: {args.plot}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.peer_steps = min(args.size, 64), [3, 6]
        # the first pair's bundled copies: a smoke run (and its test) needs no ../shared/data beside the clone
        args.pairs = args.pairs or [f"{image('tubingen.jpg')}:{image('starry_night.jpg')}"]
        args.weights = args.weights if args.weights != list(WEIGHTS) else [2, 30]
    pairs = _pairs(args)
    overrides = parse_sets(args.set)
    base = make_config(**{"size": args.size, "device": "cpu", **overrides})
    ev = RobustEvaluator(resolution=128 if args.quick else args.size)
    command = "python benchmarks/pareto.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"machine: {machine_line()}")
    print(f"command: {command}")
    print(f"peer: pastiche, {'/'.join(args.peer_pooling)} pooling, {'/'.join(map(str, args.peer_steps))} L-BFGS "
          f"steps; nst: default schedule" + (f" with {overrides}" if overrides else "")
          + f", style weights {' '.join(f'{w:g}' for w in args.weights)}; evaluator {ev.id}")
    started = time.perf_counter()
    rows = resumed_rows(args, base, ev) if args.resume else []
    done = {(r["content"], r["style"]) for r in rows}
    if rows:
        print(f"resumed: {len(rows)} pair(s) from {args.json} ({', '.join(r['pair'] for r in rows)})")
    for c_name, s_name in pairs:
        if (str(c_name), str(s_name)) in done:
            continue
        c_path, s_path = resolve(c_name), resolve(s_name)
        content = load_image(c_path, size=args.size)
        style = load_image(s_path)  # full size: each engine and the evaluator resize it their own way
        pair = f"{c_path.stem} x {s_path.stem}"
        print(f"\n{pair} ({content.shape[-1]}x{content.shape[-2]})", flush=True)
        peers = peer_outputs(c_path, s_path, args.size, tuple(sorted(args.peer_steps)), tuple(args.peer_pooling),
                             args.cache_dir, args.reuse_pastiche)
        for p in peers:
            p.update(_scores(ev, p.pop("image"), content, style))
        front = nst_front(content, style, base, tuple(args.weights))
        for r in front:
            r.update(_scores(ev, r.pop("image"), content, style))
            print(f"  nst w={r['style_weight']:<5g} {r['seconds']:7.1f}s {r['steps']:4d} steps  content "
                  f"{r['content_d']:.3f}  style {r['style_d']:.4f}", flush=True)
        matches = []
        for p in peers:
            best = cheapest_dominating(p, front)
            ratio = best["seconds"] / p["seconds"] if best else float("inf")
            matches.append({**p, "nst": best, "ratio": ratio})
            print(f"  {p['peer']:18s} {p['seconds']:7.1f}s  content {p['content_d']:.3f}  style {p['style_d']:.4f}"
                  f"{'  (cached)' if p['cached'] else ''}  ->  "
                  + (f"nst w={best['style_weight']:g} {best['seconds']:.1f}s (content {best['content_d']:.3f}, "
                     f"style {best['style_d']:.4f}): ratio {ratio:.3f}" if best else "NOT dominated by the sweep"),
                  flush=True)
        rows.append({"pair": pair, "content": str(c_name), "style": str(s_name), "hw": list(content.shape[-2:]),
                     "machine": machine_line(), "created": time.strftime("%Y-%m-%d %H:%M"), "command": command,
                     "nst": front, "nst_pareto": [r["style_weight"] for r in pareto_front(front)],
                     "matches": matches})
        if args.json:  # after every pair: a run stopped early keeps the pairs it finished
            _write_json(args.json, _data(args, command, base, ev, rows))
    order = {(str(c), str(s_)): i for i, (c, s_) in enumerate(pairs)}
    rows.sort(key=lambda r: order.get((r["content"], r["style"]), len(order)))
    data = _data(args, command, base, ev, rows)
    summary = data["summary"]
    print(f"\n{summary['dominated']}/{summary['peer_outputs']} peer outputs dominated; geometric-mean time ratio "
          f"nst/pastiche {summary['geomean_ratio']:.3f}, worst {summary['worst_ratio']:.3f} (target: all, <= "
          f"{TARGET_GEOMEAN}, <= {TARGET_WORST}): {'MET' if summary['meets_target'] else 'NOT met'}; "
          f"style distance falls with the weight down to pastiche's level on {summary['style_falls_pairs']}/"
          f"{summary['style_falls_of']} pairs (at every step on {summary['style_monotonic_pairs']}); "
          f"{time.perf_counter() - started:.0f} s in all")
    if args.json:
        _write_json(args.json, data)
    if args.plot:
        plot(data, args.plot)
        print(f"fronts: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
