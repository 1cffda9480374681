/*
 * startup.c - vector table and reset handler for Armv7-M / Armv8-M cores (no vendor SDK).
 */
#include <stdint.h>
#include <string.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _stack_top;
extern int main(void);
void Reset_Handler(void);
void SysTick_Handler(void);
void ec_fault_entry(void);

static void ec_default_handler(void)
{
  for (;;) {
  }
}

__attribute__((section(".vectors"), used)) void (*const ec_vectors[16 + 32])(void) = {
  (void (*)(void))(uintptr_t)&_stack_top,
  Reset_Handler,
  ec_default_handler, /* NMI */
  ec_fault_entry,     /* HardFault */
  ec_fault_entry,     /* MemManage */
  ec_fault_entry,     /* BusFault */
  ec_fault_entry,     /* UsageFault */
  ec_fault_entry,     /* SecureFault (v8-M) */
  0, 0, 0,
  ec_default_handler, /* SVCall */
  ec_default_handler, /* DebugMon */
  0,
  ec_default_handler, /* PendSV */
  SysTick_Handler,
};

void Reset_Handler(void)
{
  memcpy(&_sdata, &_sidata, (size_t)((uint8_t *)&_edata - (uint8_t *)&_sdata));
  memset(&_sbss, 0, (size_t)((uint8_t *)&_ebss - (uint8_t *)&_sbss));
#if defined(__ARM_FP)
  /* CP10/CP11 full access: without it the first FP instruction is a NOCP UsageFault. */
  *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
  __asm volatile("dsb\n isb" ::: "memory");
#endif
  /* Trap divide-by-zero and report MemManage/BusFault/UsageFault separately from HardFault. */
  *(volatile uint32_t *)0xE000ED14u |= 1u << 4;                             /* CCR.DIV_0_TRP */
  *(volatile uint32_t *)0xE000ED24u |= (1u << 16) | (1u << 17) | (1u << 18); /* SHCSR enables */
  main();
  for (;;) {
  }
}
