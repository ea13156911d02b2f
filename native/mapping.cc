// Mapping store files, and surviving their being shrunk.
//
// A store file is mapped MAP_SHARED and handed to JS as an external
// ArrayBuffer. If anybody truncates the file while it is mapped, the next
// touch of a page past the new end raises SIGBUS, which would kill the
// process. The handler below recognises faults inside our own mappings
// only, replaces the faulting page with a private page whose every 64-bit
// word reads as an absent key, and lets the instruction run again; any
// other SIGBUS goes to whoever handled it before us, or kills the process
// as it always would. The store notices the shrunk file on its next check
// (and on any slow path, through faults()) and moves off it.

#include "common.h"

#include <atomic>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include <sys/mman.h>
#include <unistd.h>

namespace gensync {
namespace {

// Every generation word of a replaced page reads as this: the ABSENT bit
// (bit 62) of the store format, so checks answer "expired", increments
// report failure, and index entries read as empty.
constexpr uint64_t kAbsentWord = uint64_t{1} << 62;

// Enough for every store a process could sensibly open (each uses one
// region, and one more while it has watchers). A mapping that finds no
// free slot still works; it is only not protected from truncation.
constexpr size_t kMaxRegions = 4096;

struct Region {
  std::atomic<uintptr_t> start{0};
  std::atomic<size_t> length{0};
};

Region g_regions[kMaxRegions];
std::atomic<uint32_t> g_faults{0};
struct sigaction g_previous;
std::once_flag g_install_once;
long g_page_size = 4096;

bool AbsorbFault(uintptr_t address) {
  for (Region& region : g_regions) {
    uintptr_t start = region.start.load(std::memory_order_acquire);
    if (start == 0) continue;
    size_t length = region.length.load(std::memory_order_acquire);
    if (address < start || address - start >= length) continue;
    uintptr_t page = address & ~static_cast<uintptr_t>(g_page_size - 1);
    // mmap is a plain system call on Linux, safe here in practice.
    void* replaced = mmap(reinterpret_cast<void*>(page), static_cast<size_t>(g_page_size), PROT_READ | PROT_WRITE,
                          MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (replaced == MAP_FAILED) return false;
    uint64_t* words = static_cast<uint64_t*>(replaced);
    for (size_t i = 0; i < static_cast<size_t>(g_page_size) / sizeof(uint64_t); i++) words[i] = kAbsentWord;
    g_faults.fetch_add(1, std::memory_order_acq_rel);
    return true;
  }
  return false;
}

void OnSigbus(int signal, siginfo_t* info, void* context) {
  int saved_errno = errno;
  // Only a fault the kernel raised has a faulting address (si_code > 0). A
  // SIGBUS sent by kill(2), tgkill or sigqueue (si_code <= 0) carries a
  // sender's pid where the address would be, and is never absorbed.
  bool from_kernel = info != nullptr && info->si_code > 0;
  bool absorbed = from_kernel && AbsorbFault(reinterpret_cast<uintptr_t>(info->si_addr));
  errno = saved_errno;
  if (absorbed) return;
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(signal, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(signal);
  } else if (g_previous.sa_handler == SIG_IGN && !from_kernel) {
    // Ignored before us: a sent SIGBUS stays ignored.
  } else {
    // Not ours and nobody else's: restore what was there so that the
    // faulting instruction, run again on return, ends the process as it
    // would have; a sent signal has no instruction to run again, so send
    // it once more (it is blocked in this handler and arrives on return).
    sigaction(SIGBUS, &g_previous, nullptr);
    if (!from_kernel) raise(SIGBUS);
    errno = saved_errno;
  }
}

// What a mapping's finalizer needs; `released` is set once unmap() did the work.
struct Mapping {
  void* address;
  size_t length;
  bool released;
  uint64_t id;  // tells this mapping from a later one at the same address
};

uint64_t g_next_mapping_id = 1;  // guarded by g_mappings_mutex

std::mutex g_mappings_mutex;
std::unordered_map<void*, Mapping*> g_mappings;

void Release(Mapping* mapping) {
  if (mapping->released) return;
  mapping->released = true;
  UnregisterRegion(mapping->address);
  munmap(mapping->address, mapping->length);
}

void Finalize(Napi::Env, void*, Mapping* mapping) {
  {
    std::lock_guard<std::mutex> guard(g_mappings_mutex);
    g_mappings.erase(mapping->address);
    Release(mapping);
  }
  delete mapping;
}

// map(fd, length) -> ArrayBuffer over a MAP_SHARED mapping of the file,
// released by unmap() or, failing that, when the buffer is collected.
Napi::Value Map(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd, length_value;
  if (!IntegerArgument(info, 0, "fd", 0, &fd) || !IntegerArgument(info, 1, "length", 1, &length_value)) return env.Undefined();
  size_t length = static_cast<size_t>(length_value);
  void* address = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, static_cast<int>(fd), 0);
  if (address == MAP_FAILED) {
    ThrowErrno(env, errno, "mmap");
    return env.Undefined();
  }
  RegisterRegion(address, length);
  Mapping* mapping = new Mapping{address, length, false, 0};
  {
    std::lock_guard<std::mutex> guard(g_mappings_mutex);
    mapping->id = g_next_mapping_id++;
    g_mappings[address] = mapping;
  }
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, address, length, Finalize, mapping);
  if (buffer.IsEmpty()) {
    // No buffer means no finalizer: release the mapping here (the error is pending).
    std::lock_guard<std::mutex> guard(g_mappings_mutex);
    g_mappings.erase(address);
    Release(mapping);
    delete mapping;
    return env.Undefined();
  }
  return buffer;
}

// unmap(buffer): detach the buffer, so that no JS access can reach the
// memory any more, and release the mapping now rather than at collection.
Napi::Value Unmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) {
    Napi::TypeError::New(env, "expected an ArrayBuffer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  void* address = buffer.Data();
  uint64_t id;
  {
    std::lock_guard<std::mutex> guard(g_mappings_mutex);
    auto found = g_mappings.find(address);
    if (address == nullptr || found == g_mappings.end()) return env.Undefined();
    id = found->second->id;
  }
  // Detach without holding the mutex: should the runtime finalize the buffer right away, Finalize takes it.
  if (napi_detach_arraybuffer(env, buffer) != napi_ok) {
    // Still reachable from JS: leave it mapped for the finalizer.
    Napi::Error::New(env, "the store's buffer could not be detached").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::lock_guard<std::mutex> guard(g_mappings_mutex);
  auto found = g_mappings.find(address);
  // Gone already if it was finalized during the detach (Finalize released it), perhaps replaced by a new mapping.
  if (found != g_mappings.end() && found->second->id == id) Release(found->second);
  return env.Undefined();
}

// faults() -> how many SIGBUS faults inside store mappings this process has absorbed.
Napi::Value Faults(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), g_faults.load(std::memory_order_acquire));
}

}  // namespace

