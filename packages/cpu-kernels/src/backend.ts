// The `cpu` backend: host buffers (shared with the reference backend), native kernels for every op.
// Owned by the GEMM engineer; composes gemm.ts and fused.ts.
export {};
