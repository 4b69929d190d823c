import { classifyFailure } from "../../handlers/comfyui/failures.js";

/** ComfyUI's execution_error fields, as it reports them for these failures. */
test.each([
  [
    {
      exception_type: "torch.OutOfMemoryError",
      exception_message: "CUDA out of memory. Tried to allocate 2.00 GiB",
    },
    "out_of_memory",
  ],
  [
    {
      exception_type: "RuntimeError",
      exception_message:
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory",
    },
    "out_of_memory",
  ],
  [
    {
      exception_type: "RuntimeError",
      exception_message: "CUDA error: an illegal memory access was encountered",
    },
    "device_failed",
  ],
  [
    { exception_type: "RuntimeError", exception_message: "CUDA error: device-side assert triggered" },
    "device_failed",
  ],
  [
    {
      exception_type: "RuntimeError",
      exception_message: "CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx",
    },
    "device_failed",
  ],
  [{ exception_type: "RuntimeError", exception_message: "CUDA error: out of memory" }, "out_of_memory"],
  [
    {
      exception_type: "ValueError",
      exception_message: "Padding size should be less than the input dimension",
    },
    "execution",
  ],
  [null, "execution"],
])("%j is %s", (error, kind) => {
  expect(classifyFailure(error)).toBe(kind);
});
