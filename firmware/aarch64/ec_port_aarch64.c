/*
 * ec_port_aarch64.c - the harness port for bare-metal AArch64 (Cortex-A53/A72 at EL1, QEMU virt or
 * a board): PL011 UART, the PMU cycle counter, stack painting, semihosting exit and fault reporting.
 * C start-up (stack, .data/.bss, FP/NEON enable) is picolibc's crt0; the MMU stays off.
 *
 * Timing: PMCCNTR_EL0, 64-bit. QEMU's PMU counts 1 cycle per ns of virtual time (1 GHz), and under
 * `-icount shift=0` one instruction takes 1 ns: cycles = instructions executed, exactly. On a board
 * it counts core cycles.
 */
#include <stdint.h>
#include <stdlib.h>

#include "ec_port.h"
#include "ec_proto.h"
#include "ec_target.h"

#define REG(addr) (*(volatile uint32_t *)(uintptr_t)(addr))
/* PL011: data, flags (TXFF bit 5, RXFE bit 4), integer/fractional baud divisors, line and control. */
#define UART_DR REG(EC_UART_BASE + 0x00u)
#define UART_FR REG(EC_UART_BASE + 0x18u)
#define UART_IBRD REG(EC_UART_BASE + 0x24u)
#define UART_FBRD REG(EC_UART_BASE + 0x28u)
#define UART_LCRH REG(EC_UART_BASE + 0x2Cu)
#define UART_CR REG(EC_UART_BASE + 0x30u)
#define UART_FR_RXFE (1u << 4)
#define UART_FR_TXFF (1u << 5)

#define EC_STACK_PAINT 0xC5C5C5C5u

extern uint32_t __heap_end[]; /* picolibc.ld: the stack region is [__heap_end, __stack) */
extern uint32_t __stack[];
extern const uint8_t ec_vectors[];

void ec_port_init(void)
{
  /* Faults are reported over the UART (ec_fault_report) instead of looping at address 0. */
  __asm__ volatile("msr vbar_el1, %0; isb" : : "r"(ec_vectors));
  /* 8N1, FIFOs on; the divisors matter on a board (UARTCLK / (16 * baud)), QEMU ignores them. */
  uint32_t div64 = (uint32_t)((4ull * EC_UART_CLOCK_HZ + EC_UART_BAUD / 2u) / EC_UART_BAUD);
  UART_CR = 0u;
  UART_IBRD = div64 >> 6;
  UART_FBRD = div64 & 0x3Fu;
  UART_LCRH = (3u << 5) | (1u << 4);
  UART_CR = (1u << 0) | (1u << 8) | (1u << 9); /* UARTEN, TXE, RXE */
}

int ec_port_getc(void)
{
  while (UART_FR & UART_FR_RXFE) {
  }
  return (int)(UART_DR & 0xFFu);
}

void ec_port_write(const uint8_t *data, uint32_t len)
{
  for (uint32_t i = 0; i < len; ++i) {
    while (UART_FR & UART_FR_TXFF) {
    }
    UART_DR = data[i];
  }
}

static inline uint64_t ec_cycles(void)
{
  uint64_t v;
  __asm__ volatile("isb; mrs %0, pmccntr_el0" : "=r"(v));
  return v;
}

static uint64_t ec_t0;

void ec_port_timer_start(void)
{
  uint64_t pmcr;
  __asm__ volatile("mrs %0, pmcr_el0" : "=r"(pmcr));
  __asm__ volatile("msr pmcr_el0, %0" : : "r"(pmcr | 1u)); /* E: counters on */
  __asm__ volatile("msr pmccfiltr_el0, %0" : : "r"(0ull)); /* count at EL1 too */
  __asm__ volatile("msr pmcntenset_el0, %0" : : "r"(1ull << 31));
  ec_t0 = ec_cycles();
}

uint64_t ec_port_ticks(void)
{
  return ec_cycles() - ec_t0;
}

uint32_t ec_port_timer_kind(void)
{
  return EC_TIMER_SYSTICK; /* a clock of EC_CLOCK_HZ ticks: instructions = ticks * 1e9 / clock */
}

uint32_t ec_port_clock_hz(void)
{
  return EC_CLOCK_HZ;
}

uintptr_t ec_port_stack_paint(void)
{
  uintptr_t sp;
  __asm__ volatile("mov %0, sp" : "=r"(sp));
  for (volatile uint32_t *p = __heap_end; (uintptr_t)p < sp - 64u; ++p) {
    *p = EC_STACK_PAINT;
  }
  return sp;
}

uint32_t ec_port_stack_used(uintptr_t sp)
{
  const volatile uint32_t *p = __heap_end;
  while ((uintptr_t)p < sp && *p == EC_STACK_PAINT) {
    ++p;
  }
  return (uint32_t)(sp - (uintptr_t)p);
}

uint32_t ec_port_stack_size(void)
{
  return (uint32_t)((uintptr_t)__stack - (uintptr_t)__heap_end);
}

void ec_port_exit(int code)
{
  exit(code); /* picolibc's semihosting exit: QEMU ends with this status */
}

/* Fault payload, in the Cortex-M layout the host decodes: kind 0x100 | ESR_EL1.EC, then lr (x30),
 * pc (ELR_EL1) and pstate (SPSR_EL1) in their slots, ESR_EL1 in the CFSR slot, FAR_EL1 split over
 * MMFAR (low half) and BFAR (high half). */
void ec_fault_report(uint64_t lr);

void ec_fault_report(uint64_t lr)
{
  uint64_t esr, elr, far, spsr;
  __asm__ volatile("mrs %0, esr_el1" : "=r"(esr));
  __asm__ volatile("mrs %0, elr_el1" : "=r"(elr));
  __asm__ volatile("mrs %0, far_el1" : "=r"(far));
  __asm__ volatile("mrs %0, spsr_el1" : "=r"(spsr));
  uint8_t p[4 + 12 * 4] = {0};
  ec_put_u32(p, 0x100u | (uint32_t)((esr >> 26) & 0x3Fu));
  ec_put_u32(p + 4 + 5 * 4, (uint32_t)lr);
  ec_put_u32(p + 4 + 6 * 4, (uint32_t)elr);
  ec_put_u32(p + 4 + 7 * 4, (uint32_t)spsr);
  ec_put_u32(p + 36, (uint32_t)esr);
  ec_put_u32(p + 44, (uint32_t)far);
  ec_put_u32(p + 48, (uint32_t)(far >> 32));
  ec_send_frame(EC_FAULT, 0, p, sizeof p);
  ec_port_exit(0x80 | (int)((esr >> 26) & 0x3Fu));
}

/* The exception vector table: 16 entries of 128 bytes, 2 KiB aligned; every exception (only
 * synchronous ones are expected: interrupts stay masked) reports itself. */
__asm__(".section .text.ec_vectors, \"ax\"\n"
        ".balign 2048\n"
        ".global ec_vectors\n"
        "ec_vectors:\n"
        ".rept 16\n"
        "  mov x0, x30\n"
        "  b ec_fault_report\n"
        "  .balign 128\n"
        ".endr\n"
        ".text\n");
