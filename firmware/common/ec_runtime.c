/*
 * ec_runtime.c - TVMBackendAllocWorkspace/FreeWorkspace over a slice of the model's arena.
 *
 * model.c points the allocator at the slice the memory planner reserved for a kernel's scratch
 * (ec_workspace_reset) before calling that kernel. TVM allocates a kernel's workspaces on entry
 * and frees them in reverse order on exit, so a bump allocator that rewinds on free suffices.
 * An allocation that does not fit returns NULL and the kernel returns -1: model_run reports it.
 */
#include "ec_tvm_shim.h"

static uint8_t *ec_ws_base;
static uint32_t ec_ws_size;
static uint32_t ec_ws_used;

void ec_workspace_reset(uint8_t *base, uint32_t size)
{
  ec_ws_base = base;
  ec_ws_size = size;
  ec_ws_used = 0;
}

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint)
{
  (void)device_type;
  (void)device_id;
  (void)dtype_code_hint;
  (void)dtype_bits_hint;
  uint64_t size = (nbytes + 15u) & ~(uint64_t)15u;
  if (ec_ws_base == NULL || size > (uint64_t)(ec_ws_size - ec_ws_used)) {
    return NULL;
  }
  void *p = ec_ws_base + ec_ws_used;
  ec_ws_used += (uint32_t)size;
  return p;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr)
{
  (void)device_type;
  (void)device_id;
  if (ptr == NULL || (uint8_t *)ptr < ec_ws_base || (uint8_t *)ptr >= ec_ws_base + ec_ws_size) {
    return -1;
  }
  ec_ws_used = (uint32_t)((uint8_t *)ptr - ec_ws_base);
  return 0;
}
