"""`compress`: the command line. Flags are a shorthand for a recipe; `--recipe FILE` loads a whole one.

Subcommands, chosen by the first word: `compress search` (the fastest artifact within an accuracy budget),
`compress targets`, `compress bench ARTIFACT` (numpy, OpenCV, pyyaml and
the artifact's runtime only: it runs on the device) and `compress report RUN_OR_BENCH ...`.

Exit status: 0 when every gate holds, 1 when a gate fails, 2 on bad input or a fault of the machine or dataset,
3 on an internal error, 130 when interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgecompress import __version__
from edgecompress.errors import UserError

EPILOG = """examples:
  compress                                   run the embedded demo (a small raccoon model and dataset)
  compress --model best.pt --data data.yaml --target x86
  compress --recipe release.yaml --max-map-drop 1.0 --max-latency-ms 30
  compress search --model best.pt --data data.yaml --target x86 --max-map-drop 1.0 --budget 3h
                                             the fastest artifact within 1 mAP50-95 point (search.md)
  compress targets                           list the targets and whether each runtime is usable here
  compress bench model.onnx --data data.yaml time an artifact on this device (bench.json, bench.md)
  compress report out-x86 out-arm bench-pi5  compare runs and on-device benchmarks (report.md, plots)

exit status: 0 all gates hold, 1 a gate failed (the report says which), 2 bad input or a fault of the
machine or dataset (a full disk, no such device, out of memory: the line says what to do), 3 internal error,
130 interrupted (rerun the same command to resume where it stopped)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compress", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prune, quantize, export and measure an Ultralytics YOLO detector for an edge target.")
    p.add_argument("--model", metavar="PT", help="trained Ultralytics detection checkpoint (best.pt); "
                   "omit with --data to run the embedded demo")
    p.add_argument("--data", metavar="YAML", help="the dataset YAML the model was trained on")
    p.add_argument("--target", metavar="NAME", help="deployment target: onnx (default), arm, x86, ncnn, "
                   "jetson (= jetson-orin-nano), jetson-orin-nx, jetson-agx-orin; `compress targets` lists them")
    p.add_argument("--recipe", metavar="YAML", help="recipe file with every setting; the flags here override it")
    p.add_argument("--out", metavar="DIR", default="compress-out",
                   help="output folder; rerunning into it reuses finished stages (default: %(default)s)")
    p.add_argument("--imgsz", metavar="N", type=int, help="square input size, a multiple of 32 (default 640)")
    p.add_argument("--device", metavar="cpu|0|mps", help="device for PyTorch work: cpu, a CUDA index or mps (Apple "
                   "silicon); checked before any work (default cpu)")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--prune", metavar="FLOPS_FRACTION", type=float,
                        help="fraction of FLOPs to remove by structured pruning, e.g. 0.35 (default 0: none)")
    amount.add_argument("--prune-latency", metavar="LATENCY_FRACTION", type=float,
                        help="fraction of the network's latency in the target's runtime to remove by structured "
                             "pruning, e.g. 0.4: each layer's cost measured in the whole model, then the pruned "
                             "model timed until it lands within 5%% of the target")
    p.add_argument("--quant", choices=("none", "ptq", "qat"),
                   help="INT8 quantization: ptq (post-training, the default where the target runs INT8), qat "
                        "(quantization-aware training) or none (the target's float precision)")
    p.add_argument("--max-map-drop", metavar="PTS", type=float,
                   help="mAP50-95 points the final artifact may lose: the INT8 fallback keeps layers in float to stay "
                        "within it (default 1.0), and the run fails (exit 1) if it still loses more")
    p.add_argument("--max-latency-ms", metavar="MS", type=float,
                   help="gate: fail (exit 1) if the final artifact's p50 end-to-end latency (the decoded frame to "
                        "detections: letterbox, inference, NMS) exceeds this")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle the checkpoint fully (it can run code): only for a file whose origin you trust; "
                        "by default only the classes an Ultralytics detection checkpoint needs are allowed")
    p.add_argument("--json-progress", metavar="FILE", help="also write every progress event as one JSON object a line "
                   "to FILE ('-': standard error), for CI systems and notebooks")
    p.add_argument("--verbose", action="store_true", help="show the third-party log on the screen too (it always goes "
                   "to OUT/compress.log)")
    p.add_argument("--debug", action="store_true", help="show tracebacks, and the third-party log as --verbose does")
    p.add_argument("--version", action="version", version=f"edgecompress {__version__}")
    return p


