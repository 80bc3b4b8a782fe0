#!/usr/bin/env python3
"""ONNX Runtime throughput of an exported encoder, for `trainer bench`.

usage: onnx_throughput.py MODEL.onnx [--batch-size 64] [--seconds 3] [--threads 0]
Prints one JSON line: {"images_per_s": ..., "batch_size": ..., "onnxruntime": version}.
"""
import argparse, json, sys, time

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    sys.exit(f"onnxruntime is not installed ({e}): pip install onnxruntime")

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--seconds", type=float, default=3.0)
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
options = ort.SessionOptions()
if a.threads > 0:
    options.intra_op_num_threads = a.threads
session = ort.InferenceSession(a.model, options, providers=["CPUExecutionProvider"])
side = session.get_inputs()[0].shape[2]  # the size the encoder was exported at
images = np.random.default_rng(0).random((a.batch_size, 3, side, side), dtype=np.float32)
session.run(["embedding"], {"images": images})  # warm-up
done, start = 0, time.perf_counter()
while time.perf_counter() - start < a.seconds:
    session.run(["embedding"], {"images": images})
    done += a.batch_size
print(json.dumps({"images_per_s": done / (time.perf_counter() - start), "batch_size": a.batch_size,
                  "onnxruntime": ort.__version__}))
