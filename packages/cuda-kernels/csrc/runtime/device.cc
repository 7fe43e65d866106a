#include "device.h"

#include "check.h"

namespace qk {

DeviceStatus probeDevice() {
  DeviceStatus s;
  cudaRuntimeGetVersion(&s.runtimeVersion);
  cudaDriverGetVersion(&s.driverVersion);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  s.code = static_cast<int>(e);
  if (e != cudaSuccess) {
    s.reason = cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error so later probes start clean
    return s;
  }
  s.count = count;
  if (count == 0) {
    s.reason = "cudaGetDeviceCount reported 0 devices";
    return s;
  }
  cudaDeviceProp prop{};
  e = cudaGetDeviceProperties(&prop, 0);
  if (e != cudaSuccess) {
    s.code = static_cast<int>(e);
    s.reason = cudaGetErrorString(e);
    return s;
  }
  s.name = prop.name;
  s.ccMajor = prop.major;
  s.ccMinor = prop.minor;
  s.smCount = prop.multiProcessorCount;
  s.totalMemory = prop.totalGlobalMem;
  if (prop.major < 8) {
    s.reason = "compute capability " + std::to_string(prop.major) + "." + std::to_string(prop.minor) +
               " is below 8.0 (the kernels need bf16 tensor cores, sm_80+)";
    return s;
  }
  s.available = true;
  return s;
}

namespace {
int requestedDevice = 0;
Runtime* created = nullptr;
}  // namespace

Runtime& Runtime::get() {
  static Runtime* instance = new Runtime();  // never destroyed: avoids teardown-order faults at exit
  created = instance;
  return *instance;
}

void Runtime::selectDevice(int device) {
  require(device >= 0, "selectDevice: device index must be >= 0, got " + std::to_string(device));
  if (created) {
    require(created->device() == device, "selectDevice: the runtime already runs on device " +
                                             std::to_string(created->device()) + " (asked for " +
                                             std::to_string(device) + "); select the device before any CUDA work");
    return;
  }
  requestedDevice = device;
}

Runtime::Runtime() {
  DeviceStatus s = probeDevice();
  if (!s.available) throw CudaError(s.code ? s.code : 100, "no CUDA device: " + s.reason);
  device_ = requestedDevice;
  require(device_ < s.count, "device " + std::to_string(device_) + " does not exist (" + std::to_string(s.count) +
                                 " CUDA device(s))");
  QK_CHECK(cudaSetDevice(device_));
  QK_CHECK(cudaDeviceGetAttribute(&smCount_, cudaDevAttrMultiProcessorCount, device_));
  int cma = 0;
  QK_CHECK(cudaDeviceGetAttribute(&cma, cudaDevAttrConcurrentManagedAccess, device_));
  concurrentManaged_ = cma != 0;
  QK_CHECK(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
  QK_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
  QK_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
}

size_t Runtime::roundSize(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t kSmall = size_t(1) << 20, kLargeStep = size_t(2) << 20;
  if (bytes <= kSmall) {
    size_t c = 512;
    while (c < bytes) c <<= 1;
    return c;
  }
  return (bytes + kLargeStep - 1) / kLargeStep * kLargeStep;
}

void* Runtime::allocate(size_t bytes) {
  const size_t cls = roundSize(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  void* ptr = nullptr;
  auto it = freeLists_.find(cls);
  if (it != freeLists_.end() && !it->second.empty()) {
    ptr = it->second.back();
    it->second.pop_back();
  } else {
    cudaError_t e = cudaMalloc(&ptr, cls);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      // Out of memory: hand the cache back and retry once.
      QK_CHECK(cudaStreamSynchronize(compute_));
      for (auto& [size, blocks] : freeLists_) {
        for (void* p : blocks) QK_CHECK(cudaFree(p));
        stats_.reservedBytes -= size * blocks.size();
        blocks.clear();
      }
      e = cudaMalloc(&ptr, cls);
    }
    check(e, "cudaMalloc", __FILE__, __LINE__);
    stats_.reservedBytes += cls;
    stats_.allocCalls++;
  }
  live_[ptr] = cls;
  stats_.currentBytes += cls;
  if (stats_.currentBytes > stats_.peakBytes) stats_.peakBytes = stats_.currentBytes;
  return ptr;
}

// Blocks go back to the free list without synchronising: all kernels run on the one compute
// stream, so any later user of the block is ordered after the work that used it.
void Runtime::release(void* ptr) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(ptr);
  require(it != live_.end(), "release of a pointer that the allocator does not own");
  freeLists_[it->second].push_back(ptr);
  stats_.currentBytes -= it->second;
  live_.erase(it);
}

void* Runtime::allocateManaged(size_t bytes) {
  void* ptr = nullptr;
  QK_CHECK(cudaMallocManaged(&ptr, bytes == 0 ? 1 : bytes, cudaMemAttachGlobal));
  std::lock_guard<std::mutex> lock(mutex_);
  managed_[ptr] = bytes;
  stats_.managedBytes += bytes;
  return ptr;
}

void Runtime::releaseManaged(void* ptr) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = managed_.find(ptr);
    require(it != managed_.end(), "releaseManaged of a pointer that is not managed memory");
    stats_.managedBytes -= it->second;
    managed_.erase(it);
  }
  QK_CHECK(cudaStreamSynchronize(compute_));
  QK_CHECK(cudaFree(ptr));
}

void Runtime::prefetchToDevice(const void* ptr, size_t bytes) {
  if (!concurrentManaged_ || bytes == 0) return;
  cudaMemLocation location{};
  location.type = cudaMemLocationTypeDevice;
  location.id = device_;
  // CUDA 13 signature: (ptr, bytes, cudaMemLocation, flags, stream).
  QK_CHECK(cudaMemPrefetchAsync(ptr, bytes, location, 0, compute_));
}

void Runtime::emptyCache() {
  QK_CHECK(cudaStreamSynchronize(compute_));
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [size, blocks] : freeLists_) {
    for (void* p : blocks) QK_CHECK(cudaFree(p));
    stats_.reservedBytes -= size * blocks.size();
    blocks.clear();
  }
}

MemoryStats Runtime::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void Runtime::resetPeak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peakBytes = stats_.currentBytes;
}

void Runtime::memGetInfo(size_t* freeBytes, size_t* totalBytes) { QK_CHECK(cudaMemGetInfo(freeBytes, totalBytes)); }

void Runtime::streamWait(cudaStream_t waiter, cudaStream_t signaller) {
  std::lock_guard<std::mutex> lock(mutex_);
  QK_CHECK(cudaEventRecord(event_, signaller));
  QK_CHECK(cudaStreamWaitEvent(waiter, event_, 0));
}

// A reused block may still be read by queued compute work, so the copy stream first waits for
// the compute stream; the copy is synchronous for the caller because JS host memory is pageable
// and may move or be collected once we return. Compute then waits for the copy.
void Runtime::upload(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  streamWait(copy_, compute_);
  QK_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, copy_));
  QK_CHECK(cudaStreamSynchronize(copy_));
}

void Runtime::download(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  streamWait(copy_, compute_);
  QK_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, copy_));
  QK_CHECK(cudaStreamSynchronize(copy_));
}

void Runtime::synchronize() { QK_CHECK(cudaDeviceSynchronize()); }

}  // namespace qk
