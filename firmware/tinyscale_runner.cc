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

namespace {

// Enough for "-2147483648" and a NUL.
constexpr size_t kNumberChars = 12;
// Outputs longer than this are compared in full but printed only in part.
constexpr unsigned int kPrintedValues = 64;

void WriteInt(long value) {
  char text[kNumberChars];
  char* end = text + sizeof(text) - 1;
  *end = '\0';
  char* cursor = end;
  // Work on the magnitude as unsigned so the most negative value is safe.
  unsigned long magnitude = value < 0 ? 0UL - static_cast<unsigned long>(value) : static_cast<unsigned long>(value);
  do {
    *--cursor = static_cast<char>('0' + magnitude % 10);
    magnitude /= 10;
  } while (magnitude != 0);
  if (value < 0) *--cursor = '-';
  ts_console_write(cursor);
}

void WriteLabelled(const char* label, long value) {
  ts_console_write(label);
  WriteInt(value);
}

bool CopyInputs(tflite::MicroInterpreter& interpreter) {
  for (unsigned int i = 0; i < TS_INPUT_COUNT; ++i) {
    TfLiteTensor* tensor = interpreter.input(i);
    if (tensor == nullptr || tensor->type != kTfLiteInt8 || tensor->bytes != ts_selftest_inputs[i].length) {
      WriteLabelled("SELFTEST FAIL input tensor mismatch at input ", i);
      ts_console_write("\n");
      return false;
    }
    memcpy(tensor->data.int8, ts_selftest_inputs[i].data, tensor->bytes);
  }
  return true;
}

void PrintOutput(unsigned int index, const int8_t* values, unsigned int length) {
  WriteLabelled("OUTPUT ", index);
  ts_console_write(":");
  const unsigned int shown = length < kPrintedValues ? length : kPrintedValues;
  for (unsigned int j = 0; j < shown; ++j) {
    ts_console_write(" ");
    WriteInt(values[j]);
  }
  if (shown < length) ts_console_write(" ...");
  ts_console_write("\n");
}

// Largest absolute difference over all outputs, or -1 if an output's shape differs.
int CompareOutputs(tflite::MicroInterpreter& interpreter) {
  int max_difference = 0;
  for (unsigned int i = 0; i < TS_OUTPUT_COUNT; ++i) {
    const TfLiteTensor* tensor = interpreter.output(i);
    const TsTensorData& expected = ts_selftest_expected[i];
    if (tensor == nullptr || tensor->type != kTfLiteInt8 || tensor->bytes != expected.length) return -1;
    PrintOutput(i, tensor->data.int8, expected.length);
    for (unsigned int j = 0; j < expected.length; ++j) {
      int difference = tensor->data.int8[j] - expected.data[j];
      if (difference < 0) difference = -difference;
      if (difference > max_difference) max_difference = difference;
    }
  }
  return max_difference;
}

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
  tflite::MicroInterpreter interpreter(model, resolver, arena, arena_bytes);
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    WriteLabelled("SELFTEST FAIL AllocateTensors failed with an arena of ", static_cast<long>(arena_bytes));
    ts_console_write(" B\n");
    return 2;
  }
  WriteLabelled("ARENA used ", static_cast<long>(interpreter.arena_used_bytes()));
  WriteLabelled(" B of ", static_cast<long>(arena_bytes));
  ts_console_write(" B\n");
  if (!CopyInputs(interpreter)) return 2;

  const uint32_t start_us = ts_time_us();
  const TfLiteStatus status = interpreter.Invoke();
  const uint32_t elapsed_us = ts_time_us() - start_us;
  if (status != kTfLiteOk) {
    ts_console_write("SELFTEST FAIL Invoke failed\n");
    return 2;
  }
  WriteLabelled("INFERENCE us ", static_cast<long>(elapsed_us));
  ts_console_write("\n");

  const int max_difference = CompareOutputs(interpreter);
  if (max_difference < 0) {
    ts_console_write("SELFTEST FAIL output tensor mismatch\n");
    return 1;
  }
  const bool pass = max_difference <= TS_SELFTEST_TOLERANCE;
  ts_console_write(pass ? "SELFTEST PASS" : "SELFTEST FAIL");
  WriteLabelled(" max_diff ", max_difference);
  WriteLabelled(" tolerance ", TS_SELFTEST_TOLERANCE);
  ts_console_write("\n");
  return pass ? 0 : 1;
}
