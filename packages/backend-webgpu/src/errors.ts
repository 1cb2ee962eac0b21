/**
 * Typed errors of the WebGPU backend. GPU errors arrive asynchronously, so the backend records
 * them and throws at the next `read()`/`sync()` (and at every later call once the device is lost).
 */

/** Base class: `kernel` names the kernel(s) in flight when the error was detected. */
export class WebGpuBackendError extends Error {
  override readonly name: string = "WebGpuBackendError";
  readonly kernel: string;
  constructor(kernel: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kernel = kernel;
  }
}

/** A validation error (bad binding, shader that failed to compile, ...) raised by WebGPU. */
export class WebGpuValidationError extends WebGpuBackendError {
  override readonly name = "WebGpuValidationError";
  constructor(kernel: string, gpuMessage: string) {
    super(kernel, `WebGPU validation error in kernel ${kernel}: ${gpuMessage}`);
  }
}

/** The device ran out of memory creating a buffer or running a kernel. */
export class WebGpuOutOfMemoryError extends WebGpuBackendError {
  override readonly name = "WebGpuOutOfMemoryError";
  constructor(kernel: string, message: string) {
    super(kernel, `WebGPU out of memory in ${kernel}: ${message}`);
  }
}

/** The device was lost (driver reset, destroyed elsewhere); the backend is unusable. */
export class WebGpuDeviceLostError extends WebGpuBackendError {
  override readonly name = "WebGpuDeviceLostError";
  readonly reason: string;
  constructor(kernel: string, reason: string, message: string) {
    super(kernel, `WebGPU device lost (${reason}) during or after ${kernel}: ${message || "no message"}; create a new backend`);
    this.reason = reason;
  }
}

/** A request the device cannot serve (a view wider than a binding, a rank above the kernel maximum). */
export class WebGpuLimitError extends WebGpuBackendError {
  override readonly name = "WebGpuLimitError";
}

/** A data-dependent error a kernel flagged (index or target out of range), reported at the next read. */
export class WebGpuKernelError extends WebGpuBackendError {
  override readonly name = "WebGpuKernelError";
}

/** The backend was used after dispose(). */
export class WebGpuDisposedError extends WebGpuBackendError {
  override readonly name = "WebGpuDisposedError";
  constructor(kernel: string) {
    super(kernel, `WebGPU backend used after dispose() (${kernel}); create a new backend`);
  }
}
