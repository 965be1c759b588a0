// The inference core shared by every generated project: load the model,
// run the embedded self-test, compare with the host's expected output and
// time the inference. Board glue supplies the arena and the platform hooks.
#ifndef TINYSCALE_RUNNER_H_
#define TINYSCALE_RUNNER_H_

#include <stddef.h>
#include <stdint.h>

// Runs the self-test once and prints its report. Returns 0 on SELFTEST PASS,
// 1 on SELFTEST FAIL and 2 when the model could not be set up.
int ts_run_selftest(uint8_t* arena, size_t arena_bytes);

#endif  // TINYSCALE_RUNNER_H_
