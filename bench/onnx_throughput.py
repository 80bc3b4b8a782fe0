#!/usr/bin/env python3
"""ONNX Runtime throughput of an exported encoder, for `trainer bench`.

usage: onnx_throughput.py MODEL.onnx [--batch-size 64] [--warmup 2] [--min-passes 3]
                          [--seconds 3] [--threads 0]
Timed as `trainer bench` times its own inference: `--warmup` untimed passes, then each pass
timed, at least `--min-passes` and about `--seconds` of them; images/s from the median pass.
Prints one JSON line: {"images_per_s": ..., "batch_size": ..., "statistic": "median", "warmup": ...,
"passes": ..., "pass_seconds": [...], "onnxruntime": version}.
"""
import argparse, json, statistics, sys, time

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    sys.exit(f"onnxruntime is not installed ({e}): pip install onnxruntime")

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--min-passes", type=int, default=3)
p.add_argument("--seconds", type=float, default=3.0)
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
options = ort.SessionOptions()
if a.threads > 0:
    options.intra_op_num_threads = a.threads
session = ort.InferenceSession(a.model, options, providers=["CPUExecutionProvider"])
side = session.get_inputs()[0].shape[2]  # the size the encoder was exported at
images = np.random.default_rng(0).random((a.batch_size, 3, side, side), dtype=np.float32)
for _ in range(a.warmup):
    session.run(["embedding"], {"images": images})
times, start = [], time.perf_counter()
while len(times) < a.min_passes or time.perf_counter() - start < a.seconds:
    t0 = time.perf_counter()
    session.run(["embedding"], {"images": images})
    times.append(time.perf_counter() - t0)
print(json.dumps({"images_per_s": a.batch_size / statistics.median(times), "batch_size": a.batch_size,
                  "statistic": "median", "warmup": a.warmup, "passes": len(times),
                  "pass_seconds": times, "onnxruntime": ort.__version__}))
