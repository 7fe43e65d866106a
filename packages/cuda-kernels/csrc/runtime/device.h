// Device runtime: device probe (never throws), one compute stream + one copy stream, and a
// caching allocator with size-class free lists so that ops never call cudaMalloc/cudaFree in the
// steady state. Used by the N-API layer and by the standalone harness (dev/gpu_check.cu).
#pragma once
#include <cuda_runtime_api.h>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace qk {

struct DeviceStatus {
  bool available = false;
  int count = 0;
  int code = 0;             // cudaError_t of cudaGetDeviceCount (35 = driver insufficient, 100 = no device)
  std::string reason;       // cudaGetErrorString of that call, or a sentence when count == 0
  int runtimeVersion = 0;   // e.g. 13000
  int driverVersion = 0;    // 0 without a driver
  std::string name;         // device 0, when available
  int ccMajor = 0, ccMinor = 0, smCount = 0;
  size_t totalMemory = 0;
};

/** Safe on machines without a GPU or driver: only calls cudaGetDeviceCount/cudaRuntimeGetVersion. */
DeviceStatus probeDevice();

struct MemoryStats {
  size_t currentBytes = 0;   // bytes handed out (rounded to size classes)
  size_t peakBytes = 0;
  size_t reservedBytes = 0;  // bytes obtained from cudaMalloc (in use + cached)
  size_t managedBytes = 0;   // cudaMallocManaged bytes in use (paged optimizer states)
  size_t allocCalls = 0;     // cudaMalloc calls so far (the cache should keep this flat)
};

class Runtime {
 public:
  /** The selected device (default 0), created on first use; throws CudaError when no device is usable. */
  static Runtime& get();
  /** Chooses the device get() will use (one rank per GPU); before the first get() only, else it must match. */
  static void selectDevice(int device);

  cudaStream_t compute() const { return compute_; }
  cudaStream_t copy() const { return copy_; }
  int device() const { return device_; }
  int smCount() const { return smCount_; }
  bool concurrentManagedAccess() const { return concurrentManaged_; }

  /** Size-class rounding: ≤ 1 MiB → power of two ≥ 512 B; above → multiple of 2 MiB. */
  static size_t roundSize(size_t bytes);
  void* allocate(size_t bytes);
  void release(void* ptr);
  /** Paged (unified) memory for optimizer states; not cached. */
  void* allocateManaged(size_t bytes);
  void releaseManaged(void* ptr);
  /** Moves managed pages to the device ahead of the update kernel (no-op without concurrent access). */
  void prefetchToDevice(const void* ptr, size_t bytes);
  /** Returns every cached block to the driver. */
  void emptyCache();
  MemoryStats stats();
  void resetPeak();
  void memGetInfo(size_t* freeBytes, size_t* totalBytes);

  /** Makes `waiter` wait for the work queued so far on `signaller` (event, no host sync). */
  void streamWait(cudaStream_t waiter, cudaStream_t signaller);
  void upload(void* dst, const void* src, size_t bytes);    // host → device, returns when done
  void download(void* dst, const void* src, size_t bytes);  // device → host, after queued compute
  void synchronize();

 private:
  Runtime();
  int device_ = 0;
  int smCount_ = 0;
  bool concurrentManaged_ = false;
  cudaStream_t compute_ = nullptr;
  cudaStream_t copy_ = nullptr;
  cudaEvent_t event_ = nullptr;
  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> freeLists_;  // size class → cached blocks
  std::unordered_map<void*, size_t> live_;          // pointer → size class
  std::unordered_map<void*, size_t> managed_;
  MemoryStats stats_;
};

}  // namespace qk
