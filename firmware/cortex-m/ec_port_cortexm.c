/*
 * ec_port_cortexm.c - the harness port for Cortex-M: UART (CMSDK or STM32 USART, chosen by the
 * target's uart.driver), SysTick timer, stack painting,
 * semihosting exit and fault reporting.
 *
 * Timing: SysTick counts core clock ticks (24-bit, wraps counted in its interrupt). Under
 * `qemu -icount shift=0` one instruction takes 1 ns, so instructions = ticks * 1e9 / EC_CLOCK_HZ,
 * exact to one tick (40 instructions at 25 MHz).
 */
#include <stdint.h>

#include "ec_port.h"
#include "ec_proto.h"
#include "ec_target.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#if defined(EC_UART_STM32)
/* STM32 USART (F1/F2/F4 register layout): SR, DR, BRR, CR1. */
#define USART_SR REG(EC_UART_BASE + 0x00u)
#define USART_DR REG(EC_UART_BASE + 0x04u)
#define USART_BRR REG(EC_UART_BASE + 0x08u)
#define USART_CR1 REG(EC_UART_BASE + 0x0Cu)
#define USART_SR_RXNE (1u << 5)
#define USART_SR_TXE (1u << 7)
#define USART_SR_ORE (1u << 3)
#define USART_CR1_UE (1u << 13)
#define USART_CR1_TE (1u << 3)
#define USART_CR1_RE (1u << 2)

static void ec_uart_init(void)
{
  USART_BRR = (EC_UART_CLOCK_HZ + EC_UART_BAUD / 2u) / EC_UART_BAUD; /* 16x oversampling */
  USART_CR1 = USART_CR1_UE | USART_CR1_TE | USART_CR1_RE;
}

static int ec_uart_getc(void)
{
  uint32_t sr;
  while (((sr = USART_SR) & (USART_SR_RXNE | USART_SR_ORE)) == 0u) {
  }
  return (int)(USART_DR & 0xFFu); /* reading DR also clears an overrun: the protocol resyncs */
}

static void ec_uart_putc(uint8_t c)
{
  while ((USART_SR & USART_SR_TXE) == 0u) {
  }
  USART_DR = c;
}
#else
/* CMSDK APB UART (Arm MPS2/MPS3 boards) */
#define UART_DATA REG(EC_UART_BASE + 0x00u)
#define UART_STATE REG(EC_UART_BASE + 0x04u)
#define UART_CTRL REG(EC_UART_BASE + 0x08u)
#define UART_BAUDDIV REG(EC_UART_BASE + 0x10u)

static void ec_uart_init(void)
{
  UART_BAUDDIV = EC_UART_CLOCK_HZ / EC_UART_BAUD;
  UART_CTRL = 3u; /* TX and RX enable */
}

static int ec_uart_getc(void)
{
  while ((UART_STATE & 2u) == 0u) {
  }
  return (int)(UART_DATA & 0xFFu);
}

static void ec_uart_putc(uint8_t c)
{
  while (UART_STATE & 1u) {
  }
  UART_DATA = c;
}
#endif

/* SysTick */
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SYST_RELOAD 0x00FFFFFFu

extern uint32_t _stack_bottom, _stack_top;
#define EC_STACK_PATTERN 0xC5C5C5C5u

static volatile uint32_t ec_systick_wraps;

void SysTick_Handler(void) { ec_systick_wraps++; }

void ec_port_init(void)
{
  ec_uart_init();
  SYST_RVR = SYST_RELOAD;
  SYST_CVR = 0u;
  SYST_CSR = 7u; /* processor clock, interrupt, enable */
}

int ec_port_getc(void) { return ec_uart_getc(); }

void ec_port_write(const uint8_t *data, uint32_t len)
{
  for (uint32_t i = 0; i < len; ++i) {
    ec_uart_putc(data[i]);
  }
}

void ec_port_timer_start(void)
{
  SYST_CSR = 0u;
  ec_systick_wraps = 0u;
  SYST_CVR = 0u; /* fixes the tick phase: the counter reloads on the next tick */
  SYST_CSR = 7u;
}

uint64_t ec_port_ticks(void)
{
  uint32_t wraps, cvr;
  do {
    wraps = ec_systick_wraps;
    cvr = SYST_CVR;
  } while (wraps != ec_systick_wraps);
  /* After the CVR write the counter reads 0 until its first reload; count that tick as 1. */
  uint32_t in_period = cvr == 0u ? 0u : (SYST_RELOAD - cvr) + 1u;
  return (uint64_t)wraps * (SYST_RELOAD + 1u) + in_period;
}

uint32_t ec_port_timer_kind(void) { return EC_TIMER_SYSTICK; }

uint32_t ec_port_clock_hz(void) { return EC_CLOCK_HZ; }

static inline uintptr_t ec_sp(void)
{
  uintptr_t sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  return sp;
}

uintptr_t ec_port_stack_paint(void)
{
  uintptr_t sp = ec_sp();
  for (volatile uint32_t *p = &_stack_bottom; (uintptr_t)p < sp - 64u; ++p) {
    *p = EC_STACK_PATTERN;
  }
  return sp;
}

uint32_t ec_port_stack_used(uintptr_t sp)
{
  const volatile uint32_t *p = &_stack_bottom;
  while ((uintptr_t)p < sp && *p == EC_STACK_PATTERN) {
    ++p;
  }
  return (uint32_t)(sp - (uintptr_t)p);
}

uint32_t ec_port_stack_size(void) { return (uint32_t)((uintptr_t)&_stack_top - (uintptr_t)&_stack_bottom); }

void ec_port_exit(int code)
{
#if EC_SEMIHOSTING
  /* SYS_EXIT_EXTENDED (0x20) with ADP_Stopped_ApplicationExit: QEMU exits with `code`. */
  uint32_t block[2] = { 0x20026u, (uint32_t)code };
  register uint32_t r0 __asm("r0") = 0x20u;
  register uint32_t *r1 __asm("r1") = block;
  __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
#else
  (void)code;
#endif
  for (;;) {
  }
}

/* Fault frame payload: kind, then r0-r3, r12, lr, pc, xpsr, CFSR, HFSR, MMFAR, BFAR. */
void ec_fault_report(const uint32_t *frame, uint32_t exc_return);

void ec_fault_report(const uint32_t *frame, uint32_t exc_return)
{
  uint8_t p[4 + 12 * 4];
  uint32_t ipsr;
  __asm volatile("mrs %0, ipsr" : "=r"(ipsr));
  ec_put_u32(p, ipsr & 0x1FFu);
  for (int i = 0; i < 8; ++i) {
    ec_put_u32(p + 4 + 4 * i, frame[i]);
  }
  ec_put_u32(p + 36, REG(0xE000ED28u)); /* CFSR */
  ec_put_u32(p + 40, REG(0xE000ED2Cu)); /* HFSR */
  ec_put_u32(p + 44, REG(0xE000ED34u)); /* MMFAR */
  ec_put_u32(p + 48, REG(0xE000ED38u)); /* BFAR */
  (void)exc_return;
  ec_send_frame(EC_FAULT, 0, p, sizeof p);
  ec_port_exit(0x80 | (int)(ipsr & 0x7Fu));
}

/* Pick the stack the fault frame was pushed on, then report from C. */
__attribute__((naked)) void ec_fault_entry(void)
{
  __asm volatile("tst lr, #4\n"
                 "ite eq\n"
                 "mrseq r0, msp\n"
                 "mrsne r0, psp\n"
                 "mov r1, lr\n"
                 "ldr r2, =ec_fault_report\n"
                 "bx r2\n");
}
