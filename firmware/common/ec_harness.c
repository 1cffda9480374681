/*
 * ec_harness.c - the serial harness: receives inputs, runs the model, returns outputs and stats.
 * The same code runs on a board, in QEMU and on the host; ec_port_*.c adapt it.
 */
#include <stdint.h>
#include <string.h>

#include "ec_api.h" /* the model's API, as model_... whatever its --name */
#include "ec_port.h"
#include "ec_proto.h"

/* Inputs and outputs live in the model's arena (model_input/model_output): no copies here. */
#if MODEL_ARENA_CALLER
static uint8_t ec_model_arena[MODEL_ARENA_BYTES] EC_ARENA_ATTRIBUTES; /* a model built to use its caller's */
#endif
static uint8_t ec_rx[EC_MAX_PAYLOAD];
static uint8_t ec_tx[EC_MAX_PAYLOAD];

/* Result of the last INVOKE or STEP, resent as is if the host repeats that frame (a lost reply):
 * running it again could read a buffer the first run overwrote. */
static uint8_t ec_invoke_reply[1 + 4 + 8 + 4];

#if MODEL_INTEGRITY
/* The weights check: run at boot, before anything else, and again on VERIFY. While it fails the
 * harness refuses to infer or to return outputs. */
static int ec_weights_ok;
static int ec_verify_rc; /* model_verify's: -1 weights changed, -2 no model region, -3 region for other code */
static uint8_t ec_weights_digest[32];
static uint64_t ec_verify_ticks;

static void ec_verify(void)
{
  ec_port_timer_start();
  ec_verify_rc = model_verify(ec_weights_digest);
  ec_verify_ticks = ec_port_ticks();
  ec_weights_ok = ec_verify_rc == 0;
}
#define EC_WEIGHTS_OK ec_weights_ok
#else
#define EC_WEIGHTS_OK 1
#endif

static void ec_invoke(void)
{
  uintptr_t sp = ec_port_stack_paint();
  ec_port_timer_start();
  int rc = model_invoke();
  uint64_t ticks = ec_port_ticks();
  uint32_t stack = ec_port_stack_used(sp);
  ec_invoke_reply[0] = rc == 0 ? EC_OK : EC_ERR_MODEL;
  ec_put_u32(ec_invoke_reply + 1, (uint32_t)rc);
  ec_put_u32(ec_invoke_reply + 5, (uint32_t)ticks);
  ec_put_u32(ec_invoke_reply + 9, (uint32_t)(ticks >> 32));
  ec_put_u32(ec_invoke_reply + 13, stack);
}

/* One step of the model alone (validate): u8 status, i32 rc, u64 ticks. */
static void ec_step(uint32_t step)
{
  ec_port_timer_start();
  int rc = model_step(step);
  uint64_t ticks = ec_port_ticks();
  ec_invoke_reply[0] = rc == 0 ? EC_OK : (rc == 1 ? EC_ERR_ARGS : EC_ERR_MODEL);
  ec_put_u32(ec_invoke_reply + 1, (uint32_t)rc);
  ec_put_u32(ec_invoke_reply + 5, (uint32_t)ticks);
  ec_put_u32(ec_invoke_reply + 9, (uint32_t)(ticks >> 32));
  ec_put_u32(ec_invoke_reply + 13, 0);
}

/* As variables: a model may have no inputs, and `i < 0u` is a -Wtype-limits warning. */
static const uint32_t ec_num_inputs = MODEL_NUM_INPUTS;
static const uint32_t ec_num_outputs = MODEL_NUM_OUTPUTS;

static uint32_t ec_info(uint8_t *p)
{
  p[0] = EC_OK;
  p[1] = EC_PROTO_VERSION;
  p[2] = MODEL_NUM_INPUTS;
  p[3] = MODEL_NUM_OUTPUTS;
  p[4] = (uint8_t)ec_port_timer_kind();
  /* flags: bit 0 = per-step ticks available, bit 1 = weights checked at boot, bit 2 = that check failed */
  p[5] = (uint8_t)((MODEL_PER_LAYER ? 1u : 0u) | (MODEL_INTEGRITY ? 2u : 0u) | (EC_WEIGHTS_OK ? 0u : 4u));
  ec_put_u16(p + 6, EC_MAX_PAYLOAD);
  ec_put_u32(p + 8, ec_port_clock_hz());
  ec_put_u32(p + 12, MODEL_ARENA_BYTES);
  ec_put_u32(p + 16, ec_port_stack_size());
  ec_put_u32(p + 20, MODEL_NUM_STEPS);
  uint32_t n = 24;
  for (uint32_t i = 0; i < ec_num_inputs && n + 4 <= EC_MAX_PAYLOAD; ++i, n += 4) {
    ec_put_u32(p + n, model_inputs[i].bytes);
  }
  for (uint32_t i = 0; i < ec_num_outputs && n + 4 <= EC_MAX_PAYLOAD; ++i, n += 4) {
    ec_put_u32(p + n, model_outputs[i].bytes);
  }
  return n;
}

/* Check a (tensor index, offset, length) request against the tensor's size. */
static uint8_t ec_io_range(const model_tensor_info *infos, uint32_t count, const uint8_t *args,
                           uint32_t len)
{
  uint32_t index = args[0];
  uint32_t offset = ec_get_u32(args + 1);
  if (index >= count || offset > infos[index].bytes || len > infos[index].bytes - offset) {
    return EC_ERR_ARGS;
  }
  return EC_OK;
}