void InstallFaultHandler() {
  std::call_once(g_install_once, []() {
    g_page_size = sysconf(_SC_PAGESIZE);
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_sigaction = OnSigbus;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &g_previous);
  });
}

// Writers are serialised by a mutex; the signal handler only reads, and
// reads a slot's length after its start (written in the opposite order).
std::mutex g_regions_mutex;

bool RegisterRegion(void* start, size_t length) {
  std::lock_guard<std::mutex> guard(g_regions_mutex);
  for (Region& region : g_regions) {
    if (region.start.load(std::memory_order_acquire) != 0) continue;
    region.length.store(length, std::memory_order_release);
    region.start.store(reinterpret_cast<uintptr_t>(start), std::memory_order_release);
    return true;
  }
  return false;
}

void UnregisterRegion(void* start) {
  std::lock_guard<std::mutex> guard(g_regions_mutex);
  for (Region& region : g_regions) {
    if (region.start.load(std::memory_order_acquire) != reinterpret_cast<uintptr_t>(start)) continue;
    region.start.store(0, std::memory_order_release);
    return;
  }
}

void InitMapping(Napi::Env env, Napi::Object exports, Napi::Object) {
  InstallFaultHandler();
  exports.Set("map", Napi::Function::New(env, Map, "map"));
  exports.Set("unmap", Napi::Function::New(env, Unmap, "unmap"));
  exports.Set("faults", Napi::Function::New(env, Faults, "faults"));
}

}  // namespace gensync
