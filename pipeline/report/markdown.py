"""report.md, what a person reads: the ship table first, then accuracy, the artifacts, latency (measured and
predicted), training and the stages; and the console's ship summary."""
from __future__ import annotations

from pathlib import Path

import backends
from pipeline.report.arm64 import arm64_lines
from pipeline.ship import SAME_ACCURACY
from targets.latency import describe_comparison

NOT_TERMS = ("epoch", "lr", "images_per_s", "seconds", "val_top1", "processes", "gpu_memory_gb")  # not losses


def _artifact_lines(rows: list[dict], quantize: dict | None) -> list[str]:
    if not rows:
        return []
    lines = ["## Student artifacts, each run in its own runtime on the test split", "",
             "| artifact | runtime | precision | evaluated | top-1 % | Δ vs torch fp32 | agreement with fp32 "
             "| size MB | INT8 ops / compressed weights |", "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in (r.get("op_types") or {}).items()) or "-"
        scores = (f"{r['top1']:.2f} | {r['delta_top1']:+.2f} | {100 * r['agreement']:.2f}%" if "top1" in r
                  else "- | - | -")
        lines.append(f"| `{r['artifact']}` | {r['runtime']} | {r['precision']} | {r['evaluation']} | {scores} | "
                     f"{r['bytes'] / 1e6:.2f} | {ops} |")
    lines.append("")
    for r in rows:
        if "reason" in r:
            lines += [f"Not simulated: {r['reason']}.", ""]
    for runtime in dict.fromkeys(r["runtime"] for r in rows if r["evaluation"] == "simulated"):
        lines += [f"Simulated rows: {backends.for_runtime(runtime).simulation}.", ""]
    for note in (quantize or {}).get("notes", []):
        lines += [f"Note: {note}.", ""]
    hurt = [r for r in rows if r.get("worst_classes")]
    if hurt:
        lines += ["Classes compression hurts most (top-1 % on the class, fp32 -> compressed):", ""]
        for r in hurt:
            worst = "; ".join(f"{c['class']} {c['fp32']:.1f} -> {c['int8']:.1f} ({c['delta']:+.1f})"
                              for c in r["worst_classes"])
            lines.append(f"- `{r['artifact']}`: {worst}")
        lines.append("")
    for key, artifact in ((quantize or {}).get("artifacts") or {}).items():
        fb = artifact.get("fallback")
        if not fb:
            continue
        if "steps" in fb:
            first, last = fb["steps"][0]["drop"], fb["steps"][-1]["drop"]
            kept = fb.get("excluded_names", fb["excluded"])
            stand_in = sum(step.get("judged") == "stand-in" for step in fb["steps"])
            text = (f"drop {first:.2f} points on {len({tuple(s['excluded']) for s in fb['steps']})} step(s)"
                    + (f" ({stand_in} judged on its stand-in, the fake-quantized graph, then the file)" if stand_in
                       else "") + f" -> {last:.2f}"
                    + (f" (95% interval of the change {fb['steps'][-1]['delta_interval'][0]:+.2f} to "
                       f"{fb['steps'][-1]['delta_interval'][1]:+.2f} on {fb['images']} images)"
                       if "delta_interval" in fb["steps"][-1] else "")
                    + f"; layers kept in float: {', '.join(kept) or 'none'}"
                    + (f" of {fb['layers']}" if kept and fb.get("layers") else "")
                    + (f"; stopped by quantize.max_fallback_seconds after {fb['seconds']:.0f} s"
                       if fb.get("stopped") == "max_fallback_seconds" else ""))
        else:
            text = (f"drop {fb['plain_drop']:.2f} points" + (f", NNCF accuracy control -> {fb['drop']:.2f}"
                                                               if fb["accuracy_control"] else ""))
        verdict = "within" if fb["met"] else "**over**, so no target ships it;"
        lines.append(f"- `{key}` on validation images: {text} ({verdict} max_drop {fb['max_drop']}).")
    lines.append("")
    return lines


def mobile_lines(report: dict) -> list[str]:
    """ONNX Runtime Mobile: each .ort file and how much of its graph the phones' execution providers would take."""
    records = [(key, a["mobile"]) for stage in ("export", "quantize")
               for key, a in ((report["stages"].get(stage) or {}).get("summary", {}).get("artifacts") or {}).items()
               if a.get("mobile")]
    if not records:
        return []
    eps = list(records[0][1]["execution_providers"])
    lines = ["## ONNX Runtime Mobile (.ort)", "",
             "ORT's own usability check of each ONNX graph for the phone execution providers, with the input shape "
             "fixed to batch 1 as an app would (nodes the provider takes / all nodes, in how many partitions; "
             "YES / MAYBE / NO is ORT's verdict on whether it beats the CPU provider).", "",
             "| artifact | .ort file | MB | .ort parity (vs torch; INT8: vs its .onnx) | " + " | ".join(eps) + " |",
             "|---|---|---:|---|" + "---|" * len(eps)]
    for key, m in records:
        parity = m.get("parity") or {}
        check = (f"max diff {parity['max_abs_diff']:.1e}, agreement {100 * parity['argmax_agreement']:.1f}%"
                 if parity else "-")
        cells = []
        for ep in eps:
            fixed = m["execution_providers"][ep]["fixed_shapes"]
            cells.append(f"{fixed['supported_nodes']}/{fixed['nodes']} in {fixed['partitions']}: "
                         f"{fixed['suitability']}")
        lines.append(f"| `{key}` | `{m['file']}` | {m['bytes'] / 1e6:.2f} | {check} | " + " | ".join(cells) + " |")
    ops = sorted({op for _, m in records for ep in eps for op in m["execution_providers"][ep]["fixed_shapes"]
                  ["unsupported_ops"]})
    if ops:
        lines += ["", f"Ops a provider lacks (they run on the CPU, splitting the graph): {', '.join(ops)}."]
    return lines + [""]


def _number(value: float | None, unit: str) -> str:
    return "unknown" if value is None else f"{value:.0f} {unit}"


def matched_units(distill: dict) -> str:
    """The units the manifold loss matched, as the models' families name them (blocks.3 of a ViT, stages.1 of a
    Swin or a CNN); the layer indices where the distill record predates the names."""
    if distill.get("matched_units"):
        return "student " + ", ".join(s for s, _ in distill["matched_units"]) + " <- teacher " + \
            ", ".join(t for _, t in distill["matched_units"])
    return f"student units {distill['student_layers']} <- teacher units {distill['teacher_layers']}"


def evaluation_warnings(report: dict) -> list[str]:
    """What the evaluation warns of (a teacher or student no better than guessing): said before any pick."""
    return (report.get("evaluation") or {}).get("warnings", [])


def warning_lines(report: dict) -> list[str]:
    """The evaluation's warnings as the first screen of report.md and a deploy folder's README show them."""
    return [f"> **Warning**: {w}." for w in evaluation_warnings(report)]


def render_markdown(title: str, report: dict, plots: dict[str, str] | None = None) -> str:
    run = report["run"]
    lines = [f"# {title}", "",
             f"Run `{run['name']}`, seed {run['seed']}, device {run['device']}, config `{run['config_hash'][:12]}`, "
             f"commit `{(run['git_commit'] or 'unknown')[:12]}`, wall time {_number(run['wall_s'], 's')}, "
             f"peak memory {_number(run['peak_rss_mb'], 'MB')}.", ""]
    lines += warning_lines(report)
    lines += [""] if lines[-1] != "" else []
    lines += ship_lines(report)
    data_notes = report["stages"].get("data", {}).get("summary", {}).get("notes", [])
    if data_notes:
        lines += ["## Data", "", *[f"- Note: {note}." for note in data_notes], ""]
    evaluation = report["evaluation"]
    if evaluation:
        lines += [f"## Accuracy on the held-out {evaluation['split']} split ({evaluation['images']} images)", "",
                  "| role | model | params | MFLOPs/image | top-1 % | top-5 % | checkpoint MB |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for role in ("teacher", "student"):
            r = evaluation[role]
            lines.append(f"| {role} | `{r['model']}` | {r['params']:,} | {r['flops'] / 1e6:.1f} | {r['top1']:.2f} "
                         f"| {r['top5']:.2f} | {r['checkpoint_bytes'] / 1e6:.2f} |")
        lines.append("")
        lines += _artifact_lines(evaluation.get("artifacts", []), report["stages"].get("quantize", {}).get("summary"))
        lines += mobile_lines(report)
        lines += arm64_lines(evaluation.get("arm64"))
    plots = plots or {}
    if report.get("latency"):
        lines += latency_lines(report["latency"], evaluation, plots)
        lines += predicted_lines(report["latency"])
    distill = report["stages"].get("distill", {}).get("summary")
    if distill:
        cfg = report["config"]["distill"]
        parts = [f"KD `{distill['kd']}`"]
        if distill["manifold"]:
            parts.append(f"manifold loss on {matched_units(distill)} (w_intra {cfg['w_intra']}, "
                         f"w_inter {cfg['w_inter']}, w_random {cfg['w_random']}, K {cfg['k']}, beta {cfg['beta']})")
        lines += ["## Distillation", "", "; ".join(parts) + ".", ""]
    for role, rows in report["curves"].items():
        if not rows:
            continue
        terms = [k for k in rows[0] if k not in NOT_TERMS]
        gpu = "gpu_memory_gb" in rows[0]
        processes = f" ({rows[-1]['processes']} processes)" if rows[-1].get("processes", 1) > 1 else ""
        lines += [f"### {role} training{processes}", "",
                  "| epoch | " + " | ".join(terms) + " | val top-1 % | img/s |" + (" GPU GB |" if gpu else ""),
                  "|---:|" + "---:|" * (len(terms) + 2 + gpu)]
        for row in rows:
            lines.append(f"| {row['epoch']} | " + " | ".join(f"{row[t]:.4f}" for t in terms)
                         + f" | {row['val_top1']:.2f} | {row['images_per_s']:.0f} |"
                         + (f" {row.get('gpu_memory_gb', 0):.2f} |" if gpu else ""))
        lines.append("")
    if "curves" in plots:
        lines += [f"![Training curves: each loss term and validation top-1 per epoch]({plots['curves']})", ""]
    lines += ["## Stages", "", "| stage | result | wall s | artifact |", "|---|---|---:|---|"]
    for name, stage in report["stages"].items():
        lines.append(f"| {name} | {'reused (cached)' if stage['cached'] else 'ran'} | {stage['wall_s']:.1f} "
                     f"| `{Path(stage['artifact']).name}` |")
    versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items() if v)
    lines += ["", f"Versions: {versions}.", ""]
    return "\n".join(lines)


def _speed(c: dict) -> str:
    """`p50 0.097 ms [0.094-0.100, 95%], p90 0.120 (proxy)`: the median with its interval and the interval's level
    (95% for a timed median, the prediction's own for a predicted one), or the label where nothing was timed."""
    lat = c.get("latency_ms")
    if not lat:
        memory = f", memory est. {c['memory_mb_estimate']:.1f} MB" if "memory_mb_estimate" in c else ""
        return f"{c['label']}{memory}"
    ci, level = lat.get("p50_interval"), lat.get("confidence")
    shown = f"p50 {lat['p50']:.3f} ms" + (f" [{ci[0]:.3f}-{ci[1]:.3f}{f', {level:.0%}' if level else ''}]" if ci
                                          else " (no interval)")
    return f"{shown}, p90 {lat['p90']:.3f} ({c['label']})"


def shipped_file(c: dict) -> str:
    """`model_int8.tflite (litert_int8)`: the file an app ships and the artifact it is (the artifact alone in a
    report written before choices named their file)."""
    return f"{c['file']} ({c['artifact']})" if c.get("file") else c["artifact"]


def ship_summary(report: dict) -> list[str]:
    """The console's last lines: where the deploy folder is, what the evaluation warns of (a model no better than
    guessing), each target's overall pick and its answer per SDK."""
    if not report.get("deploy"):
        return []
    folder = Path(next(iter(report["deploy"].values()))).parent
    lines = [f"deploy: {folder}/<target>/<runtime>/ (model, labels.txt, preprocess.json, MODEL_CARD.md); "
             "take the runtime your app links",
             *(f"  warning: {w}" for w in evaluation_warnings(report))]
    for name, answer in report["ship"].items():
        if not answer.get("artifact"):
            lines.append(f"  {name}: nothing ships ({answer['overall_why']})")
            continue
        tie = "" if answer["separated"] else " (a tie within noise, broken by the stated order)"
        lines.append(f"  {name}: overall {answer['runtime']}/{shipped_file(answer)}{tie}")
        for runtime, c in answer["by_runtime"].items():
            shown = (f"{shipped_file(c)}: {c['precision']}, top-1 {c['top1']:.2f}%, {_speed(c)}" if c.get("artifact")
                     else f"nothing ships ({c['why']})")
            lines.append(f"    app links {backends.runtime_name(runtime)}: {shown}")
    return lines


def ship_matrix(ship: dict) -> list[str]:
    """Targets x SDKs: the artifact and file each SDK's app ships, the overall pick in bold (a table that fits a
    screen; report.html stacks it into one card per target on a phone)."""
    runtimes = [r for r in backends.runtimes() if any(r in a["by_runtime"] for a in ship.values())]
    lines = ["| target | " + " | ".join(f"app links {backends.runtime_name(r)}" for r in runtimes) + " |",
             "|---|" + "---|" * len(runtimes)]
    for name, answer in ship.items():
        cells = []
        for runtime in runtimes:
            c = answer["by_runtime"].get(runtime)
            if c is None:
                cells.append("")
                continue
            if not c.get("artifact"):
                cells.append("nothing ships")
                continue
            shown = f"`{c['artifact']}`"
            if answer.get("overall") == runtime:
                shown = f"**{shown}**" + ("" if answer["separated"] else " *(tie)*")
            cells.append(shown + (f": `{c['file']}`" if c.get("file") else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def ship_lines(report: dict) -> list[str]:
    """The first screen: per target, the overall pick and the file to ship for each SDK an app may link (under
    deploy/<target>/<runtime>/), its accuracy and speed, and why."""
    ship = report.get("ship") or {}
    if not ship:
        return []
    prefer = (report["config"].get("ship") or {}).get("prefer", "accuracy")
    lines = ["## Ship", "", "Your app links one SDK: its column is your answer (`deploy/<target>/<runtime>/`); "
             "**bold** is the overall pick, *(tie)* where no runtime is faster than the others beyond noise.", "",
             *ship_matrix(ship), "",
             "Per target and per SDK (runtime) an app on it may link, by one rule (pipeline/ship.py): "
             "within quantize.max_drop top-1 points of the fp32 student and the target's budgets, the fastest: a "
             "file is faster only when the medians' 95% intervals do not overlap and its median is at least 5% "
             f"lower, otherwise the files tie and the tie goes by ship.prefer = \"{prefer}\" "
             f"(accuracy: no real top-1 loss and within {SAME_ACCURACY:g} points of the most accurate, then the "
             "smaller file; "
             "size: the smaller file first), then "
             "the profile's runtime order. Each folder holds the model, labels.txt, preprocess.json and "
             "MODEL_CARD.md.", "",
             "| target | app links | ship: artifact, file | precision | top-1 % (Δ vs fp32, 95% interval) "
             "| latency: p50 [interval], p90 ms | size MB | why |",
             "|---|---|---|---|---|---|---:|---|"]
    for name, answer in ship.items():
        if not answer.get("artifact"):
            lines.append(f"| {name} | - | nothing ships | - | - | - | - | {answer['overall_why']} |")
        for runtime, c in answer["by_runtime"].items():
            if not c.get("artifact"):
                lines.append(f"| {name} | {backends.runtime_name(runtime)} | nothing ships | - | - | - | - "
                             f"| {c['why']} |")
                continue
            lo, hi = c["delta_interval"]
            noise = ", equal within noise" if c["within_noise"] else ""
            overall = ""
            if answer.get("overall") == runtime:
                overall = "**overall** " + ("" if answer["separated"] else "(tie) ")
            why = c["why"] + (f"; overall: {answer['overall_why']}" if answer.get("overall") == runtime else "")
            where = f"`{c['file']}` in `deploy/{name}/{runtime}/`" if c.get("file") else f"`deploy/{name}/{runtime}/`"
            lines.append(f"| {name} | {backends.runtime_name(runtime)} | {overall}`{c['artifact']}`: {where} "
                         f"| {c['precision']} | {c['top1']:.2f} ({c['delta_top1']:+.2f}, "
                         f"{lo:+.2f} to {hi:+.2f}{noise}; {c['evaluation']}) | {_speed(c)} | {c['bytes'] / 1e6:.2f} "
                         f"| {why} |")
    return [*lines, ""]


LABELS = {"measured": "measured on the device", "proxy": "this host standing in for the device, with the "
          "profile's threads: a proxy, not the device's speed", "needs-device": "not timed: the device or OS "
          "it needs is not here", "error": "the benchmark failed"}


def latency_lines(latency: dict, evaluation: dict | None, plots: dict[str, str]) -> list[str]:
    """The latency table (artifact x target), budgets, per-layer tops and INT8 diagnoses."""
    rows = latency["rows"]
    if not rows:
        return []
    top1 = {r["artifact"]: r["top1"] for r in (evaluation or {}).get("artifacts", []) if "top1" in r}
    lines = ["## Latency per target (batch 1)", "",
             "| target | artifact | precision | label | p50 ms (95% interval) | CPU p50 ms | p90 ms | p99 ms | runs "
             "| img/s (batch) | model RSS MB | top-1 % | budget (p90 ms / MB) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        acc = f"{top1[r['artifact']]:.2f}" if r["artifact"] in top1 else "-"
        if "latency_ms" not in r:
            short = "needs macOS" if r.get("error_kind") == "needs_macos" else "not timed (below)"
            lines.append(f"| {r['target']} | `{r['artifact']}` | {r['precision']} | {r['label']} | - | - | - | - | - "
                         f"| - | - | {acc} | {short} |")
            continue
        lat, tp, b = r["latency_ms"], r["throughput"], r["budget"]
        ips = f"{tp['images_per_s']:.0f} ({tp['batch']})" if tp.get("images_per_s") else "-"
        verdict = "pass" if b["latency_ok"] and b["memory_ok"] else "**fail**"
        ci = lat.get("p50_interval")
        p50 = f"{lat['p50']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{lat['p50']:.3f} (no interval)"
        cpu = f"{r['cpu_ms']['p50']:.3f}" if "cpu_ms" in r else "-"
        label = f"{r['label']}: {r['kernels']}" if r.get("kernels") else r["label"]
        lines.append(f"| {r['target']} | `{r['artifact']}` | {r['precision']} | {label} | {p50} | {cpu} "
                     f"| {lat['p90']:.3f} | {lat['p99']:.3f} | {r.get('runs', '-')} | {ips} | {r['model_rss_mb']:.0f} "
                     f"| {acc} | {verdict} ({b['latency_ms']:g} / {b['memory_mb']:g}) |")
    lines.append("")
    lines += timing_lines(rows)
    labels = sorted({r["label"] for r in rows})
    lines += [f"Labels: {'; '.join(f'*{label}* = {LABELS[label]}' for label in labels)}.", ""]
    for note in dict.fromkeys(r[k] for r in rows for k in ("note", "error") if r.get(k)):
        lines += [f"- {note}"]
    for name, runtime in latency.get("no_artifact", {}).items():
        lines.append(f"- **{name}**: no {runtime} artifact in this run (enable its export).")
    lines.append("")
    pareto = [(name, plots[f"pareto:{name}"]) for name in latency["targets"] if f"pareto:{name}" in plots]
    if pareto:
        lines += ["### Accuracy vs latency per target", ""]
        lines += [f"![{name}: test top-1 vs p90 latency, Pareto front and budgets]({path})" for name, path in pareto]
        lines.append("")
    profiled = [r for r in rows if "profile" in r]
    if profiled:
        lines += ["### Where the time goes (per-layer profile, share of the layers' time)", ""]
        for r in profiled:
            p = r["profile"]
            ops = ", ".join(f"{e['op_type']}{' (int8)' if e['precision'] == 'int8' else ''} {100 * e['share']:.0f}%"
                            for e in p["by_op_type"][:5])
            over = p["layers_ms"] > r["latency_ms"]["p50"]
            timing = (f"{p['layers_ms']:.3f} ms in layers, more than the p50 of {r['latency_ms']['p50']:.3f} ms: the "
                      "profiler's own overhead; read the shares, not the ms" if over
                      else f"{p['layers_ms']:.3f} ms in layers")
            lines.append(f"- {r['target']} / `{r['artifact']}` ({timing}): {ops}")
        lines.append("")
        for name in latency["targets"]:
            bars = [(r["artifact"], plots[f"layers:{name}:{r['artifact']}"]) for r in rows
                    if r["target"] == name and f"layers:{name}:{r['artifact']}" in plots]
            missing = unprofiled(rows, name)
            if not bars and not missing:
                continue
            lines += [f"#### {name}", ""]
            if bars:
                lines += [f"![{name} / {artifact}: time per op type, int8 / float / conversion]({path})"
                          for artifact, path in bars] + [""]
            lines += [*missing, ""] if missing else []
    compared = [r for r in rows if "comparison" in r]
    if compared:
        lines += ["### Compressed vs float on the same target", "",
                  "Faster or slower only when the interval of the speed-up (from the two medians' 95% intervals) "
                  "excludes 1; otherwise equal within noise.", ""]
        lines += [f"- {r['target']} / `{r['artifact']}` vs `{r['comparison']['baseline']}`: "
                  f"{describe_comparison(r['comparison'])}" for r in compared]
        lines.append("")
    diagnosed = [r for r in rows if "diagnosis" in r]
    if diagnosed:
        lines += ["### Why is INT8 (not) faster?", ""]
        lines += [f"- {r['target']} / `{r['artifact']}` vs `{r['diagnosis']['baseline']}`: "
                  + (f"{r['comparison']['verdict']}; " if "comparison" in r else "") + r["diagnosis"]["verdict"]
                  for r in diagnosed]
        lines.append("")
    return lines


def unprofiled(rows: list[dict], target: str) -> list[str]:
    """One line per runtime whose timed files on `target` have no per-layer profile because its adapter's Python API
    gives none (LiteRT's interpreter): which files, and why (the adapter's `no_profile`, where it says; read here,
    not declared on the Adapter base class, whose code is in the export, quantize, evaluate and benchmark stages'
    cache keys)."""
    from targets.agent.adapter import adapter

    lines = []
    timed = [r for r in rows if r["target"] == target and "latency_ms" in r and "profile" not in r]
    for runtime in dict.fromkeys(r["runtime"] for r in timed):
        try:
            runner = adapter(runtime)
        except KeyError:  # a runtime this build does not register
            continue
        if runner.profiled:
            continue
        files = ", ".join(f"`{r['artifact']}`" for r in timed if r["runtime"] == runtime)
        why = getattr(runner, "no_profile", "its runtime's Python API gives no per-layer times")  # the adapter's
        lines.append(f"No per-layer profile for {files}: {why}.")
    return lines


def predicted_lines(latency: dict) -> list[str]:
    """Targets naming a public device: the predicted latency of each artifact with its interval and the
    error behind it, the measured row beside it when the device was attached, the 3 nearest public models
    as they measured, and the public models' device-vs-torch top-1 drop as context."""
    rows = latency.get("predicted") or []
    if not rows:
        return []
    measured = {(r["target"], r["artifact"]): r for r in latency["rows"] if r.get("label") == "measured"}
    lines = ["## Predicted latency on named devices (from public measurements, not timed here)", "",
             "Predicted from Qualcomm AI Hub's published on-device times of public models (qai-hub-models "
             "0.65.0), fitted on this model's ONNX graph features. The error shown is the one for this model: its "
             "own family's with one public model held out when the table has the family, else a whole new "
             "family's; beside it, the error of fitting the device from its sibling (docs/targets.md, "
             "\"Predicted latency\"). p90 is the interval's upper end: the public table has one time per model.", "",
             "| target | artifact | device / runtime / precision | predicted ms (interval) | measured p50 ms "
             "| held-out median / p90 error (basis) | sibling device's error | nearest public models, measured ms |",
             "|---|---|---|---:|---:|---|---|---|"]
    notes = []
    for r in rows:
        if "predicted" not in r:
            lines.append(f"| {r['target']} | `{r['artifact'] or '-'}` | {r['public_device']} / {r['public_runtime']} "
                         f"| - | - | - | - | {r['error']} |")
            continue
        p = r["predicted"]
        lo, hi = p["interval_ms"]
        seen = measured.get((r["target"], r["artifact"]))
        seen_ms = f"{seen['latency_ms']['p50']:.3f}" if seen else "-"
        near = ", ".join(f"{n['model']} {n['measured_ms']:.3g}" for n in p["nearest"])
        e = p["held_out_error"]
        sibling = (f"{e['sibling_device']}: {e['sibling_device_median_ape']:.0%} / {e['sibling_device_p90_ape']:.0%}"
                   if e.get("sibling_device") and e.get("sibling_device_p90_ape") is not None
                   else "no sibling in the table")
        lines.append(f"| {r['target']} | `{r['artifact']}` | {p['device']} / {p['runtime']} / {p['precision']} "
                     f"| {p['p50_ms']:.3f} ({lo:.3f}-{hi:.3f}, {p['level']:.0%}) | {seen_ms} "
                     f"| {e['median_ape']:.0%} / {e['p90_ape']:.0%} ({e['basis']}: {e['family']}, {e['models']} "
                     f"models) | {sibling} | {near} |")
        notes += [f"{r['target']}: {w}" for w in p["widened"]]
        if r.get("public_coverage"):
            notes.append(f"{r['target']}: {r['public_coverage']['note']}")
        ctx = r.get("accuracy_context")
        if ctx:
            notes.append(f"{p['runtime']} {p['precision']} on device vs torch, public models (context, not this "
                         f"model's accuracy): median top-1 drop {ctx['median_drop']:.2f} points, range "
                         f"{ctx['range'][0]:.2f} to {ctx['range'][1]:.2f}, {ctx['models']} models")
    lines.append("")
    lines += [f"- {n}" for n in dict.fromkeys(notes)]
    return [*lines, ""]


def timing_lines(rows: list[dict]) -> list[str]:
    """How each target was timed: interleaved or not, why timing stopped, the host's load around it, and a
    warning where the threads exceed the free cores."""
    lines = []
    for target in dict.fromkeys(r["target"] for r in rows):
        timed = [r for r in rows if r["target"] == target and "timing" in r]
        if not timed:
            continue
        t, load = timed[0]["timing"], timed[0].get("host_load") or {}
        how = (f"{len(timed)} artifacts timed interleaved ({t['block']} runs each per turn)" if len(timed) > 1
               and t.get("interleaved_with") else f"{len(timed)} artifact(s) timed")
        stops = sorted({r["timing"]["stopped"].replace("_", " ") for r in timed})
        text = (f"- {target}: {how}, {min(r['runs'] for r in timed)}-{max(r['runs'] for r in timed)} runs each, "
                f"stopped at {' / '.join(stops)} (goal: every median's 95% interval within "
                f"+-{100 * t['rel_interval']:g}%)")
        if load.get("before"):
            text += (f"; 1-minute load {load['before'][0]:g} before, {load['after'][0]:g} after, on "
                     f"{load['cores']} cores")
            if load.get("oversubscribed"):
                text += (f"; **warning**: {load['threads']} thread(s) but {load['free_cores']:g} cores free, "
                         "the timings share the CPU with other work")
        widths = {r["artifact"]: r["latency_ms"].get("half_width") for r in timed}
        wide = [f"`{a}` ({'no interval' if w is None else f'+-{100 * w:.1f}%'})" for a, w in widths.items()
                if w is None or w > t["rel_interval"]]
        if wide:
            text += f"; intervals wider than the goal: {', '.join(wide)}"
        lines.append(text + ".")
    return [*lines, ""] if lines else []
