"""sizeof/alignof of the TFLM structs the arena model counts, as a compiler lays them out.

Compiles small probe translation units against a TFLite Micro tree made by
create_tflm_tree.py (the same defines and include paths as the firmware's
CMake project) and reads the constants back from the assembly, so the sizes
are the compiler's, not read off by eye. The figures in tinyscale/graph/tflm_abi.py
come from this script:

    python benchmarks/tflm_struct_sizes.py --tflm TREE_M4_CMSIS        # arm-none-eabi, Cortex-M4
    python benchmarks/tflm_struct_sizes.py --tflm TREE_M55_CMSIS --cpu cortex-m55
    python benchmarks/tflm_struct_sizes.py --tflm TFLM_SOURCE --host  # x86-64 g++, compression on

Each probe prints (name, sizeof, alignof). A kernel's Init struct lives in an
anonymous namespace of its .cc, so the probe includes the .cc itself.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

CORE_HEADERS = (
    "tensorflow/lite/micro/micro_allocator.cc",  # MicroBuiltinDataAllocator is local to it
    "tensorflow/lite/micro/micro_interpreter.h",
    "tensorflow/lite/micro/micro_allocation_info.h",
    "tensorflow/lite/micro/memory_planner/greedy_memory_planner.h",
    "tensorflow/lite/micro/arena_allocator/single_arena_buffer_allocator.h",
    "tensorflow/lite/micro/tflite_bridge/micro_error_reporter.h",
    "tensorflow/lite/micro/tflite_bridge/flatbuffer_conversions_bridge.h",
    "tensorflow/lite/core/c/builtin_op_data.h",
)
# name -> C++ type, in the tflite namespace.
CORE_TYPES = {
    "SingleArenaBufferAllocator": "SingleArenaBufferAllocator",
    "GreedyMemoryPlanner": "GreedyMemoryPlanner",
    "MicroAllocator": "MicroAllocator",
    "MicroBuiltinDataAllocator": "MicroBuiltinDataAllocator",
    "SubgraphAllocations": "SubgraphAllocations",
    "TfLiteEvalTensor": "TfLiteEvalTensor",
    "NodeAndRegistration": "NodeAndRegistration",
    "TfLiteTensor": "TfLiteTensor",
    "TfLiteAffineQuantization": "TfLiteAffineQuantization",
    "TfLiteIntArray": "TfLiteIntArray",
    "ScratchBufferRequest": "internal::ScratchBufferRequest",
    "ScratchBufferHandle": "ScratchBufferHandle",
    "AllocationInfo": "AllocationInfo",
    "pointer": "TfLiteTensor*",
    "TfLiteConvParams": "TfLiteConvParams",
    "TfLiteDepthwiseConvParams": "TfLiteDepthwiseConvParams",
    "TfLiteFullyConnectedParams": "TfLiteFullyConnectedParams",
    "TfLiteAddParams": "TfLiteAddParams",
    "TfLiteSubParams": "TfLiteSubParams",
    "TfLiteMulParams": "TfLiteMulParams",
    "TfLiteReducerParams": "TfLiteReducerParams",
    "TfLiteSoftmaxParams": "TfLiteSoftmaxParams",
    "TfLiteStridedSliceParams": "TfLiteStridedSliceParams",
    "TfLiteConcatenationParams": "TfLiteConcatenationParams",
    "TfLitePoolParams": "TfLitePoolParams",
    "TfLiteReshapeParams": "TfLiteReshapeParams",
    "TfLiteLeakyReluParams": "TfLiteLeakyReluParams",
}
K = "tensorflow/lite/micro/kernels/"
# Kernel Init structs: name -> (the .cc to include, type). Reference kernels' headers
# declare most of them; the rest are local to the .cc.
REFERENCE_OP_DATA = {
    "CONV_2D": (K + "conv.h", "OpDataConv"),
    "FULLY_CONNECTED": (K + "fully_connected.h", "OpDataFullyConnected"),
    "ADD": (K + "add.h", "OpDataAdd"),
    "SUB": (K + "sub.h", "OpDataSub"),
    "MUL": (K + "mul.h", "OpDataMul"),
    "MEAN": (K + "reduce.h", "OpDataReduce"),
    "SOFTMAX": (K + "softmax.h", "SoftmaxParams"),
    "LOGISTIC": (K + "logistic.h", "OpDataLogistic"),
    "STRIDED_SLICE": ("tensorflow/lite/kernels/internal/types.h", "StridedSliceParams"),
    "PAD": (K + "pad.h", "OpData"),
    "CONCATENATION": (K + "concatenation.cc", "OpData"),
    "AVERAGE_POOL_2D": (K + "pooling.h", "OpDataPooling"),
    "RELU": (K + "activations.h", "ReluOpData"),
    "RELU6": (K + "activations.h", "Relu6OpData"),
    "TANH": (K + "tanh.cc", "OpData"),
    "LEAKY_RELU": (K + "leaky_relu.h", "LeakyReluOpData"),
    "QUANTIZE": (K + "quantize.h", "OpDataQuantizeReference"),
    "HARD_SWISH": ("tensorflow/lite/kernels/internal/types.h", "HardSwishParams"),
    "ELU": (K + "elu.cc", "OpData"),
    "ABS": (K + "elementwise.cc", "OpDataAbsRsqrt"),
}
CMSIS_NN_OP_DATA = {
    "CONV_2D": (K + "cmsis_nn/conv.cc", "OpData"),
    "DEPTHWISE_CONV_2D": (K + "cmsis_nn/depthwise_conv.cc", "OpData"),
    "FULLY_CONNECTED": (K + "cmsis_nn/fully_connected.cc", "OpData"),
    "ADD": (K + "cmsis_nn/add.cc", "OpData"),
    "SOFTMAX": (K + "cmsis_nn/softmax.cc", "CMSISNNSoftmaxParams"),
    "AVERAGE_POOL_2D": (K + "cmsis_nn/pooling.cc", "OpData"),
}
ARM_FLAGS = {
    "cortex-m4": ["-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"],
    "cortex-m7": ["-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"],
    "cortex-m33": ["-mcpu=cortex-m33", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"],
    "cortex-m55": ["-mcpu=cortex-m55", "-mfpu=fpv5-d16", "-mfloat-abi=hard"],
}


def compiler(tree: Path, cpu: str, host: bool) -> list[str]:
    defines = ["-DTF_LITE_STATIC_MEMORY", "-DTF_LITE_MCU_DEBUG_LOG", "-DPROJECT_GENERATION"]
    third_party = tree / "third_party"
    downloads = tree / "tensorflow/lite/micro/tools/make/downloads"
    if downloads.is_dir():  # a tflite-micro checkout (the host probe needs its compression headers)
        third_party = downloads
    includes = [tree, third_party / "flatbuffers/include", third_party / "gemmlowp",
                third_party / "ruy", third_party / "kissfft"]
    if (tree / "third_party/cmsis_nn").is_dir():
        defines.append("-DCMSIS_NN")
        includes += [tree / "third_party/cmsis_nn", tree / "third_party/cmsis_nn/Include",
                     tree / "third_party/cmsis/CMSIS/Core/Include"]
    if host:
        # The tflite_micro pip wheel (the host measurement) is built with compression.
        command = ["g++", "-DUSE_TFLM_COMPRESSION"]
    else:
        command = ["arm-none-eabi-g++", "-mthumb", *ARM_FLAGS[cpu]]
    return [*command, "-std=c++17", "-fno-rtti", "-fno-exceptions", "-O2", "-w", "-S", *defines,
            *(f"-I{path}" for path in includes)]


def probe(command: list[str], includes: list[str], types: dict[str, str]) -> dict[str, tuple[int, int]]:
    """sizeof and alignof of each type, compiled in one translation unit."""
    values = ", ".join(f"sizeof({t}), alignof({t})" for t in types.values())
    source = "\n".join(f'#include "{path}"' for path in includes)
    # Reopening the unnamed namespace reaches a .cc's local structs.
    source += f"\nnamespace tflite {{ namespace {{ const unsigned kTsProbe[] = {{{values}}}; }}\n"
    source += "extern \"C\" const unsigned* ts_probe() { return kTsProbe; } }\n"
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "probe.cc"
        path.write_text(source)
        result = subprocess.run([*command, str(path), "-o", "-"], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"probe of {', '.join(types.values())} failed:\n{result.stderr[-2000:]}")
    assembly = result.stdout
    block = assembly[assembly.index("kTsProbe"):]
    block = block[re.search(r"^_?_?Z?\S*kTsProbe\S*:\s*$", block, re.MULTILINE).end():]
    numbers = [int(n, 0) for n in re.findall(r"^\s*\.(?:word|long|4byte)\s+(\S+)", block, re.MULTILINE)]
    return {name: (numbers[2 * i], numbers[2 * i + 1]) for i, name in enumerate(types)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflm", type=Path, required=True,
                        help="a create_tflm_tree.py tree (or, with --host, a tflite-micro checkout with its downloads)")
    parser.add_argument("--cpu", default="cortex-m4", choices=sorted(ARM_FLAGS))
    parser.add_argument("--host", action="store_true", help="x86-64 g++ instead of arm-none-eabi-g++")
    args = parser.parse_args(argv)
    command = compiler(args.tflm, args.cpu, args.host)
    result = {"core": probe(command, list(CORE_HEADERS), CORE_TYPES), "op_data": {}}
    tables = [("reference", REFERENCE_OP_DATA)]
    if (args.tflm / "third_party/cmsis_nn").is_dir():
        tables.append(("cmsis-nn", CMSIS_NN_OP_DATA))
    for library, table in tables:
        for op, (include, type_name) in table.items():
            if (args.tflm / include).is_file():
                result["op_data"].setdefault(library, {})[op] = probe(command, [include], {op: type_name})[op]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
