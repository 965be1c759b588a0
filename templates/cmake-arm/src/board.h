// Board glue of the bare-metal (cmake-arm) projects: clocks, console, exit.
#ifndef TS_BOARD_H_
#define TS_BOARD_H_

#ifdef __cplusplus
extern "C" {
#endif

// Starts the microsecond timer and the console.
void board_init(void);

// Reports the self-test status (0 = pass) and never returns: semihosting
// boards end the emulator, UART boards sleep.
void board_exit(int status) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif  // TS_BOARD_H_