def recipe_from_args(args: argparse.Namespace) -> Any:
    """The recipe file (or defaults) with every flag that was given laid over it."""
    from edgecompress.recipe import Recipe

    recipe = Recipe.load(args.recipe) if args.recipe else Recipe()
    flags = {"model": args.model, "data": args.data, "target": args.target, "imgsz": args.imgsz,
             "device": args.device, "prune.flops": args.prune, "prune.latency": args.prune_latency,
             "quant.mode": args.quant,
             "gates.max_map_drop": args.max_map_drop, "gates.max_latency_ms": args.max_latency_ms,
             # one budget on the command line: the INT8 fallback keeps layers in float to stay within it
             "quant.max_map_drop": args.max_map_drop}
    given = {k: v for k, v in flags.items() if v is not None}
    for key in ("model", "data"):
        if key in given:
            given[key] = str(Path(given[key]).expanduser().resolve())
    return recipe.with_overrides(**given) if given else recipe


@contextlib.contextmanager
def showing_progress(json_progress: str | None) -> Iterator[None]:
    """Progress on standard error (a live line on a terminal, plain lines on a pipe), and as JSON lines to
    `json_progress` ('-': standard error) when given."""
    from edgecompress import progress

    screen = progress.Terminal(sys.stderr) if sys.stderr.isatty() else progress.Lines(sys.stderr)
    with contextlib.ExitStack() as stack:
        sinks: list[progress.Sink] = [screen]
        if json_progress:
            stream = sys.stderr if json_progress == "-" else stack.enter_context(open(json_progress, "w"))
            sinks.append(progress.JsonLines(stream))
        stack.enter_context(progress.reporting(*sinks))
        yield


def run(args: argparse.Namespace) -> int:
    from edgecompress.pipeline.report import change_points
    from edgecompress.pipeline.runner import Runner

    recipe = recipe_from_args(args)
    with showing_progress(args.json_progress):
        report = Runner(recipe, Path(args.out), trust_checkpoint=args.trust_checkpoint,
                        echo=sys.stderr if args.verbose or args.debug else None).run()
    out = Path(args.out)
    final = report["final"]
    print(f"\nreport: {out / 'report.md'} (and report.json, compress.log); artifact: {out / final['artifact']}"
          + (f" (its network, which YOLO() loads: {out / final['network']})" if "network" in final else ""))
    width = max(len(s["name"]) for s in report["stages"])
    for s in report["stages"]:
        acc, bench = s["accuracy"], s["benchmark"]
        print(f"  {s['name']:<{width}}  mAP50-95 {acc['map50_95']:.3f} ({change_points(s, report['stages']):+.2f})  "
              f"end to end p50 {bench['end_to_end']['p50_ms']:7.1f} ms  inference {bench['inference']['p50_ms']:7.1f} "
              f"ms  {bench['file_mb']:6.1f} MB")
    failed = [g for g in report["gates"] if not g["passed"]]
    for g in failed:
        print(f"gate failed: {g['gate']} = {g['value']} (limit {g['limit']})", file=sys.stderr)
    return 1 if failed else 0


