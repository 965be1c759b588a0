// Shared inference core: the same file is copied into every generated
// project, so a build on any board exercises it for all of them.
#include "tinyscale_runner.h"

#include <string.h>

#include "model_data.h"
#include "model_ops.h"
#include "selftest_data.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "tinyscale_platform.h"
#ifdef TINYSCALE_PROFILE
#include "tensorflow/lite/micro/compatibility.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"
#include "tensorflow/lite/micro/micro_time.h"
#endif

namespace {

// Enough for the 20 digits of a 64-bit number and a NUL.
constexpr size_t kNumberChars = 21;
// Outputs longer than this are compared in full but printed only in part.
constexpr unsigned int kPrintedValues = 64;
// Float values print with this many digits after the point (no printf: newlib-nano has no %e).
constexpr unsigned int kMantissaDigits = 8;
constexpr unsigned long kMantissaScale = 100000000UL;  // 10^kMantissaDigits

void WriteUnsigned(unsigned long long magnitude, unsigned int min_digits) {
  char text[kNumberChars];
  char* cursor = text + sizeof(text) - 1;
  *cursor = '\0';
  unsigned int digits = 0;
  do {
    *--cursor = static_cast<char>('0' + magnitude % 10);
    magnitude /= 10;
    ++digits;
  } while (magnitude != 0 || digits < min_digits);
  ts_console_write(cursor);
}

void WriteInt(long value) {
  // Work on the magnitude as unsigned so the most negative value is safe.
  if (value < 0) ts_console_write("-");
  WriteUnsigned(value < 0 ? 0UL - static_cast<unsigned long>(value) : static_cast<unsigned long>(value), 1);
}

// value as d.dddddddde+XX (9 significant digits, like printf's %.8e): quantization
// steps of int16 outputs are ~1e-5, so fixed decimals would lose them.
void WriteFloat(float value) {
  if (value != value) {
    ts_console_write("nan");
    return;
  }
  if (value < 0) ts_console_write("-");
  double magnitude = value < 0 ? -static_cast<double>(value) : static_cast<double>(value);
  if (magnitude > 3.5e38) {  // beyond the largest float
    ts_console_write("inf");
    return;
  }
  int exponent = 0;
  if (magnitude != 0.0) {
    while (magnitude >= 10.0) {
      magnitude /= 10.0;
      ++exponent;
    }
    while (magnitude < 1.0) {
      magnitude *= 10.0;
      --exponent;
    }
  }
  unsigned long digits = static_cast<unsigned long>(magnitude * kMantissaScale + 0.5);
  if (digits >= 10 * kMantissaScale) {  // rounded up to 10.000...
    digits /= 10;
    ++exponent;
  }
  WriteUnsigned(digits / kMantissaScale, 1);
  ts_console_write(".");
  WriteUnsigned(digits % kMantissaScale, kMantissaDigits);
  ts_console_write(exponent < 0 ? "e-" : "e+");
  WriteUnsigned(static_cast<unsigned long>(exponent < 0 ? -exponent : exponent), 2);
}

// Integers print as integers (as the int8 self-test always has), floats with decimals.
void WriteValue(float value, TsType type) {
  if (type == TS_FLOAT32) {
    WriteFloat(value);
  } else {
    WriteInt(static_cast<long>(value));
  }
}

void WriteLabelled(const char* label, long value) {
  ts_console_write(label);
  WriteInt(value);
}

TfLiteType TfliteType(TsType type) {
  switch (type) {
    case TS_INT8:
      return kTfLiteInt8;
    case TS_INT16:
      return kTfLiteInt16;
    default:
      return kTfLiteFloat32;
  }
}

size_t ValueBytes(TsType type) {
  switch (type) {
    case TS_INT8:
      return sizeof(int8_t);
    case TS_INT16:
      return sizeof(int16_t);
    default:
      return sizeof(float);
  }
}

// Value j of `length` values of `type` at `data`, as a float (exact for int8 and int16).
float ValueAt(const void* data, TsType type, unsigned int j) {
  switch (type) {
    case TS_INT8:
      return static_cast<const int8_t*>(data)[j];
    case TS_INT16:
      return static_cast<const int16_t*>(data)[j];
    default:
      return static_cast<const float*>(data)[j];
  }
}

// Whether the interpreter's tensor holds exactly the embedded vector's type and size.
bool Matches(const TfLiteTensor* tensor, const TsTensorData& data) {
  return tensor != nullptr && tensor->type == TfliteType(data.type) && tensor->bytes == data.length * ValueBytes(data.type);
}

bool CopyInputs(tflite::MicroInterpreter& interpreter) {
  for (unsigned int i = 0; i < TS_INPUT_COUNT; ++i) {
    TfLiteTensor* tensor = interpreter.input(i);
    if (!Matches(tensor, ts_selftest_inputs[i])) {
      WriteLabelled("SELFTEST FAIL input tensor mismatch at input ", i);
      ts_console_write("\n");
      return false;
    }
    memcpy(tensor->data.raw, ts_selftest_inputs[i].data, tensor->bytes);
  }
  return true;
}

void PrintOutput(unsigned int index, const void* values, TsType type, unsigned int length) {
  WriteLabelled("OUTPUT ", index);
  ts_console_write(":");
  const unsigned int shown = length < kPrintedValues ? length : kPrintedValues;
  for (unsigned int j = 0; j < shown; ++j) {
    ts_console_write(" ");
    WriteValue(ValueAt(values, type, j), type);
  }
  if (shown < length) ts_console_write(" ...");
  ts_console_write("\n");
}

// Largest |device - host| of each output, compared in float (exact for int8/int16).
// False if an output's type or size differs from the embedded expectation.
bool CompareOutputs(tflite::MicroInterpreter& interpreter, float* max_difference) {
  for (unsigned int i = 0; i < TS_OUTPUT_COUNT; ++i) {
    const TfLiteTensor* tensor = interpreter.output(i);
    const TsTensorData& expected = ts_selftest_expected[i];
    if (!Matches(tensor, expected)) return false;
    PrintOutput(i, tensor->data.raw, expected.type, expected.length);
    max_difference[i] = 0.0f;
    for (unsigned int j = 0; j < expected.length; ++j) {
      float difference = ValueAt(tensor->data.raw, expected.type, j) - ValueAt(expected.data, expected.type, j);
      if (difference < 0) difference = -difference;
      if (difference != difference || difference > max_difference[i]) max_difference[i] = difference;
    }
  }
  return true;
}

// Whether every output is within its tolerance (false for a NaN difference).
bool WithinTolerance(const float* max_difference) {
  for (unsigned int i = 0; i < TS_OUTPUT_COUNT; ++i) {
    if (!(max_difference[i] <= ts_selftest_expected[i].tolerance)) return false;
  }
  return true;
}

// " max_diff D tolerance T" for each output, in the output's own type.
void ReportDifferences(const float* max_difference) {
  for (unsigned int i = 0; i < TS_OUTPUT_COUNT; ++i) {
    const TsTensorData& expected = ts_selftest_expected[i];
    ts_console_write(" max_diff ");
    WriteValue(max_difference[i], expected.type);
    ts_console_write(" tolerance ");
    WriteValue(expected.tolerance, expected.type);
  }
}

#ifdef TINYSCALE_PROFILE
// Per-operator timer ticks of one Invoke (projects rendered with `tinyscale firmware --profile`):
// the interpreter opens one event per operator it runs, in execution order. TFLM's own
// MicroProfiler keeps fixed tables for 4096 events (~80 KB of RAM, more than a fitted
// network leaves beside its arena); this keeps kProfileEvents and counts the rest as dropped.
constexpr uint32_t kProfileEvents = 512;

// Plain static tables (6 KB): off the stack, and with no destructor to register at exit.
struct ProfileEvents {
  const char* tags[kProfileEvents];
  uint32_t start[kProfileEvents];
  uint32_t end[kProfileEvents];
  uint32_t count;
};
ProfileEvents ts_profile_events;

class OperatorProfile : public tflite::MicroProfilerInterface {
 public:
  explicit OperatorProfile(ProfileEvents& events) : events_(events) { events_.count = 0; }

