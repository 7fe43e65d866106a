export { loadNative, CpuKernelsLoadError, type NativeModule } from "./load";
