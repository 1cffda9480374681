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
#elif defined(EC_UART_STM32V2)
/* STM32 USART/LPUART, F7/H7/L4/U5 register layout: CR1, BRR, ISR, ICR, RDR, TDR. */
#define USART_CR1 REG(EC_UART_BASE + 0x00u)
#define USART_BRR REG(EC_UART_BASE + 0x0Cu)
#define USART_ISR REG(EC_UART_BASE + 0x1Cu)
#define USART_ICR REG(EC_UART_BASE + 0x20u)
#define USART_RDR REG(EC_UART_BASE + 0x24u)
#define USART_TDR REG(EC_UART_BASE + 0x28u)
#define USART_ISR_ORE (1u << 3)
#define USART_ISR_RXNE (1u << 5)
#define USART_ISR_TXE (1u << 7)

static void ec_uart_init(void)
{
  /* USART: BRR = f / baud (16x oversampling); LPUART: 256 f / baud (EC_UART_BRR_SCALE). */
  USART_BRR = (uint32_t)(((uint64_t)EC_UART_BRR_SCALE * EC_UART_CLOCK_HZ + EC_UART_BAUD / 2u) / EC_UART_BAUD);
  USART_CR1 = (1u << 0) | (1u << 2) | (1u << 3); /* UE, RE, TE */
}

static int ec_uart_getc(void)
{
  for (;;) {
    uint32_t isr = USART_ISR;
    if (isr & USART_ISR_RXNE) {
      return (int)(USART_RDR & 0xFFu);
    }
    if (isr & USART_ISR_ORE) {
      USART_ICR = USART_ISR_ORE; /* a lost byte: the protocol's CRC and retries recover */
    }
  }
}

static void ec_uart_putc(uint8_t c)
{
  while ((USART_ISR & USART_ISR_TXE) == 0u) {
  }
  USART_TDR = c;
}
#elif defined(EC_UART_PL011)
/* Arm PL011 (RP2040 UART0/1): DR, FR, IBRD, FBRD, LCR_H, CR. */
#define PL011_DR REG(EC_UART_BASE + 0x00u)
#define PL011_FR REG(EC_UART_BASE + 0x18u)
#define PL011_IBRD REG(EC_UART_BASE + 0x24u)
#define PL011_FBRD REG(EC_UART_BASE + 0x28u)
#define PL011_LCRH REG(EC_UART_BASE + 0x2Cu)
#define PL011_CR REG(EC_UART_BASE + 0x30u)

static void ec_uart_init(void)
{
  const uint32_t div64 = (uint32_t)((4ull * EC_UART_CLOCK_HZ + EC_UART_BAUD / 2u) / EC_UART_BAUD); /* 64 x f/(16 baud) */
  PL011_IBRD = div64 >> 6;
  PL011_FBRD = div64 & 0x3Fu;
  PL011_LCRH = 0x70u; /* 8 bits, FIFOs on (also latches the divisors) */
  PL011_CR = 0x301u;  /* UARTEN, TXE, RXE */
}

static int ec_uart_getc(void)
{
  while (PL011_FR & (1u << 4)) { /* RXFE */
  }
  return (int)(PL011_DR & 0xFFu);
}

