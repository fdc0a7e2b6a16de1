"""The benchmark agent, run on the device itself (this host, an ssh board, an Android phone under Termux, a Mac,
the emulated arm64 core): it measures one or more model files, of one runtime or of several, and prints one JSON
object. It needs only the Python standard library, numpy and the models' runtimes.

It ships as one file, agent.pyz (bundle.py): a zipapp of this package and each runtime's adapter
(backends/<name>/agent.py), copied with scp or adb push and run as

    python agent.pyz MODEL [MODEL...] --runtime RUNTIME[,RUNTIME...] [--threads N] [--runs N]
                     [--max-seconds S] [--warmup N] [--block K] [--min-runs N] [--rel-interval F]
                     [--throughput-batch B] [--input-size H] [--execution-provider P]
                     [--graph-optimization-level L] [--openvino-precision P] [--compute-units U]
                     [--profile] [--raw]
    python agent.pyz MODEL [MODEL...] --runtime RUNTIME[,RUNTIME...] --predict IMAGES.npz [--threads N]

(`python -m targets.agent` in the source tree). RUNTIME is one the registry has an adapter for (onnxruntime,
openvino, coreml, executorch, litert): one for every model, or one per model in order, comma-separated
(`a.onnx b.xml c.tflite --runtime onnxruntime,openvino,litert`). A runtime's own flags apply to its models
(--execution-provider and --graph-optimization-level to ONNX Runtime, --openvino-precision to OpenVINO,
--compute-units to Core ML); --threads to all; --profile to the runtimes with a per-layer profiler (ONNX Runtime,
OpenVINO, ExecuTorch).

Measured (schedule.py): every runtime is imported first (the memory each import adds is recorded), then per
model, load/compile time and warm-up (and the memory the model adds to the process); then all models, whatever
their runtime, are timed interleaved at batch 1: round-robin, `--block` runs of each model per turn, until the
95% interval of every model's median (order statistics, distribution-free: stats.py) is within `--rel-interval`
of that median (when given; checked from `--min-runs` on), or `--runs` runs per model, or `--max-seconds` per
model (all models together: max_seconds x models), whichever comes first (timing.stopped says which). Each run
records wall time and the process's CPU time (all threads); the host's load average is read before and after.
Per model: p50/p90/p99/mean/std/min/max ms with the median's interval, CPU ms, throughput at
`--throughput-batch`, model size on disk, the other models it was interleaved with; with --profile, a per-layer
profile (layers.py: ONNX Runtime's profiling JSON, OpenVINO's per-layer counters, ExecuTorch's ETDump); with
--raw, every run's wall and CPU ms. One model prints its result object; several print {"ok": true, "results":
[...]}, and both carry "schedule" (the model index of each timed block, in order).
With --predict (predict.py): each model's argmax and logits on the float32 `images` of IMAGES.npz.
On failure it prints {"ok": false, "kind": ..., "error": ...} (with "model": the file name, when the failure
is one model's: a runtime missing for it, a file its runtime cannot load or run) and exits 3.

The package imports nothing of the project but itself and the adapters (through backends.agent_adapters()).
"""
