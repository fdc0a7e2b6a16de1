"""The agent's command line: `python agent.pyz MODEL [MODEL...] --runtime R[,R...] [options]` prints one JSON
object and exits 0, or prints {"ok": false, "kind", "error"[, "model"]} and exits 3."""
from __future__ import annotations

import argparse
import json
import sys

from targets.agent.adapter import adapter, profiled, runtimes
from targets.agent.errors import AgentError
from targets.agent.predict import predict
from targets.agent.schedule import measure


def parse(argv: list[str]) -> argparse.Namespace:
    known = runtimes()
    p = argparse.ArgumentParser(description="measure model files on this device, timed interleaved; prints JSON")
    p.add_argument("model", nargs="+", help="one or more model files, timed interleaved")
    p.add_argument("--runtime", required=True, metavar="RUNTIME[,RUNTIME...]",
                   help=f"the models' runtime ({', '.join(known)}): one for all, or one per model in order, "
                        "comma-separated")
    p.add_argument("--threads", type=int, default=0, help="0 = the runtime's default")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=200, help="at most this many timed runs per model")
    p.add_argument("--max-seconds", type=float, default=5.0, help="timing budget per model (all together: x models)")
    p.add_argument("--block", type=int, default=5, help="runs of one model per round-robin turn")
    p.add_argument("--min-runs", type=int, default=20, help="runs per model before the stopping rule is checked")
    p.add_argument("--rel-interval", type=float, default=0.0,
                   help="stop once every median's 95%% interval is within this fraction of the median "
                        "(0: no early stop, time --runs or --max-seconds)")
    p.add_argument("--throughput-batch", type=int, default=8)
    p.add_argument("--input-size", type=int, default=None, help="H = W for models with dynamic sizes")
    p.add_argument("--profile", action="store_true",
                   help=f"add a per-layer profile (to the models of {', '.join(profiled())})")
    p.add_argument("--raw", action="store_true", help="add every run's wall ms and every block's CPU ms per run")
    p.add_argument("--predict", metavar="IMAGES.npz", default=None,
                   help="time nothing: print each model's argmax and logits on the float32 `images` array of "
                        "this .npz file (a batch of the models' input)")
    for cls in dict.fromkeys(adapter(runtime) for runtime in known):  # each adapter's own flags (once: two
        cls.add_arguments(p)  # runtimes may share one adapter), applied to its models
    args = p.parse_args(argv)
    names = args.runtime.split(",")
    if unknown := [r for r in names if r not in known]:
        p.error(f"--runtime: unknown runtime {', '.join(unknown)} (choose from {', '.join(known)})")
    if len(names) not in (1, len(args.model)):
        p.error(f"--runtime: {len(names)} runtimes for {len(args.model)} models: give one for all, or one per model")
    args.runtimes = names * len(args.model) if len(names) == 1 else names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.predict:
            print(json.dumps(predict(args)))
            return 0
        results, schedule = measure(args)
    except AgentError as exc:
        failure = {"ok": False, "kind": exc.kind, "error": str(exc)}
        if exc.model:
            failure["model"] = exc.model
        print(json.dumps(failure))
        return 3
    except Exception as exc:  # the runtime failed mid-run: report it as data, the caller decides
        print(json.dumps({"ok": False, "kind": "runtime_error", "error": f"{type(exc).__name__}: {exc}"}))
        return 3
    if len(results) == 1:
        print(json.dumps({**results[0], "schedule": schedule}))
    else:
        print(json.dumps({"ok": True, "results": results, "schedule": schedule}))
    return 0