static void ec_uart_putc(uint8_t c)
{
  while (PL011_FR & (1u << 5)) { /* TXFF */
  }
  PL011_DR = c;
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

static void ec_dwt_poll(void);

void SysTick_Handler(void)
{
  ec_systick_wraps++;
  ec_dwt_poll();
}

/* Board start-up as data: the target file's [[init]] register operations (clocks to full speed,
 * flash wait states, peripheral clocks and pins of the console UART), run in order. */
#if EC_INIT_OPS
static const ec_reg_op ec_init_ops[EC_INIT_OPS] = EC_INIT_TABLE;

static void ec_board_init(void)
{
  for (uint32_t i = 0; i < EC_INIT_OPS; ++i) {
    const ec_reg_op *op = &ec_init_ops[i];
    volatile uint32_t *reg = (volatile uint32_t *)op->addr;
    switch (op->kind) {
    case EC_OP_WRITE:
      *reg = op->value;
      break;
    case EC_OP_MODIFY:
      *reg = (*reg & ~op->mask) | op->value;
      break;
    case EC_OP_DELAY:
      for (volatile uint32_t n = 0; n < op->value; ++n) {
      }
      break;
    default: /* EC_OP_WAIT: bounded, so a missing clock shows as a silent UART, never a hang here */
      for (uint32_t n = 0; n < EC_INIT_WAIT_LIMIT && (*reg & op->mask) != op->value; ++n) {
      }
      break;
    }
  }
}
#endif

#if EC_CACHES
/* Cortex-M7 instruction and data caches on, invalidated first (Arm's CMSIS sequence). */
static void ec_enable_caches(void)
{
  __asm volatile("dsb 0xF\n isb 0xF" ::: "memory");
  REG(0xE000EF50u) = 0u; /* ICIALLU */
  __asm volatile("dsb 0xF\n isb 0xF" ::: "memory");
  REG(0xE000ED14u) |= 1u << 17; /* CCR.IC */
  REG(0xE000ED84u) = 0u;        /* CSSELR: level 1 data cache */
  __asm volatile("dsb 0xF" ::: "memory");
  const uint32_t ccsidr = REG(0xE000ED80u);
  for (uint32_t set = (ccsidr >> 13) & 0x7FFFu;; --set) {
    for (uint32_t way = (ccsidr >> 3) & 0x3FFu;; --way) {
      REG(0xE000EF60u) = ((set << 5) & 0x3FE0u) | (way << 30); /* DCISW */
      if (way == 0u) {
        break;
      }
    }
    if (set == 0u) {
      break;
    }
  }
  __asm volatile("dsb 0xF" ::: "memory");
  REG(0xE000ED14u) |= 1u << 16; /* CCR.DC */
  __asm volatile("dsb 0xF\n isb 0xF" ::: "memory");
}
#endif

void ec_port_init(void)
{
#if EC_INIT_OPS
  ec_board_init();
#endif
#if EC_CACHES
  ec_enable_caches();
#endif
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

#if EC_TIMER_KIND == EC_TIMER_DWT
/* DWT CYCCNT: exact core cycles on a board; 32 bits, extended to 64 by noticing each wrap in the
 * SysTick interrupt (which fires every 2^24 cycles, far more often than CYCCNT wraps). */
#define DEMCR REG(0xE000EDFCu)
#define DWT_CTRL REG(0xE0001000u)
#define DWT_CYCCNT REG(0xE0001004u)
#define DWT_LAR REG(0xE0001FB0u)
static volatile uint32_t ec_dwt_high, ec_dwt_last;

static void ec_dwt_poll(void)
{
  const uint32_t now = DWT_CYCCNT;
  if (now < ec_dwt_last) {
    ec_dwt_high++;
  }
  ec_dwt_last = now;
}

void ec_port_timer_start(void)
{
  DEMCR |= 1u << 24;   /* TRCENA */
  DWT_LAR = 0xC5ACCE55u; /* unlock (Cortex-M7) */
  DWT_CTRL &= ~1u;
  DWT_CYCCNT = 0u;
  ec_dwt_high = 0u;
  ec_dwt_last = 0u;
  DWT_CTRL |= 1u; /* CYCCNTENA */
}

uint64_t ec_port_ticks(void)
{
  uint32_t high, low;
  do {
    high = ec_dwt_high;
    low = DWT_CYCCNT;
  } while (high != ec_dwt_high);
  if (low < ec_dwt_last) { /* wrapped since the last poll */
    high++;
  }
  return ((uint64_t)high << 32) | low;
}

uint32_t ec_port_timer_kind(void) { return EC_TIMER_DWT; }
#else
static void ec_dwt_poll(void) {}

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
#endif

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
#if defined(__ARM_ARCH_6M__)
  /* ARMv6-M has no fault status registers (reading their addresses would fault again). */
  for (int i = 36; i < 52; i += 4) {
    ec_put_u32(p + i, 0u);
  }
#else
  ec_put_u32(p + 36, REG(0xE000ED28u)); /* CFSR */
  ec_put_u32(p + 40, REG(0xE000ED2Cu)); /* HFSR */
  ec_put_u32(p + 44, REG(0xE000ED34u)); /* MMFAR */
  ec_put_u32(p + 48, REG(0xE000ED38u)); /* BFAR */
#endif
  (void)exc_return;
  ec_send_frame(EC_FAULT, 0, p, sizeof p);
  ec_port_exit(0x80 | (int)(ipsr & 0x7Fu));
}

/* Pick the stack the fault frame was pushed on, then report from C. */
__attribute__((naked)) void ec_fault_entry(void)
{
#if defined(__ARM_ARCH_6M__)
  /* ARMv6-M (Cortex-M0/M0+): no IT blocks and no tst with an immediate. */
  __asm volatile("movs r0, #4\n"
                 "mov r1, lr\n"
                 "tst r0, r1\n"
                 "beq 1f\n"
                 "mrs r0, psp\n"
                 "b 2f\n"
                 "1: mrs r0, msp\n"
                 "2: ldr r2, =ec_fault_report\n"
                 "bx r2\n");
#else
  __asm volatile("tst lr, #4\n"
                 "ite eq\n"
                 "mrseq r0, msp\n"
                 "mrsne r0, psp\n"
                 "mov r1, lr\n"
                 "ldr r2, =ec_fault_report\n"
                 "bx r2\n");
#endif
}