  uint32_t BeginEvent(const char* tag) override {
    const uint32_t handle = events_.count++;
    if (handle < kProfileEvents) {
      events_.tags[handle] = tag;
      events_.start[handle] = tflite::GetCurrentTimeTicks();  // last, so the bookkeeping is not counted
      events_.end[handle] = events_.start[handle];
    }
    return handle;
  }

  void EndEvent(uint32_t handle) override {
    const uint32_t now = tflite::GetCurrentTimeTicks();  // first, for the same reason
    if (handle < kProfileEvents) events_.end[handle] = now;
  }

  // "PROFILE <event> <tag> <ticks>" per operator, then
  // "PROFILE TOTAL <sum> INVOKE <ticks> TICKS_PER_SECOND <hz> EVENTS <n> DROPPED <n>".
  void Report(uint32_t invoke_ticks) const {
    const uint32_t kept = events_.count < kProfileEvents ? events_.count : kProfileEvents;
    unsigned long long total = 0;
    for (uint32_t i = 0; i < kept; ++i) {
      const uint32_t ticks = events_.end[i] - events_.start[i];  // unsigned: right across a counter wrap
      total += ticks;
      WriteLabelled("PROFILE ", static_cast<long>(i));
      ts_console_write(" ");
      ts_console_write(events_.tags[i] != nullptr ? events_.tags[i] : "?");
      ts_console_write(" ");
      WriteUnsigned(ticks, 1);
      ts_console_write("\n");
    }
    ts_console_write("PROFILE TOTAL ");
    WriteUnsigned(total, 1);
    ts_console_write(" INVOKE ");
    WriteUnsigned(invoke_ticks, 1);
    ts_console_write(" TICKS_PER_SECOND ");
    WriteUnsigned(tflite::ticks_per_second(), 1);
    ts_console_write(" EVENTS ");
    WriteUnsigned(kept, 1);
    ts_console_write(" DROPPED ");
    WriteUnsigned(events_.count - kept, 1);
    ts_console_write("\n");
  }

