/*
 * ec_port_host.c - the harness on the host: the protocol runs over stdin/stdout, so the host
 * build is checked through exactly the code path a board uses.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "ec_port.h"

static uint8_t ec_rbuf[4096];
static ssize_t ec_rlen, ec_rpos;

void ec_port_init(void) {}

int ec_port_getc(void)
{
  if (ec_rpos >= ec_rlen) {
    ec_rlen = read(0, ec_rbuf, sizeof ec_rbuf);
    ec_rpos = 0;
    if (ec_rlen <= 0) {
      return -1;
    }
  }
  return ec_rbuf[ec_rpos++];
}

void ec_port_write(const uint8_t *data, uint32_t len)
{
  while (len > 0) {
    ssize_t n = write(1, data, len);
    if (n <= 0) {
      exit(3);
    }
    data += n;
    len -= (uint32_t)n;
  }
}

static uint64_t ec_now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t ec_t0;

void ec_port_timer_start(void) { ec_t0 = ec_now_ns(); }

/* Nanoseconds of wall time: reported, but not an instruction count. */
uint64_t ec_port_ticks(void) { return ec_now_ns() - ec_t0; }

uint32_t ec_port_timer_kind(void) { return EC_TIMER_NONE; }

uint32_t ec_port_clock_hz(void) { return 1000000000u; }

uintptr_t ec_port_stack_paint(void) { return 0; }

uint32_t ec_port_stack_used(uintptr_t sp)
{
  (void)sp;
  return 0xFFFFFFFFu;
}

uint32_t ec_port_stack_size(void) { return 0; }

void ec_port_exit(int code) { exit(code); }
