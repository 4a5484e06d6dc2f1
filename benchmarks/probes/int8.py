"""Does static int8 quantisation (ONNX Runtime, QDQ and QOperator, per-channel weights) pay on this CPU?

Usage: python benchmarks/probes/int8.py MODEL [SIZE [THREADS]]  (e.g. cheapnet-m, cheapmix-m, unet-lite0; default
512 and 1 thread), 1x1xSIZExSIZE, the rewritten
(fused) graph as `defectseg export` writes it, calibrated on 4 random images (speed only: agreement on real images
would matter only if int8 were faster). Prints the median ms of float32 and int8 and their largest logit difference.
Measured 2026-11-30 (another job on the other core): CheapNet-M 40 ms float32, 128 ms int8 (QDQ), 133 ms
(QOperator); CheapMix-M (Conv only) 50 ms float32, 196 ms int8; QOperator fails on its Resize. int8 is not shipped.
"""

import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from defectseg.export import export_onnx
from defectseg.fuse import fuse_for_inference
from defectseg.models import PixelModel, create_model

name = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 512
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
tmp = tempfile.mkdtemp(prefix="int8-")
m = fuse_for_inference(PixelModel(create_model(name)).eval())
export_onnx(m, f"{tmp}/{name}.onnx", (1, 1, size, size))
rng = np.random.default_rng(0)


class R(CalibrationDataReader):
    def __init__(s):
        s.it = iter([{"image": rng.integers(0, 256, (1, 1, size, size)).astype(np.float32)} for _ in range(4)])

    def get_next(s):
        return next(s.it, None)


for fmt in [QuantFormat.QDQ, QuantFormat.QOperator]:
    out = f"{tmp}/{name}-{fmt}.onnx"
    quantize_static(
        f"{tmp}/{name}.onnx",
        out,
        R(),
        quant_format=fmt,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv"],
    )
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    s0 = ort.InferenceSession(f"{tmp}/{name}.onnx", o, providers=["CPUExecutionProvider"])
    s1 = ort.InferenceSession(out, o, providers=["CPUExecutionProvider"])
    x = rng.integers(0, 256, (1, 1, size, size)).astype(np.float32)

    def tm(s, n=10, x=x):
        for _ in range(3):
            s.run(None, {"image": x})
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            s.run(None, {"image": x})
            ts.append(time.perf_counter() - t)
        return round(np.median(ts) * 1e3, 1)

    print(
        name,
        fmt,
        "fp32",
        tm(s0),
        "int8",
        tm(s1),
        "maxdiff",
        np.abs(s0.run(None, {"image": x})[0] - s1.run(None, {"image": x})[0]).max(),
    )