int main(void)
{
  ec_port_init();
#if MODEL_ARENA_CALLER
  (void)model_init(ec_model_arena, sizeof ec_model_arena); /* cannot fail: the size and alignment are its own */
#endif
#if MODEL_INTEGRITY
  ec_verify();
#endif
  static const char banner[] = "\r\nedgecomp harness ready\r\n";
  ec_port_write((const uint8_t *)banner, sizeof banner - 1);
  int last_seq = -1;
  for (;;) {
    uint8_t type, seq;
    int len = ec_recv_frame(&type, &seq, ec_rx);
    if (len < 0) {
      ec_port_exit(0); /* link closed (host) */
      return 0;
    }
    uint32_t n = 1;
    ec_tx[0] = EC_OK;
    switch (type) {
    case EC_CMD_INFO:
      n = ec_info(ec_tx);
      break;
    case EC_CMD_WRITE_INPUT:
      if (len < 5) {
        ec_tx[0] = EC_ERR_ARGS;
      } else {
        ec_tx[0] = ec_io_range(model_inputs, MODEL_NUM_INPUTS, ec_rx, (uint32_t)len - 5);
        if (ec_tx[0] == EC_OK) {
          memcpy((uint8_t *)model_input(ec_rx[0]) + ec_get_u32(ec_rx + 1), ec_rx + 5, (uint32_t)len - 5);
        }
      }
      break;
    case EC_CMD_INVOKE:
      if (!EC_WEIGHTS_OK) {
        ec_tx[0] = EC_ERR_INTEGRITY;
        break;
      }
      if ((int)seq != last_seq) {
        ec_invoke();
      }
      memcpy(ec_tx, ec_invoke_reply, sizeof ec_invoke_reply);
      n = sizeof ec_invoke_reply;
      break;
    case EC_CMD_STEP: /* u16 step -> as INVOKE's reply */
      if (!EC_WEIGHTS_OK) {
        ec_tx[0] = EC_ERR_INTEGRITY;
        break;
      }
      if (len < 2) {
        ec_tx[0] = EC_ERR_ARGS;
        break;
      }
      if ((int)seq != last_seq) {
        ec_step(ec_get_u16(ec_rx));
      }
      memcpy(ec_tx, ec_invoke_reply, sizeof ec_invoke_reply);
      n = sizeof ec_invoke_reply;
      break;
    case EC_CMD_READ_ARENA: { /* u32 offset, u16 length -> bytes of the arena */
      uint32_t offset = len >= 6 ? ec_get_u32(ec_rx) : 0;
      uint32_t want = len >= 6 ? ec_get_u16(ec_rx + 4) : 0;
      if (!EC_WEIGHTS_OK) {
        ec_tx[0] = EC_ERR_INTEGRITY;
      } else if (len < 6 || want >= EC_MAX_PAYLOAD || offset > MODEL_ARENA_BYTES || want > MODEL_ARENA_BYTES - offset) {
        ec_tx[0] = EC_ERR_ARGS;
      } else {
        memcpy(ec_tx + 1, (const uint8_t *)model_arena() + offset, want);
        n = 1 + want;
      }
      break;
    }
#if MODEL_INTEGRITY
    case EC_CMD_VERIFY: /* -> u8 ok, u64 ticks of the check, expected digest, computed digest, u8 reason */
      ec_verify();
      ec_tx[1] = (uint8_t)ec_weights_ok;
      ec_put_u32(ec_tx + 2, (uint32_t)ec_verify_ticks);
      ec_put_u32(ec_tx + 6, (uint32_t)(ec_verify_ticks >> 32));
      memcpy(ec_tx + 10, MODEL_EXPECTED_SHA256, 32);
      memcpy(ec_tx + 42, ec_weights_digest, 32);
      ec_tx[74] = (uint8_t)(-ec_verify_rc);
      n = 75;
      break;
#endif
    case EC_CMD_READ_OUTPUT: {
      uint32_t want = len >= 7 ? ec_get_u16(ec_rx + 5) : 0;
      if (!EC_WEIGHTS_OK) {
        ec_tx[0] = EC_ERR_INTEGRITY;
      } else if (len < 7 || want >= EC_MAX_PAYLOAD) {
        ec_tx[0] = EC_ERR_ARGS;
      } else {
        ec_tx[0] = ec_io_range(model_outputs, MODEL_NUM_OUTPUTS, ec_rx, want);
        if (ec_tx[0] == EC_OK) {
          memcpy(ec_tx + 1, (const uint8_t *)model_output(ec_rx[0]) + ec_get_u32(ec_rx + 1), want);
          n = 1 + want;
        }
      }
      break;
    }
#if MODEL_PER_LAYER
    case EC_CMD_STEP_TICKS: { /* u16 first step -> u32 ticks of as many steps as fit */
      uint32_t first = len >= 2 ? ec_get_u16(ec_rx) : MODEL_NUM_STEPS;
      if (first >= MODEL_NUM_STEPS) {
        ec_tx[0] = EC_ERR_ARGS;
        break;
      }
      for (uint32_t i = first; i < MODEL_NUM_STEPS && n + 4 <= EC_MAX_PAYLOAD; ++i, n += 4) {
        ec_put_u32(ec_tx + n, model_step_ticks[i]);
      }
      break;
    }
#endif
    case EC_CMD_EXIT:
      ec_send_frame((uint8_t)(type | EC_RESP), seq, ec_tx, 1);
      ec_port_exit(len >= 1 ? ec_rx[0] : 0);
      return 0;
#ifdef EC_TEST_HOOKS
    case 0x7F: /* tests only: an undefined instruction, to check that faults are reported */
      __builtin_trap();
      break;
#endif
    default:
      ec_tx[0] = EC_ERR_COMMAND;
      break;
    }
    last_seq = seq;
    ec_send_frame((uint8_t)(type | EC_RESP), seq, ec_tx, n);
  }
}