 private:
  ProfileEvents& events_;

  TF_LITE_REMOVE_VIRTUAL_DELETE
};
#endif

}  // namespace

int ts_run_selftest(uint8_t* arena, size_t arena_bytes) {
  const tflite::Model* model = tflite::GetModel(ts_model_data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    WriteLabelled("SELFTEST FAIL model schema version ", model->version());
    ts_console_write("\n");
    return 2;
  }
  tflite::MicroMutableOpResolver<TS_OP_COUNT> resolver;
  if (ts_register_ops(resolver) != kTfLiteOk) {
    ts_console_write("SELFTEST FAIL could not register the model's operators\n");
    return 2;
  }
#ifdef TINYSCALE_PROFILE
  OperatorProfile profile(ts_profile_events);
  tflite::MicroInterpreter interpreter(model, resolver, arena, arena_bytes, nullptr, &profile);
#else
  tflite::MicroInterpreter interpreter(model, resolver, arena, arena_bytes);
#endif
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    WriteLabelled("SELFTEST FAIL AllocateTensors failed with an arena of ", static_cast<long>(arena_bytes));
    ts_console_write(" B\n");
    return 2;
  }
  WriteLabelled("ARENA used ", static_cast<long>(interpreter.arena_used_bytes()));
  WriteLabelled(" B of ", static_cast<long>(arena_bytes));
  ts_console_write(" B\n");
  if (!CopyInputs(interpreter)) return 2;
#ifdef TS_PREDICTED_LATENCY_US
  // tinyscale's cost-model figure at the board's clock, for comparison with INFERENCE us below.
  WriteLabelled("PREDICTED us ", static_cast<long>(TS_PREDICTED_LATENCY_US));
#ifdef TS_PREDICTED_INSTRUCTIONS
  // Under QEMU's -icount shift=0 the measured INFERENCE us counts thousands of instructions.
  WriteLabelled(" instructions ", static_cast<long>(TS_PREDICTED_INSTRUCTIONS));
#endif
  ts_console_write("\n");
#endif

  const uint32_t start_us = ts_time_us();
#ifdef TINYSCALE_PROFILE
  const uint32_t start_ticks = tflite::GetCurrentTimeTicks();
  const TfLiteStatus status = interpreter.Invoke();
  const uint32_t invoke_ticks = tflite::GetCurrentTimeTicks() - start_ticks;
#else
  const TfLiteStatus status = interpreter.Invoke();
#endif
  const uint32_t elapsed_us = ts_time_us() - start_us;
  if (status != kTfLiteOk) {
    ts_console_write("SELFTEST FAIL Invoke failed\n");
    return 2;
  }
  WriteLabelled("INFERENCE us ", static_cast<long>(elapsed_us));
  ts_console_write("\n");
#ifdef TINYSCALE_PROFILE
  profile.Report(invoke_ticks);
#endif

  float max_difference[TS_OUTPUT_COUNT];
  if (!CompareOutputs(interpreter, max_difference)) {
    ts_console_write("SELFTEST FAIL output tensor mismatch\n");
    return 1;
  }
  const bool pass = WithinTolerance(max_difference);
  ts_console_write(pass ? "SELFTEST PASS" : "SELFTEST FAIL");
  ReportDifferences(max_difference);
  ts_console_write("\n");
  return pass ? 0 : 1;
}
