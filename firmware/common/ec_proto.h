/*
 * ec_proto.h - the harness wire protocol (see docs/protocol.md).
 *
 * Frame: 0xEC 0xA5 | type u8 | seq u8 | len u16 LE | payload[len] | crc32 LE of type..payload.
 * The host sends commands; the target answers each with type|0x80 and the same seq, payload[0]
 * being a status. A frame whose CRC fails is answered with NAK so the host resends it.
 */
#ifndef EC_PROTO_H
#define EC_PROTO_H

#include <stdint.h>

#define EC_SYNC0 0xECu
#define EC_SYNC1 0xA5u
#define EC_PROTO_VERSION 1u
#ifndef EC_MAX_PAYLOAD
#define EC_MAX_PAYLOAD 256u
#endif

enum {
  EC_CMD_INFO = 0x01,
  EC_CMD_WRITE_INPUT = 0x02,
  EC_CMD_INVOKE = 0x03,
  EC_CMD_READ_OUTPUT = 0x04,
  EC_CMD_EXIT = 0x05,
  EC_CMD_STEP_TICKS = 0x06,
  EC_CMD_VERIFY = 0x07,
  EC_CMD_STEP = 0x08,
  EC_CMD_READ_ARENA = 0x09,
  EC_RESP = 0x80,
  EC_NAK = 0xFD,
  EC_FAULT = 0xFE,
};

enum {
  EC_OK = 0,
  EC_ERR_COMMAND = 1,
  EC_ERR_ARGS = 2,
  EC_ERR_MODEL = 3,
  EC_ERR_INTEGRITY = 4, /* the weights in flash are not the ones built: no inference */
};

uint32_t ec_crc32(uint32_t crc, const uint8_t *data, uint32_t len);
/* Send one frame. */
void ec_send_frame(uint8_t type, uint8_t seq, const uint8_t *payload, uint32_t len);
/* Receive one frame with a good CRC into `payload` (EC_MAX_PAYLOAD bytes); returns its length,
 * or -1 when the link closed. Frames with a bad CRC are NAKed and skipped. */
int ec_recv_frame(uint8_t *type, uint8_t *seq, uint8_t *payload);

void ec_put_u16(uint8_t *p, uint32_t v);
void ec_put_u32(uint8_t *p, uint32_t v);
uint32_t ec_get_u16(const uint8_t *p);
uint32_t ec_get_u32(const uint8_t *p);

#endif /* EC_PROTO_H */
