/**
 * What kind of failure a ComfyUI execution error is, from its exception type and message. Out-of-memory is
 * recoverable (free memory, retry); some CUDA errors leave the device unusable until the process restarts.
 */
export type FailureKind = "out_of_memory" | "device_failed" | "execution";

const OOM = [/OutOfMemoryError/i, /out of memory/i, /can't allocate memory/i, /CUBLAS_STATUS_ALLOC_FAILED/];
const DEVICE = [
  /illegal memory access/i,
  /device-side assert/i,
  /CUDA error: (?!out of memory)/i,
  /CUBLAS_STATUS_(EXECUTION_FAILED|INTERNAL_ERROR)/,
  /CUDNN_STATUS_(EXECUTION_FAILED|INTERNAL_ERROR)/,
  /unspecified launch failure/i,
  /ECC error/i,
];

export function classifyFailure(
  error: { exception_type?: unknown; exception_message?: unknown } | null,
): FailureKind {
  if (!error) return "execution";
  const text = `${String(error.exception_type ?? "")}: ${String(error.exception_message ?? "")}`;
  if (OOM.some((r) => r.test(text))) return "out_of_memory";
  if (DEVICE.some((r) => r.test(text))) return "device_failed";
  return "execution";
}
