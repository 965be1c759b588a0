"""Sizes of TFLite Micro's structs in the two builds the arena model replays (data, in bytes).

TFLM's persistent allocations are C structs holding pointers and size_t, so
the same model needs a different arena in the 64-bit host interpreter (the
tflite_micro pip wheel, the measurement reference) and in 32-bit Cortex-M
firmware. Every figure the arena model (tinyscale.graph.estimate) uses for a struct
lives here, once per build:

- HOST_X86_64: the x86-64 wheel (built with USE_TFLM_COMPRESSION), checked
  against the wheel's measured minimal arena (tests/test_arena_model.py); the
  struct and op-data sizes are what `benchmarks/tflm_struct_sizes.py --host`
  prints for the tflite-micro checkout, except two calibrated on
  print_allocations: the Python interpreter's recording allocator objects
  (488 B, where the plain ones are 256) and the wheel's newer
  TfLiteFullyConnectedParams (32 B, 16 in the checkout).
- ARM32_EABI: sizeof/alignof from arm-none-eabi-g++ (AAPCS with short enums:
  TfLiteAddParams is 2 B, not 8; Thumb-2, -O2) on
  the TFLM trees the firmware builds (tflite-micro 90b983c2b3f1480642e040bbd2ddb37b998f3424),
  printed by benchmarks/tflm_struct_sizes.py; identical for Cortex-M4, M7,
  M33 and M55, and checked against QEMU's `arena_used_bytes()`
  (tests/data/device_arena_measurements.json).

Each (bytes, alignment) pair is what TFLM passes to AllocatePersistentBuffer /
AllocateTemp (alignof of the struct). Kernel op data is allocated 16-aligned
whatever its struct, so only its size is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Allocation = tuple[int, int]  # (bytes, alignment)


@dataclass(frozen=True)
class TflmAbi:
    """One build's struct sizes, in bytes (alignments in bytes too)."""

    name: str
    # Allocator objects created before anything model-dependent, in allocation order
    # (SingleArenaBufferAllocator, the memory planner, MicroAllocator,
    # MicroBuiltinDataAllocator, SubgraphAllocations).
    fixed_tail: tuple[Allocation, ...]
    eval_tensor: Allocation  # TfLiteEvalTensor
    node_and_registration: Allocation  # NodeAndRegistration (TfLiteNode + TFLMRegistration*)
    tflite_tensor: Allocation  # TfLiteTensor under TF_LITE_STATIC_MEMORY
    affine_quantization: Allocation  # TfLiteAffineQuantization
    int_array_alignment: int  # alignof(TfLiteIntArray): the zero-point copy
    scratch_request: Allocation  # internal::ScratchBufferRequest
    scratch_handle: Allocation  # ScratchBufferHandle
    allocation_info: Allocation  # AllocationInfo
    size_t_bytes: int  # sizeof(size_t) = sizeof(void*): subgraph offsets, I/O tensor pointer arrays
    # Parsed builtin options per operator (flatbuffer_conversions.cc Parse*): (bytes, alignment).
    builtin_options: dict[str, Allocation] = field(hash=False)
    # Bytes of each kernel's Init allocation, per kernel library; "reference"
    # is the base, another library lists the kernels it replaces.
    op_data_bytes: dict[str, dict[str, int]] = field(hash=False)

    def op_data(self, kind: str, kernel_library: str) -> int | None:
        """Bytes of `kind`'s Init allocation with `kernel_library` (None: not known for this build)."""
        own = self.op_data_bytes.get(kernel_library, {})
        if kind in own:
            return own[kind]
        return self.op_data_bytes["reference"].get(kind)


# kMaxScratchBuffersPerOp and the planner's per-buffer working set
# (GreedyMemoryPlanner::per_buffer_size: BufferRequirements 16 + two ints +
# ListEntry 12 + an int offset): ints only, the same in every build.
MAX_SCRATCH_BUFFERS_PER_OP = 12
PLANNER_BYTES_PER_BUFFER = 40

