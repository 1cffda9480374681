/*
 * ec_mlperf.c - the MLPerf Tiny device-under-test protocol as a firmware main (edgecomp build
 * --harness mlperf): the text commands the benchmark's runner sends in direct-connection mode
 * (mlcommons/tiny benchmark/api and benchmark/runner), on the console UART through the same
 * ec_port_* functions as ec_harness.c. Written from the protocol's description, not from its code.
 *
 * A command ends with '%' (CR and LF are ignored); its words are separated by spaces. Every
 * answer ends with the line "m-ready". Lines end "\r\n":
 *   name               m-name-dut-[edgecomp]
 *   profile            m-profile-[ULPMark for tinyML Firmware V0.0.1]  m-model-[EC_MLPERF_MODEL]
 *   timestamp          m-lap-us-N: microseconds of the core's timer since boot (see below)
 *   db load N          m-[Expecting N bytes]: the next db commands fill N bytes of the input buffer
 *   db HEX...          two hex digits a byte; m-load-done once N bytes arrived
 *   db print           m-buffer-xx-xx-... eight bytes a line
 *   infer N [W=10]     m-warmup-start-W, W runs, m-warmup-done, m-infer-start-N, m-lap-us-T0,
 *                      N runs, m-lap-us-T1, m-infer-done, then the results line
 *   results            m-results-[v0,v1,...]: every output value, quantized ones dequantized
 *   help               the command list
 * Errors are lines "e-[...]". The db buffer holds the model's inputs one after the other, bytes
 * as the C API takes them (float32 for a float build, int8 for an integer one); every run copies
 * them into the model (a run reuses its inputs' memory), as the reference's th_load_tensor does.
 *
 * Timestamps: ec_port_ticks() since boot in microseconds of the core clock (ticks * 1e6 / clock).
 * On a board these are real microseconds. In QEMU under -icount shift=0 every instruction is 1 ns
 * of virtual time and SysTick counts virtual time, so "microseconds" are thousands of instructions.
 */
#include <stdint.h>
#include <string.h>

#include "ec_api.h" /* the model's API, as model_... whatever its --name */
#include "ec_mlperf.h"
#include "ec_port.h"

#define EC_CMD_SIZE 256u /* the runner's longest, "db" + 31 bytes in hex, is 65 */
#define EC_FW_VERSION "ULPMark for tinyML Firmware V0.0.1"
#define EC_DEVICE "edgecomp"
#define EC_DEFAULT_WARMUP 10u

#if MODEL_ARENA_CALLER
static uint8_t ec_model_arena[MODEL_ARENA_BYTES] EC_ARENA_ATTRIBUTES; /* a model built to use its caller's */
#endif
static char ec_cmd[EC_CMD_SIZE + 1];
static uint8_t ec_db[EC_MLPERF_DB_BYTES];
static uint32_t ec_db_size, ec_db_pos;
#if MODEL_INTEGRITY
static int ec_weights_ok;
#else
#define ec_weights_ok 1
#endif

/* Text out, without printf (newlib-nano's pulls in malloc for floats). */
static void ec_puts(const char *s)
{
  ec_port_write((const uint8_t *)s, (uint32_t)strlen(s));
}

static void ec_putc(char c)
{
  ec_port_write((const uint8_t *)&c, 1u);
}

static void ec_put_u64(uint64_t v)
{
  char buf[21];
  uint32_t n = sizeof buf;
  do {
    buf[--n] = (char)('0' + (int)(v % 10u));
    v /= 10u;
  } while (v != 0u);
  ec_port_write((const uint8_t *)buf + n, (uint32_t)sizeof buf - n);
}

static void ec_put_i64(int64_t v)
{
  if (v < 0) {
    ec_putc('-');
    ec_put_u64((uint64_t)0 - (uint64_t)v);
  } else {
    ec_put_u64((uint64_t)v);
  }
}

/* A float as C's "%.9g" prints it: nine significant digits (enough to read back the same float32),
 * trailing zeros dropped, an exponent outside 1e-4..1e9. The scaling in double is exact to far
 * less than a float32's spacing. */
