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
  [{ exception_type: "torch.cuda.OutOfMemoryError", exception_message: "anything" }, "out_of_memory"],
  [
    // What torch 2.13 on the CPU raises (seen on the test stack).
    {
      exception_type: "RuntimeError",
      exception_message:
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 4398046511104 bytes.",
    },
    "out_of_memory",
  ],
  [{ exception_type: "RuntimeError", exception_message: "CUDA error: out of memory" }, "out_of_memory"],
  [
    {
      exception_type: "RuntimeError",
      exception_message: "CUDA error: an illegal memory access was encountered",
    },
    "device_suspected",
  ],
  [
    {
      exception_type: "torch.AcceleratorError",
      exception_message: "CUDA error: device-side assert triggered",
    },
    "device_suspected",
  ],
  [
    {
      exception_type: "RuntimeError",
      exception_message: "CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx",
    },
    "device_suspected",
  ],
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

/** What ComfyUI reports when a SaveImage prefix leaves the output folder: the message quotes the caller's folder. */
const refusedFolder = (folder: string) => ({
  exception_type: "Exception",
  exception_message: `**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: /comfyui/${folder}\n         output_dir: /comfyui/output\n`,
});

test.each([
  "CUDA error: x",
  "out of memory",
  "an illegal memory access was encountered",
  "device-side assert triggered",
  "CUBLAS_STATUS_ALLOC_FAILED",
  "can't allocate memory",
  "torch.OutOfMemoryError",
])("a caller's text %j in the message of a node's own error is an ordinary execution failure", (text) => {
  expect(classifyFailure(refusedFolder(text))).toBe("execution");
  // Inside a message of torch's own type it can at most ask for a health probe (which decides), never free
  // memory: torch's allocation failures are matched from the start of the message only.
  expect(
    classifyFailure({ exception_type: "RuntimeError", exception_message: `shape mismatch for '${text}'` }),
  ).not.toBe("out_of_memory");
});
