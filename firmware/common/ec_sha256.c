/*
 * ec_sha256.c - SHA-256 (FIPS 180-4), portable C99.
 */
#include "ec_sha256.h"

#include <string.h>

static const uint32_t ec_k[64] = {
  0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
  0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
  0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
  0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
  0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
  0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
  0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
  0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

static uint32_t ec_ror(uint32_t x, uint32_t n)
{
  return (x >> n) | (x << (32u - n));
}

static void ec_sha256_block(uint32_t h[8], const uint8_t *p)
{
  uint32_t w[64];
  for (uint32_t i = 0; i < 16; ++i) {
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  }
  for (uint32_t i = 16; i < 64; ++i) {
    const uint32_t s0 = ec_ror(w[i - 15], 7) ^ ec_ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
    const uint32_t s1 = ec_ror(w[i - 2], 17) ^ ec_ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
  for (uint32_t i = 0; i < 64; ++i) {
    const uint32_t t1 = k + (ec_ror(e, 6) ^ ec_ror(e, 11) ^ ec_ror(e, 25)) + ((e & f) ^ (~e & g)) + ec_k[i] + w[i];
    const uint32_t t2 = (ec_ror(a, 2) ^ ec_ror(a, 13) ^ ec_ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    k = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
  h[5] += f;
  h[6] += g;
  h[7] += k;
}

void ec_sha256_init(ec_sha256_ctx *ctx)
{
  static const uint32_t h0[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                 0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
  memcpy(ctx->h, h0, sizeof h0);
  ctx->bytes = 0;
  ctx->used = 0;
}

void ec_sha256_update(ec_sha256_ctx *ctx, const void *data, uint32_t len)
{
  const uint8_t *p = (const uint8_t *)data;
  ctx->bytes += len;
  if (ctx->used) {
    const uint32_t take = len < 64u - ctx->used ? len : 64u - ctx->used;
    memcpy(ctx->block + ctx->used, p, take);
    ctx->used += take;
    p += take;
    len -= take;
    if (ctx->used < 64u) {
      return;
    }
    ec_sha256_block(ctx->h, ctx->block);
    ctx->used = 0;
  }
  for (; len >= 64u; p += 64, len -= 64u) {
    ec_sha256_block(ctx->h, p);
  }
  memcpy(ctx->block, p, len);
  ctx->used = len;
}

void ec_sha256_final(ec_sha256_ctx *ctx, uint8_t digest[32])
{
  const uint64_t bits = ctx->bytes * 8u;
  const uint8_t one = 0x80u, zero = 0u;
  ec_sha256_update(ctx, &one, 1);
  while (ctx->used != 56u) {
    ec_sha256_update(ctx, &zero, 1);
  }
  uint8_t len[8];
  for (uint32_t i = 0; i < 8; ++i) {
    len[i] = (uint8_t)(bits >> (56u - 8u * i));
  }
  ec_sha256_update(ctx, len, 8);
  for (uint32_t i = 0; i < 8; ++i) {
    digest[4 * i] = (uint8_t)(ctx->h[i] >> 24);
    digest[4 * i + 1] = (uint8_t)(ctx->h[i] >> 16);
    digest[4 * i + 2] = (uint8_t)(ctx->h[i] >> 8);
    digest[4 * i + 3] = (uint8_t)ctx->h[i];
  }
}
