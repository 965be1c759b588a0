// Hooks every board glue implements for the shared inference core.
// Kept in C so startup code and console drivers in C can implement them.
#ifndef TINYSCALE_PLATFORM_H_
#define TINYSCALE_PLATFORM_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Writes a NUL-terminated string to the board's console (UART, USB or semihosting).
void ts_console_write(const char* text);

// Microseconds from a monotonic clock; wraps after ~71 minutes, which is
// far longer than one inference.
uint32_t ts_time_us(void);

#ifdef __cplusplus
}
#endif

#endif  // TINYSCALE_PLATFORM_H_