def search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compress search", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search image size, pruning, precision and fine-tuning for the fastest artifact within an "
                    "accuracy budget (or the most accurate under a latency), each candidate measured in the target's "
                    "runtime. With no --model, a small search on the embedded demo.",
        epilog="exit status: 0 an artifact meets the goal (search.md says which), 1 none does, 2 bad input, "
               "3 internal error, 130 interrupted (rerun the same command: finished trials are kept)")
    p.add_argument("--model", metavar="PT", help="trained Ultralytics detection checkpoint; omit for the demo")
    p.add_argument("--data", metavar="YAML", help="the dataset YAML the model was trained on")
    p.add_argument("--target", metavar="NAME", help="deployment target (compress targets lists them)")
    p.add_argument("--recipe", metavar="YAML", help="recipe file (its search: section sets the space); flags override")
    p.add_argument("--out", metavar="DIR", default="search-out",
                   help="output folder; rerunning into it resumes, reusing finished trials (default: %(default)s)")
    p.add_argument("--imgsz", metavar="N", type=int, help="the size the model was trained at (default 640): the "
                   "reference, and the largest size tried")
    p.add_argument("--device", metavar="cpu|0|mps", help="device for PyTorch work (default cpu)")
    p.add_argument("--max-map-drop", metavar="PTS", type=float, help="mAP50-95 points the artifact may lose against "
                   "the unpruned float model at the trained size (default 1.0)")
    p.add_argument("--max-latency-ms", metavar="MS", type=float, help="instead: the most accurate artifact whose "
                   "end-to-end p50 is under this")
    p.add_argument("--budget", metavar="N|MINm|Hh",
                   help="stop starting trials after N trials, or MIN minutes / H hours")
    p.add_argument("--executor", choices=("auto", "ray", "sequential"),
                   help="where trials run: ray (local, or --ray-address), sequential (this process); auto: ray when "
                        "installed")
    p.add_argument("--ray-address", metavar="ADDR", help="a Ray cluster to run trials on ('auto', ray://host:10001)")
    p.add_argument("--workers", metavar="N", type=int, help="trials at once on Ray (default 1)")
    p.add_argument("--trust-checkpoint", action="store_true", help="unpickle the checkpoint fully (as compress)")
    p.add_argument("--json-progress", metavar="FILE", help="also write progress as JSON lines to FILE ('-': stderr)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def search(args: argparse.Namespace) -> int:
    from edgecompress.recipe import Recipe
    from edgecompress.search.config import parse_budget
    from edgecompress.search.search import search as run_search

    recipe = Recipe.load(args.recipe) if args.recipe else Recipe()
    flags = {"model": args.model, "data": args.data, "target": args.target, "imgsz": args.imgsz, "device": args.device,
             "search.max_map_drop": args.max_map_drop, "search.max_latency_ms": args.max_latency_ms,
             "search.executor": args.executor, "search.ray_address": args.ray_address,
             "search.workers": args.workers,
             **({f"search.{k}": v for k, v in parse_budget(args.budget).items()} if args.budget else {})}
    given = {k: str(Path(v).expanduser().resolve()) if k in ("model", "data") else v for k, v in flags.items()
             if v is not None}
    recipe = recipe.with_overrides(**given) if given else recipe
    with showing_progress(args.json_progress):
        result = run_search(recipe, Path(args.out), trust_checkpoint=args.trust_checkpoint)
    out = Path(args.out)
    chosen = next((t for t in result["trials"] if t["id"] == result["chosen"]), None)
    print(f"\nsearch: {out / 'search.md'} (and search.json, search.png); {len(result['trials'])} candidates, "
          f"{result['trials_run']} trials run, {result['seconds'] / 60:.1f} min; stopped: {result['stopped']}")
    if not chosen:
        print("no candidate meets the goal; see search.md", file=sys.stderr)
        return 1
    ref = result["reference"]
    print(f"chosen: {chosen['imgsz']} px, {chosen['prune']:.0%} FLOPs pruned, {chosen['precision']}: mAP50-95 "
          f"{chosen['map50_95']:.4f} ({100 * (chosen['map50_95'] - ref['map50_95']):+.2f}), p50 {chosen['p50_ms']:.1f} "
          f"ms ({ref['p50_ms'] / chosen['p50_ms']:.2f}x the unpruned float model); "
          f"artifact: {out / result['artifact']}")
    return 0


def targets_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress targets",
                                description="List the deployment targets and whether each runtime is usable here.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def targets(args: argparse.Namespace) -> int:
    from edgecompress.device.runtime import RUNTIMES
    from edgecompress.targets import ALIASES, TARGETS

    print(f"{'target':<18}{'runtime':<13}{'precisions':<16}{'INT8 activations':<18}{'channels':<10}"
          f"{'imgsz':<7}{'runs here':<11}builds here")
    explained = set()
    for t in TARGETS.values():
        runs = RUNTIMES[t.runtime].unusable()
        int8 = f"{t.int8.activation_type} {'sym' if t.int8.symmetric_activations else 'asym'}" if t.int8 else "-"
        print(f"{t.name:<18}{t.runtime:<13}{','.join(t.precisions):<16}{int8:<18}{'x' + str(t.channel_multiple):<10}"
              f"{t.imgsz:<7}{'no' if runs else 'yes':<11}{'no' if t.unusable() else 'yes'}")
        if runs and t.runtime not in explained:
            explained.add(t.runtime)
            print(f"    {runs}")
    for alias, name in ALIASES.items():
        print(f"{alias} = {name}")
    print("builds here: compress can make the target's artifact on this machine (a device bundle where its runtime "
          "does not run here; the device then builds the engine)")
    return 0


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compress bench", description="Time an artifact on this device: latency p50/p90/p99, throughput, "
        "memory. Needs only numpy, OpenCV, pyyaml and the artifact's runtime.")
    p.add_argument("artifact", type=Path, help="a .onnx, an *_openvino_model or *_ncnn_model folder, or a TensorRT "
                   ".engine/.plan")
    p.add_argument("--target", metavar="NAME", help="the target it was built for (its default image size is used "
                   "when the artifact's input size is dynamic)")
    p.add_argument("--data", metavar="YAML", type=Path,
                   help="dataset YAML: its val images, decoded beforehand, time end to end (the frame to detections: "
                        "letterbox, inference, NMS); else skipped")
    p.add_argument("--runs", metavar="N", type=int, default=100, help="timed runs (default %(default)s; at most 30 s)")
    p.add_argument("--threads", metavar="N", type=int, default=0, help="CPU threads (default 0: the runtime's)")
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("compress-bench"),
                   help="folder for bench.json and bench.md (default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def bench(args: argparse.Namespace) -> int:
    from edgecompress.device.bench import bench_artifact
    from edgecompress.device.timing import BenchConfig
    from edgecompress.targets import get_target

    target = get_target(args.target) if args.target else None
    facts = {"name": target.name, "runtime": target.runtime, "description": target.description} if target else None
    report = bench_artifact(args.artifact, facts, target.imgsz if target else 640, args.data,
                            BenchConfig(runs=args.runs, threads=args.threads), args.out)
    inf, e2e = report["inference"], report["end_to_end"]
    print(f"{report['device']}, {report['runtime']}: "
          + (f"end to end p50 {e2e['p50_ms']:.2f} ms (p90 {e2e['p90_ms']:.2f}, p99 {e2e['p99_ms']:.2f}, "
             f"{e2e['throughput_fps']:.1f} frames/s), " if e2e else "")
          + f"inference p50 {inf['p50_ms']:.2f} ms (p90 {inf['p90_ms']:.2f}, p99 {inf['p99_ms']:.2f})")
    print(f"bench: {args.out / 'bench.md'} (and bench.json)")
    return 0


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress report", description="Merge run reports and on-device benchmarks "
                                "into one comparison: tables per stage and device, plots, report.md.")
    p.add_argument("sources", nargs="+", type=Path, metavar="RUN_OR_BENCH",
                   help="a run's output folder (report.json) or a bench folder (bench.json), or the JSON itself")
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("compress-report"),
                   help="folder for report.md and its plots (default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def report(args: argparse.Namespace) -> int:
    from edgecompress.pipeline.merge import write

    print(f"report: {write(args.sources, args.out)}")
    return 0


SUBCOMMANDS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "search": (search_parser, search),
    "targets": (targets_parser, targets),
    "bench": (bench_parser, bench),
    "report": (report_parser, report),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    make_parser, command = SUBCOMMANDS.get(argv[0], (parser, run)) if argv else (parser, run)
    args = make_parser().parse_args(argv[1:] if command is not run else argv)
    try:
        return command(args)
    except UserError as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"compress: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("compress: interrupted; finished stages are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as e:  # an internal error: one line by default, the traceback with --debug
        if args.debug:
            traceback.print_exc()
        print(f"compress: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
