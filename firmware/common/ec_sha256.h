/*
 * ec_sha256.h - SHA-256 (FIPS 180-4) for the firmware's weights integrity check; no tables in RAM,
 * no malloc. Streaming: init, update over each block of weights, final.
 */
#ifndef EC_SHA256_H
#define EC_SHA256_H

#include "ec_names.h" /* this model's names for the runtime's global symbols */

#include <stdint.h>

typedef struct {
  uint32_t h[8];
  uint64_t bytes;
  uint8_t block[64];
  uint32_t used;
} ec_sha256_ctx;

void ec_sha256_init(ec_sha256_ctx *ctx);
void ec_sha256_update(ec_sha256_ctx *ctx, const void *data, uint32_t len);
void ec_sha256_final(ec_sha256_ctx *ctx, uint8_t digest[32]);

#endif /* EC_SHA256_H */
