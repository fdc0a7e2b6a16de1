"""The report's table of accuracy on the emulated arm64 cores (the evaluate stage's `arm64`, targets/arm64.py)."""
from __future__ import annotations


def arm64_lines(arm64: dict | None) -> list[str]:
    """Per target and file: torch, the x86 runtime and the arm64 runtime on the named core, over the same
    subset; agreement with torch; what differs from x86. Never a timing."""
    if not arm64:
        return []
    versions = ", ".join(f"{p} {v}" for p, v in arm64["packages"].items())
    lines = ["## Accuracy on emulated arm64 cores", "",
             f"The phone and watch files in the aarch64 builds of their runtimes ({versions}), run by {arm64['qemu']} "
             "on this host with the instruction set of the named core, so with the kernels a phone CPU with that "
             f"core picks; {arm64['images']:,} test images, {arm64['subset']}; top-1 with its 95% interval. "
             "Numerics only: emulation says nothing about latency.", "",
             "| target | core | artifact | runtime | precision | torch top-1 % | x86 top-1 % | arm64 top-1 % (95%) "
             "| arm64 agreement with torch % | argmax differing from x86 | max abs logit diff vs x86 |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    features = {}
    for r in arm64["rows"]:
        head = f"| {r['target']} | {r['cpu']} | {r['artifact']} | {r['runtime']} | {r.get('precision', '')} |"
        if "error" in r:
            lines.append(f"{head} not measured: {r['error']} | | | | | |")
            continue
        lo, hi = r["arm64_top1_interval"]
        lines.append(f"{head} {r['torch_top1']:.2f} | {r['x86_top1']:.2f} | {r['arm64_top1']:.2f} ({lo:.2f}-{hi:.2f}) "
                     f"| {r['agreement']:.2f} | {r['vs_x86']['argmax_differ']} of {r['images']:,} "
                     f"| {r['vs_x86']['max_abs_diff']:.2g} |")
        features[r["cpu"]] = r.get("cpu_features")
    lines.append("")
    if features:
        shown = "; ".join(f"{cpu}: {' '.join(f) if f else 'none reported'}" for cpu, f in features.items())
        lines += [f"CPU features each emulated core reports (they pick the kernels): {shown}.", ""]
    return lines
