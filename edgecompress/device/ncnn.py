"""ncnn (Tencent's runtime for Arm CPUs: Raspberry Pi, Android) on the CPU: a `*_ncnn_model` folder (model.ncnn.param,
model.ncnn.bin, metadata.yaml), as Ultralytics exports it. numpy, PyYAML and the `ncnn` wheel only."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgecompress.device.runtime import RUNTIMES, Runtime, Session


class Ncnn(Runtime):
    name, module, install, suffix = "ncnn", "ncnn", "pip install ncnn", "_ncnn_model"

    def owns(self, artifact: Path) -> bool:
        return artifact.name.endswith((self.suffix, ".param"))

    def _load(self, artifact: Path, threads: int, shared: bool) -> Session:
        import ncnn
        import yaml

        param = artifact if artifact.suffix == ".param" else next(artifact.glob("*.param"))
        meta_file = param.parent / "metadata.yaml"
        meta = (yaml.safe_load(meta_file.read_text()) or {}) if meta_file.is_file() else {}
        net = ncnn.Net()
        opt = net.opt  # options must be set before load_param/load_model
        opt.use_vulkan_compute = False  # CPU targets
        if threads:
            opt.num_threads = threads
        if shared:  # its OpenMP workers spin after each run, which slows whatever runs next in this process
            opt.openmp_blocktime = 0
        # FP16 weights (an export with half=True) compute in FP16 where the CPU has FP16 arithmetic (ARMv8.2:
        # Raspberry Pi 5, most Android SoCs); FP32 weights compute in FP32 everywhere (ncnn's own default would
        # compute them in FP16 on those CPUs too, which is not the FP32 artifact that was measured)
        fp16 = str((meta.get("args") or {}).get("quantize")) == "16"
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = fp16
        if net.load_param(str(param)) != 0 or net.load_model(str(param.with_suffix(".bin"))) != 0:
            raise RuntimeError(f"ncnn could not load {param} and its .bin")
        input_name = net.input_names()[0]
        # pnnx names outputs out0, out1, ...; the net lists them unordered
        outputs = sorted(net.output_names(), key=lambda n: [int(p) if p.isdigit() else p
                                                            for p in re.split(r"(\d+)", n)])

        def infer(x: np.ndarray) -> list[np.ndarray]:
            sample = np.ascontiguousarray(x[0], dtype=np.float32)  # ncnn.Mat wraps it: alive until extracted
            results = []
            with net.create_extractor() as ex:
                ex.input(input_name, ncnn.Mat(sample))
                for name in outputs:
                    ret, mat = ex.extract(name)
                    if ret != 0:
                        raise RuntimeError(f"ncnn failed to compute output {name} of {param} (error {ret})")
                    results.append(np.array(mat)[None])  # np.array copies out of ncnn's buffer
            return results

        imgsz = meta.get("imgsz")
        h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz) if imgsz else (None, None)
        # FP16 arithmetic needs ARMv8.2 (asimdhp); ARMv7 with VFPv4 keeps FP16 storage and computes in FP32; x86
        # widens FP16 weights to FP32 at load
        arm82 = ncnn.cpu_support_arm_asimdhp()
        precision = "fp16" if fp16 and arm82 else "fp16 storage" if fp16 and ncnn.cpu_support_arm_vfpv4() else "f32"
        return Session(infer, (1, 3, h, w), execution_precision=precision)


RUNTIMES.add("ncnn", Ncnn())