_HOST_OPTIONS = {
    "CONV_2D": (28, 4), "DEPTHWISE_CONV_2D": (28, 4),  # TfLiteConvParams, TfLiteDepthwiseConvParams
    # The wheel's TfLiteFullyConnectedParams is newer than the checked-out sources
    # (FullyConnectedOptions.quant_spec): measured on 13 models, only 32, 8-aligned fits.
    "FULLY_CONNECTED": (32, 8),
    "ADD": (8, 4), "SUB": (8, 4), "MUL": (4, 4), "MEAN": (1, 1), "SOFTMAX": (4, 4),
    "STRIDED_SLICE": (24, 4), "CONCATENATION": (8, 4), "AVERAGE_POOL_2D": (40, 4), "MAX_POOL_2D": (40, 4),
    "LEAKY_RELU": (4, 4), "RESHAPE": (36, 4),
}
_HOST_OP_DATA = {
    "CONV_2D": 80, "DEPTHWISE_CONV_2D": 80,  # OpDataConv
    "FULLY_CONNECTED": 72, "ADD": 60, "MUL": 36, "MEAN": 44,  # OpDataFullyConnected, OpDataAdd, OpDataMul, OpDataReduce
    "SOFTMAX": 80, "LOGISTIC": 16,  # SoftmaxParams (int8: no LUTs), OpDataLogistic
    "STRIDED_SLICE": 84, "PAD": 56, "PADV2": 56,  # StridedSliceParams, pad.h OpData
    "CONCATENATION": 80,  # ConcatenationParams + 10 scratch indices (the wheel's)
    "AVERAGE_POOL_2D": 32, "MAX_POOL_2D": 32,  # OpDataPooling
    "RELU": 28, "RELU6": 8, "TANH": 16, "LEAKY_RELU": 24, "RESHAPE": 0,
    "QUANTIZE": 32, "HARD_SWISH": 20, "ELU": 256, "ABS": 28, "RSQRT": 28, "SUB": 52,
    "MAXIMUM": 0, "MINIMUM": 0,  # no Init
}

HOST_X86_64 = TflmAbi(
    name="x86-64 host (tflite_micro wheel)",
    # Recording allocators of the Python interpreter; calibrated as one block
    # against print_allocations (models without a FULLY_CONNECTED tell it apart).
    fixed_tail=((488, 8),),
    eval_tensor=(24, 8),
    node_and_registration=(64, 8),
    tflite_tensor=(64, 8),
    affine_quantization=(24, 8),
    int_array_alignment=4,
    scratch_request=(16, 8),
    scratch_handle=(8, 8),
    allocation_info=(32, 8),
    size_t_bytes=8,
    builtin_options=_HOST_OPTIONS,
    op_data_bytes={"reference": _HOST_OP_DATA},
)

_ARM32_OPTIONS = {
    "CONV_2D": (28, 4), "DEPTHWISE_CONV_2D": (28, 4), "FULLY_CONNECTED": (5, 1),
    "ADD": (2, 1), "SUB": (2, 1), "MUL": (1, 1), "MEAN": (1, 1), "SOFTMAX": (4, 4),
    "STRIDED_SLICE": (24, 4), "CONCATENATION": (8, 4), "AVERAGE_POOL_2D": (40, 4), "MAX_POOL_2D": (40, 4),
    "LEAKY_RELU": (4, 4), "RESHAPE": (36, 4),
}
_ARM32_REFERENCE_OP_DATA = {
    "CONV_2D": 56, "DEPTHWISE_CONV_2D": 56, "FULLY_CONNECTED": 48, "ADD": 60, "MUL": 36, "MEAN": 44,
    "SOFTMAX": 56, "LOGISTIC": 16, "STRIDED_SLICE": 84, "PAD": 56, "PADV2": 56,
    "CONCATENATION": 24, "AVERAGE_POOL_2D": 32, "MAX_POOL_2D": 32,
    "RELU": 28, "RELU6": 8, "TANH": 16, "LEAKY_RELU": 24, "RESHAPE": 0,
    "QUANTIZE": 32, "HARD_SWISH": 20, "ELU": 256, "ABS": 28, "RSQRT": 28, "SUB": 52,
    "MAXIMUM": 0, "MINIMUM": 0,
}
# kernels/cmsis_nn/*.cc: each wraps the reference op data with its buffer indices.
_ARM32_CMSIS_NN_OP_DATA = {
    "CONV_2D": 60, "DEPTHWISE_CONV_2D": 60, "FULLY_CONNECTED": 72, "ADD": 60,
    "SOFTMAX": 64,  # CMSISNNSoftmaxParams
    "AVERAGE_POOL_2D": 36, "MAX_POOL_2D": 36,
}

ARM32_EABI = TflmAbi(
    name="32-bit Arm EABI (Cortex-M firmware)",
    # SingleArenaBufferAllocator 36, GreedyMemoryPlanner 44, MicroAllocator 36,
    # MicroBuiltinDataAllocator 8, SubgraphAllocations 8 (plain MicroInterpreter).
    fixed_tail=((36, 4), (44, 4), (36, 4), (8, 4), (8, 4)),
    eval_tensor=(12, 4),
    node_and_registration=(32, 4),
    tflite_tensor=(32, 4),
    affine_quantization=(12, 4),
    int_array_alignment=4,
    scratch_request=(12, 4),
    scratch_handle=(4, 4),
    allocation_info=(24, 4),
    size_t_bytes=4,
    builtin_options=_ARM32_OPTIONS,
    op_data_bytes={"reference": _ARM32_REFERENCE_OP_DATA, "cmsis-nn": _ARM32_CMSIS_NN_OP_DATA},
)
