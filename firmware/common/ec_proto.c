/* ec_proto.c - framing and CRC of the harness protocol (ec_proto.h). */
#include "ec_proto.h"

#include "ec_port.h"

uint32_t ec_crc32(uint32_t crc, const uint8_t *data, uint32_t len)
{
  /* CRC-32 (IEEE, reflected), bitwise: small and the same as Python's zlib.crc32. */
  crc = ~crc;
  for (uint32_t i = 0; i < len; ++i) {
    crc ^= data[i];
    for (int b = 0; b < 8; ++b) {
      crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
  }
  return ~crc;
}

void ec_put_u16(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

void ec_put_u32(uint8_t *p, uint32_t v)
{
  ec_put_u16(p, v);
  ec_put_u16(p + 2, v >> 16);
}

uint32_t ec_get_u16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

uint32_t ec_get_u32(const uint8_t *p) { return ec_get_u16(p) | (ec_get_u16(p + 2) << 16); }

void ec_send_frame(uint8_t type, uint8_t seq, const uint8_t *payload, uint32_t len)
{
  uint8_t head[6] = { EC_SYNC0, EC_SYNC1, type, seq, 0, 0 };
  uint8_t tail[4];
  ec_put_u16(head + 4, len);
  uint32_t crc = ec_crc32(0, head + 2, 4);
  crc = ec_crc32(crc, payload, len);
  ec_put_u32(tail, crc);
  ec_port_write(head, 6);
  if (len) {
    ec_port_write(payload, len);
  }
  ec_port_write(tail, 4);
}

int ec_recv_frame(uint8_t *type, uint8_t *seq, uint8_t *payload)
{
  for (;;) {
    /* Hunt for the sync pair; anything else (noise, a partial frame) is dropped. */
    int c = ec_port_getc();
    if (c < 0) {
      return -1;
    }
    if ((uint32_t)c != EC_SYNC0) {
      continue;
    }
    c = ec_port_getc();
    while ((uint32_t)c == EC_SYNC0) {
      c = ec_port_getc();
    }
    if (c < 0) {
      return -1;
    }
    if ((uint32_t)c != EC_SYNC1) {
      continue;
    }
    uint8_t head[4];
    for (int i = 0; i < 4; ++i) {
      c = ec_port_getc();
      if (c < 0) {
        return -1;
      }
      head[i] = (uint8_t)c;
    }
    uint32_t len = ec_get_u16(head + 2);
    if (len > EC_MAX_PAYLOAD) {
      continue; /* cannot be a real frame: resynchronise */
    }
    uint8_t tail[4];
    for (uint32_t i = 0; i < len + 4; ++i) {
      c = ec_port_getc();
      if (c < 0) {
        return -1;
      }
      if (i < len) {
        payload[i] = (uint8_t)c;
      } else {
        tail[i - len] = (uint8_t)c;
      }
    }
    uint32_t crc = ec_crc32(0, head, 4);
    crc = ec_crc32(crc, payload, len);
    if (crc != ec_get_u32(tail)) {
      ec_send_frame(EC_NAK, head[1], 0, 0);
      continue;
    }
    *type = head[0];
    *seq = head[1];
    return (int)len;
  }
}