static void ec_put_float(float f)
{
  double v = (double)f;
  if (v != v) {
    ec_puts("nan");
    return;
  }
  if (v < 0.0) {
    ec_putc('-');
    v = -v;
  }
  if (v > 3.5e38) {
    ec_puts("inf");
    return;
  }
  if (v == 0.0) {
    ec_putc('0');
    return;
  }
  int e10 = 0;
  while (v >= 1e9) {
    v /= 10.0;
    ++e10;
  }
  while (v < 1e8) {
    v *= 10.0;
    --e10;
  }
  uint32_t digits = (uint32_t)(v + 0.5);
  if (digits >= 1000000000u) {
    digits /= 10u;
    ++e10;
  }
  char d[9];
  for (int i = 8; i >= 0; --i) {
    d[i] = (char)('0' + (int)(digits % 10u));
    digits /= 10u;
  }
  int nd = 9;
  while (nd > 1 && d[nd - 1] == '0') {
    --nd;
  }
  const int x = e10 + 8; /* the decimal exponent of d[0] */
  if (x < -4 || x >= 9) {
    ec_putc(d[0]);
    if (nd > 1) {
      ec_putc('.');
      ec_port_write((const uint8_t *)d + 1, (uint32_t)(nd - 1));
    }
    ec_putc('e');
    ec_putc(x < 0 ? '-' : '+');
    const int ax = x < 0 ? -x : x;
    if (ax < 10) {
      ec_putc('0');
    }
    ec_put_u64((uint64_t)ax);
  } else if (x >= 0) {
    for (int i = 0; i <= x; ++i) {
      ec_putc(i < nd ? d[i] : '0');
    }
    if (nd > x + 1) {
      ec_putc('.');
      ec_port_write((const uint8_t *)d + x + 1, (uint32_t)(nd - x - 1));
    }
  } else {
    ec_puts("0.");
    for (int i = -1; i > x; --i) {
      ec_putc('0');
    }
    ec_port_write((const uint8_t *)d, (uint32_t)nd);
  }
}

static void ec_line(const char *s)
{
  ec_puts(s);
  ec_puts("\r\n");
}

static void ec_error(const char *what, const char *arg)
{
  ec_puts("e-[");
  ec_puts(what);
  ec_puts(arg);
  ec_line("]");
}

/* A decimal argument: its value, or -1 if it is not one (or too large). */
static int64_t ec_number(const char *s)
{
  if (s == NULL || *s == '\0') {
    return -1;
  }
  int64_t v = 0;
  for (; *s; ++s) {
    if (*s < '0' || *s > '9' || v > 100000000) {
      return -1;
    }
    v = v * 10 + (*s - '0');
  }
  return v;
}

