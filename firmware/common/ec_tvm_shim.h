/*
 * ec_tvm_shim.h - the few TVM/DLPack declarations that TVM's generated C kernels use.
 *
 * edgecomp strips TVM's #includes from the kernels it generates and includes this header
 * instead, so the firmware needs no TVM runtime or TVM headers. Only the members the generated
 * code reads are declared: kernels are called with pointers to DLTensor (type_index 7) and read
 * `data`, `shape`, `strides` and `device.device_id`; scratch comes from the arena through
 * TVMBackendAllocWorkspace (ec_runtime.c).
 */
#ifndef EC_TVM_SHIM_H
#define EC_TVM_SHIM_H

#include "ec_names.h" /* this model's names for the runtime's global symbols */

#include <stdint.h>
#include <stddef.h>
#include <math.h>

/* TVM's C printer writes a float32 infinity as `inff` and a float64 one as `inf` (float->int
 * casts test for it). */
#define inff INFINITY
#define inf ((double)INFINITY)

#define TVM_DLL

typedef struct {
  int32_t device_type;
  int32_t device_id;
} DLDevice;

typedef struct {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} DLDataType;

typedef struct {
  void *data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  const int64_t *shape;
  const int64_t *strides;
  uint64_t byte_offset;
} DLTensor;

/* One packed-call argument. TVM's own TVMFFIAny has more members; kernels read only these. */
typedef struct {
  int32_t type_index;
  void *v_ptr;
} TVMFFIAny;

#define EC_FFI_DLTENSOR_PTR 7 /* kTVMFFIDLTensorPtr */

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint);
int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr);

/* Point the workspace allocator at `size` bytes of the arena before a kernel call. */
void ec_workspace_reset(uint8_t *base, uint32_t size);

#endif /* EC_TVM_SHIM_H */
