/*
 * ec_port.h - what the serial harness needs from a platform (cortex-m/ or host/).
 */
#ifndef EC_PORT_H
#define EC_PORT_H

#include <stdint.h>

/* Timer kinds reported to the host in INFO. */
#define EC_TIMER_NONE 0u    /* host: no cycle counter */
#define EC_TIMER_SYSTICK 1u /* SysTick ticks of the core clock (QEMU: exact under -icount) */
#define EC_TIMER_DWT 2u     /* DWT CYCCNT core cycles (real boards) */

void ec_port_init(void);
/* Blocking read of one byte; -1 when the link is closed (host only). */
int ec_port_getc(void);
void ec_port_write(const uint8_t *data, uint32_t len);
/* Monotonic timer ticks since ec_port_timer_start(). */
void ec_port_timer_start(void);
uint64_t ec_port_ticks(void);
uint32_t ec_port_timer_kind(void);
uint32_t ec_port_clock_hz(void);
/* Fill the unused stack with a pattern; returns the stack pointer at the call. */
uintptr_t ec_port_stack_paint(void);
/* Deepest stack use below `sp` since the paint, in bytes (0xFFFFFFFF if unknown). */
uint32_t ec_port_stack_used(uintptr_t sp);
uint32_t ec_port_stack_size(void);
/* Leave the harness: QEMU exits with `code` (semihosting), the host process exits. */
void ec_port_exit(int code);

#endif /* EC_PORT_H */