static int ec_hex(char c)
{
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

/* The next space-separated word of the command (strtok without its hidden state). */
static char *ec_word(char **rest)
{
  char *s = *rest;
  while (*s == ' ') {
    ++s;
  }
  if (*s == '\0') {
    *rest = s;
    return NULL;
  }
  char *w = s;
  while (*s != '\0' && *s != ' ') {
    ++s;
  }
  if (*s == ' ') {
    *s++ = '\0';
  }
  *rest = s;
  return w;
}

static uint64_t ec_micros(void)
{
  const uint64_t ticks = ec_port_ticks();
  const uint32_t hz = ec_port_clock_hz();
  if (hz % 1000000u == 0u) {
    return ticks / (hz / 1000000u);
  }
  return ticks * 1000000u / hz;
}

static void ec_timestamp(void)
{
  const uint64_t us = ec_micros(); /* first: the printing is not part of what is timed */
  ec_puts("m-lap-us-");
  ec_put_u64(us);
  ec_puts("\r\n");
}

/* As variables: a model may have no outputs, and `i < 0u` is a -Wtype-limits warning. */
static const uint32_t ec_num_inputs = MODEL_NUM_INPUTS;
static const uint32_t ec_num_outputs = MODEL_NUM_OUTPUTS;

static void ec_results(void)
{
  ec_puts("m-results-[");
  int first = 1;
  for (uint32_t o = 0; o < ec_num_outputs; ++o) {
    const model_tensor_info *info = &model_outputs[o];
    const uint8_t *p = (const uint8_t *)model_output(o);
    const ec_mlperf_dequant *q = &ec_mlperf_outputs[o];
    const uint32_t size = info->dtype_bits >= 8u ? info->dtype_bits / 8u : 1u;
    for (uint32_t off = 0; off + size <= info->bytes; off += size) {
      if (!first) {
        ec_putc(',');
      }
      first = 0;
      int64_t iv = 0;
      if (info->dtype_code == 2u) { /* float */
        if (size == 8u) {
          double d;
          memcpy(&d, p + off, sizeof d);
          ec_put_float((float)d);
        } else {
          float fv;
          memcpy(&fv, p + off, sizeof fv);
          ec_put_float(fv);
        }
        continue;
      }
      if (info->dtype_code == 0u) { /* signed */
        if (size == 1u) {
          iv = (int8_t)p[off];
        } else if (size == 2u) {
          int16_t v;
          memcpy(&v, p + off, sizeof v);
          iv = v;
        } else if (size == 4u) {
          int32_t v;
          memcpy(&v, p + off, sizeof v);
          iv = v;
        } else {
          memcpy(&iv, p + off, sizeof iv);
        }
      } else { /* unsigned, bool */
        if (size == 1u) {
          iv = p[off];
        } else if (size == 2u) {
          uint16_t v;
          memcpy(&v, p + off, sizeof v);
          iv = v;
        } else if (size == 4u) {
          uint32_t v;
          memcpy(&v, p + off, sizeof v);
          iv = v;
        } else {
          uint64_t v;
          memcpy(&v, p + off, sizeof v);
          iv = (int64_t)v;
        }
      }
      if (q->quantized) {
        ec_put_float((float)(int32_t)(iv - q->zero_point) * q->scale);
      } else {
        ec_put_i64(iv);
      }
    }
  }
  ec_line("]");
}

/* Copy the loaded bytes into the model's inputs and run it once. */
static int ec_run_once(void)
{
  uint32_t off = 0;
  for (uint32_t i = 0; i < ec_num_inputs; ++i) {
    memcpy(model_input(i), ec_db + off, model_inputs[i].bytes);
    off += model_inputs[i].bytes;
  }
  return model_invoke();
}

static void ec_infer(char *rest)
{
  const char *n_word = ec_word(&rest);
  const char *w_word = ec_word(&rest);
  const int64_t n = n_word ? ec_number(n_word) : 1;
  const int64_t w = w_word ? ec_number(w_word) : (int64_t)EC_DEFAULT_WARMUP;
  if (n <= 0) {
    ec_line("e-[Inference iterations must be >0]");
    return;
  }
  if (w < 0) {
    ec_line("e-[Inference warmup must be >=0]");
    return;
  }
  if (!ec_weights_ok) {
    ec_line("e-[Weights integrity check failed: the weights in flash are not the ones built]");
    return;
  }
  if (ec_db_pos != EC_MLPERF_INPUT_BYTES) {
    ec_puts("e-[Loaded ");
    ec_put_u64(ec_db_pos);
    ec_puts(" bytes; the model's input takes ");
    ec_put_u64(EC_MLPERF_INPUT_BYTES);
    ec_line("]");
    return;
  }
  int rc = 0;
  ec_puts("m-warmup-start-");
  ec_put_u64((uint64_t)w);
  ec_puts("\r\n");
  for (int64_t i = 0; i < w && rc == 0; ++i) {
    rc = ec_run_once();
  }
  ec_line("m-warmup-done");
  ec_puts("m-infer-start-");
  ec_put_u64((uint64_t)n);
  ec_puts("\r\n");
  ec_timestamp();
  for (int64_t i = 0; i < n && rc == 0; ++i) {
    rc = ec_run_once();
  }
  ec_timestamp();
  ec_line("m-infer-done");
  if (rc != 0) {
    ec_puts("e-[model_invoke failed: ");
    ec_put_i64(rc);
    ec_line("]");
    return;
  }
  ec_results();
}

static void ec_db_command(char *rest)
{
  char *sub = ec_word(&rest);
  if (sub == NULL) {
    ec_line("e-[Command 'db' requires a subcommand]");
  } else if (strcmp(sub, "load") == 0) {
    const char *arg = ec_word(&rest);
    const int64_t n = ec_number(arg);
    if (arg == NULL) {
      ec_line("e-[Command 'db load' requires the # of bytes]");
    } else if (n <= 0) {
      ec_line("e-[Command 'db load' must be >0 bytes]");
    } else if ((uint64_t)n > EC_MLPERF_DB_BYTES) {
      ec_puts("e-[Supplied buffer size ");
      ec_put_u64((uint64_t)n);
      ec_puts(" exceeds maximum of ");
      ec_put_u64(EC_MLPERF_DB_BYTES);
      ec_line("]");
    } else {
      ec_db_size = (uint32_t)n;
      ec_db_pos = 0;
      ec_puts("m-[Expecting ");
      ec_put_u64(ec_db_size);
      ec_line(" bytes]");
    }
  } else if (strcmp(sub, "print") == 0) {
    static const char hex[] = "0123456789abcdef";
    for (uint32_t i = 0; i < ec_db_size; ++i) {
      if (i % 8u == 0u) {
        ec_puts("m-buffer-");
      }
      ec_putc(hex[ec_db[i] >> 4]);
      ec_putc(hex[ec_db[i] & 15u]);
      ec_puts((i + 1u) % 8u == 0u || i + 1u == ec_db_size ? "\r\n" : "-");
    }
  } else {
    const size_t digits = strlen(sub);
    if (digits % 2u != 0u) {
      ec_line("e-[Insufficent number of hex digits]");
      return;
    }
    for (size_t i = 0; i < digits; i += 2u) {
      const int hi = ec_hex(sub[i]), lo = ec_hex(sub[i + 1u]);
      if (hi < 0 || lo < 0) {
        char pair[3] = { sub[i], sub[i + 1u], '\0' };
        ec_error("Invalid hex digit '", pair);
        return;
      }
      if (ec_db_pos >= ec_db_size) {
        ec_line("e-[More bytes than 'db load' announced]");
        return;
      }
      ec_db[ec_db_pos++] = (uint8_t)(hi << 4 | lo);
      if (ec_db_pos == ec_db_size) {
        ec_line("m-load-done");
        return; /* the rest of the digits, as the reference, disregarded */
      }
    }
  }
}

static void ec_command(char *cmd)
{
  char *rest = cmd;
  const char *word = ec_word(&rest);
  if (word == NULL) {
    /* an empty command (a lone '%', as the runner sends to flush): only m-ready */
  } else if (strcmp(word, "name") == 0) {
    ec_line("m-name-dut-[" EC_DEVICE "]");
  } else if (strcmp(word, "profile") == 0) {
    ec_line("m-profile-[" EC_FW_VERSION "]");
    ec_line("m-model-[" EC_MLPERF_MODEL "]");
  } else if (strcmp(word, "timestamp") == 0) {
    ec_timestamp();
  } else if (strcmp(word, "help") == 0) {
    ec_line(EC_FW_VERSION " (edgecomp)");
    ec_line("help         : Print this information");
    ec_line("name         : Print the name of the device");
    ec_line("timestamp    : Generate a timestamp");
    ec_line("db SUBCMD    : Manipulate a generic byte buffer");
    ec_line("  load N     : Allocate N bytes and set load counter");
    ec_line("  db HH[HH]* : Load 8-bit hex byte(s) until N bytes");
    ec_line("  print      : Print the buffer as hex");
    ec_line("infer N [W=10]: Load input, execute N inferences after W warmup loops");
    ec_line("results      : Return the result vector");
  } else if (strcmp(word, "db") == 0) {
    ec_db_command(rest);
  } else if (strcmp(word, "infer") == 0) {
    ec_infer(rest);
  } else if (strcmp(word, "results") == 0) {
    ec_results();
  } else {
    ec_error("Unknown command: ", word);
  }
  ec_line("m-ready");
}

int main(void)
{
  ec_port_init();
#if MODEL_ARENA_CALLER
  (void)model_init(ec_model_arena, sizeof ec_model_arena); /* cannot fail: the size and alignment are its own */
#endif
#if MODEL_INTEGRITY
  uint8_t digest[32];
  ec_weights_ok = model_verify(digest) == 0;
#endif
  ec_port_timer_start(); /* the timestamps' zero: never restarted */
  ec_line("m-timestamp-mode-performance");
  if (!ec_weights_ok) {
    ec_line("e-[Weights integrity check failed: the weights in flash are not the ones built]");
  }
  ec_line("m-init-done");
  ec_line("m-ready");
  uint32_t len = 0;
  int overflow = 0;
  for (;;) {
    const int c = ec_port_getc();
    if (c < 0) {
      ec_port_exit(0); /* link closed (host) */
      return 0;
    }
    if (c == '\r' || c == '\n') {
      continue;
    }
    if (c == '%') {
      ec_cmd[len] = '\0';
      if (overflow) {
        ec_line("e-[Command too long]");
        ec_line("m-ready");
      } else {
        ec_command(ec_cmd);
      }
      len = 0;
      overflow = 0;
    } else if (len < EC_CMD_SIZE) {
      ec_cmd[len++] = (char)c;
    } else {
      overflow = 1;
    }
  }
}
