/**
 * What kind of failure a ComfyUI execution error is. A caller can put text into an exception's message (a
 * SaveImage prefix that ComfyUI quotes when it refuses the folder), so the message alone decides nothing: out of
 * memory is read from the exception's type (what torch raised, not what a node wrote), and a device failure is only
 * ever a suspicion, which a health probe of that backend confirms or clears (see ComfyPool.probe).
 */
export type FailureKind = "out_of_memory" | "device_suspected" | "execution";

/** ComfyUI's `exception_type`: `module.QualName`, or the bare name of a builtin. */
const OOM_TYPES = new Set(["torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError"]);

/** Types that torch's C++ side raises: RuntimeError before torch 2.8, torch.AcceleratorError after. */
const TORCH_RUNTIME_TYPES = new Set(["RuntimeError", "torch.AcceleratorError"]);

/**
 * Allocation failures that torch raises as a plain RuntimeError (the CPU allocator, CUDA's own status): the
 * message is torch's and starts with its fixed text, anchored, so a caller's text further in cannot match.
 */
const OOM_RUNTIME_MESSAGES = [
  /^\[enforce fail at alloc_cpu\.cpp:\d+\] .*DefaultCPUAllocator: (can't allocate memory|not enough memory)/,
  /^CUDA error: out of memory/,
  /^CUDA out of memory\./,
];

/**
 * CUDA errors that can leave the device unusable until the process restarts: worth a probe, no more. Anchored at
 * the start of torch's own text (illegal memory access, device-side asserts, launch failures and ECC errors all
 * come as "CUDA error: ..."), so that a caller's text further in a message cannot raise the suspicion.
 */
const DEVICE_SUSPECT_MESSAGES = [
  /^CUDA error: /,
  /^CUBLAS_STATUS_(EXECUTION_FAILED|INTERNAL_ERROR)/,
  /^cuDNN error: CUDNN_STATUS_(EXECUTION_FAILED|INTERNAL_ERROR)/,
];

export function classifyFailure(
  error: { exception_type?: unknown; exception_message?: unknown } | null,
): FailureKind {
  if (!error) return "execution";
  const type = typeof error.exception_type === "string" ? error.exception_type : "";
  const message = typeof error.exception_message === "string" ? error.exception_message : "";
  if (OOM_TYPES.has(type)) return "out_of_memory";
  if (!TORCH_RUNTIME_TYPES.has(type)) return "execution";
  if (OOM_RUNTIME_MESSAGES.some((r) => r.test(message))) return "out_of_memory";
  if (type === "torch.AcceleratorError" || DEVICE_SUSPECT_MESSAGES.some((r) => r.test(message)))
    return "device_suspected";
  return "execution";
}
