#!/usr/bin/env python3
"""Helpers of bench/gpu.sh (standard library, plus numpy + onnxruntime for `ort-check`).

  gpu_report.py ort-check RUN_DIR CIFAR10_BIN_DIR   # ONNX Runtime vs the trainer's embeddings
  gpu_report.py report OUT                          # OUT/gpu.json and a Markdown table on stdout
"""
import glob, json, os, re, sys


def ort_check(run, data):
    """Embeds the first 64 CIFAR-10 test images with ONNX Runtime on the run's exported encoder
    and compares them with `trainer embed --split test --limit 64` (computed on the GPU)."""
    import numpy as np
    import onnxruntime as ort
    missing = [f for f in ("embeddings.npy", "encoder.onnx") if not os.path.exists(os.path.join(run, f))]
    if missing:
        print(json.dumps({"skipped": f"the run left no {' or '.join(missing)} (see its log)"}))
        return
    ours = np.load(os.path.join(run, "embeddings.npy"))
    n = ours.shape[0]
    raw = np.fromfile(os.path.join(data, "test_batch.bin"), np.uint8, count=n * 3073)
    images = raw.reshape(n, 3073)[:, 1:].reshape(n, 3, 32, 32).astype(np.float32) / 255
    session = ort.InferenceSession(os.path.join(run, "encoder.onnx"), providers=["CPUExecutionProvider"])
    theirs = session.run(["embedding"], {"images": images})[0]
    diff = float(np.abs(ours - theirs).max())
    rel = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    print(json.dumps({"images": n, "max_abs_diff": diff, "relative_l2": rel,
                      "ok": rel < 1e-3, "onnxruntime": ort.__version__}))


def read_json(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def last_metrics(run):
    """The last row of a run's metrics.csv as a dict, or None."""
    try:
        with open(os.path.join(run, "metrics.csv")) as f:
            rows = [line.strip().split(",") for line in f if line.strip()]
    except OSError:
        return None
    if len(rows) < 2:
        return None
    return dict(zip(rows[0], rows[-1]))


def report(out):
    card = open(os.path.join(out, "card.txt")).read().strip() if os.path.exists(os.path.join(out, "card.txt")) else ""
    result = {"card": card, "backends": {}, "torch": {}, "nccl": read_json(os.path.join(out, "nccl.json"))}
    for bench in sorted(glob.glob(os.path.join(out, "bench-*.json"))):
        device = re.match(r"bench-(.*)\.json", os.path.basename(bench)).group(1)
        memory = None
        mem_file = os.path.join(out, f"memory-{device}.txt")
        if os.path.exists(mem_file):
            memory = open(mem_file).read().strip().split(": ")[-1]
        result["backends"][device] = {
            "bench": read_json_whole(bench),
            "peak_memory_mib": memory,
            "run": last_metrics(os.path.join(out, f"run-{device}")),
            "onnx_runtime": read_json(os.path.join(out, f"ort-{device}.json")),
            "gpu_memory": last_gpu_memory(os.path.join(out, f"run-{device}.log")),
        }
    for torch_file in sorted(glob.glob(os.path.join(out, "torch-*.json"))):
        name = os.path.basename(torch_file)[len("torch-"):-len(".json")]
        result["torch"][name] = read_json(torch_file)
    with open(os.path.join(out, "gpu.json"), "w") as f:
        json.dump(result, f, indent=2)

    lines = [f"card: {card.splitlines()[-2] if len(card.splitlines()) > 1 else card}", "",
             "| who | batch | pairs/s | step ms | peak memory |", "| --- | ---: | ---: | ---: | ---: |"]
    for device, b in result["backends"].items():
        for row in (b["bench"] or {}).get("results", []):
            lines.append(f"| ours, {device} | {row['batch_size']} | {row['train_step_pairs_per_s']:.1f} | "
                         f"{row['train_step_ms_median']:.1f} | {memory_cell(b['peak_memory_mib'])} |")
    for name, t in result["torch"].items():
        if t:
            batch, variant = name.split("-", 1)
            memory = f"{t['max_memory_gib']:.2f} GiB" if "max_memory_gib" in t else "-"
            lines.append(f"| PyTorch {t['torch']} {t['device']}, {variant} | {batch} | {t['pairs_per_s']:.1f} | "
                         f"{t['step_ms_median']:.1f} | {memory} |")
    lines += ["", "| backend | 2-epoch run: loss | kNN top-1 | pairs/s | GPU memory after epoch 2 | "
              "ONNX Runtime vs ours (64 images) |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for device, b in result["backends"].items():
        if not os.path.exists(os.path.join(out, f"run-{device}.log")):
            continue  # a bench-only variant (bench-wgpu-f16.json): no run of its own
        run = b["run"] or {}
        check = b["onnx_runtime"] or {}
        verdict = check.get("skipped") or (f"relative L2 {check['relative_l2']:.1e}, max {check['max_abs_diff']:.1e}"
                                           if "relative_l2" in check else "no result")
        lines.append(f"| {device} | {run.get('loss', '-')} | {run.get('knn_top1', '-')} | "
                     f"{run.get('pairs_per_s', '-')} | {b['gpu_memory'] or '-'} | {verdict} |")
    nccl = result["nccl"] or {}
    if "nccl_version" in nccl:
        nccl = (f"NCCL {nccl['nccl_version']}, {nccl['world']} rank on GPU 0: all-reduce of "
                f"{nccl['values']:,} values {nccl['seconds_per_all_reduce'] * 1e3:.2f} ms; max error "
                f"{nccl['sum_max_error']:.1e} in place, {nccl['copy_max_error']:.1e} into another tensor, "
                f"strided {nccl['strided_max_error']:.1e}")
    else:
        nccl = nccl.get("skipped", nccl or "no result")
    lines += ["", f"NCCL: {nccl}"]
    print("\n".join(lines))


def last_gpu_memory(log):
    """The last "GPU memory: ..." figure a run printed (CubeCL's pools), or None."""
    if not os.path.exists(log):
        return None
    lines = [l for l in open(log, errors="replace") if ": GPU memory: " in l]
    return lines[-1].split(": GPU memory: ")[-1].strip() if lines else None


def memory_cell(mib):
    return f"{mib} MiB (whole card)" if mib else "-"


def read_json_whole(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "ort-check":
        ort_check(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        sys.exit(__doc__)
