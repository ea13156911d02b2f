// Change notification: a thread that sleeps on a futex word of the store
// file and tells JS when it changes.
//
// A u32 word in the file is the store's notification sequence. A process
// that changes a watched key adds one to it (from JS, with Atomics) and calls
// wake(); each process with watchers runs one Watcher: a dedicated thread
// that sleeps in FUTEX_WAIT on the word and, when it changes, calls back
// into JS through a thread-safe function. Process-shared futexes work on
// shared file mappings: the kernel keys them by inode and offset, so
// different mappings of the same page (JS's and the Watcher's own) meet.
//
// A second u32 of the same page, when given, counts the threads asleep on the
// word: a Watcher adds one before it looks at the word and waits, and takes
// it back when it wakes, so that a process changing a key can skip the wake
// (a system call) while nobody sleeps. Both sides use sequentially
// consistent atomics: either the sleeper sees the change, or the changer sees
// the sleeper.

#include "common.h"

#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <ctime>
#include <thread>

#include <sys/mman.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#define GENSYNC_HAVE_FUTEX 1
#endif

namespace gensync {
namespace {

#if defined(GENSYNC_HAVE_FUTEX)
long Futex(uint32_t* word, int op, uint32_t value, const struct timespec* timeout) {
  return syscall(SYS_futex, word, op, value, timeout, nullptr, 0);
}
#endif

// wake(buffer, byteOffset): wake every thread, in every process, waiting on
// the word. Best effort: a page that is no longer backed by the file (it
// was truncated) has nobody to wake, and the store moves off it anyway.
Napi::Value Wake(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsArrayBuffer() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "expected an ArrayBuffer and a byte offset").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  double offset = info[1].As<Napi::Number>().DoubleValue();
  double limit = static_cast<double>(buffer.ByteLength()) - sizeof(uint32_t);
  // Compared as doubles first: casting NaN or Infinity to an integer is undefined behaviour.
  if (!(offset >= 0 && offset <= limit) || std::fmod(offset, sizeof(uint32_t)) != 0) {
    Napi::RangeError::New(env, "offset must be an aligned offset inside the buffer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
#if defined(GENSYNC_HAVE_FUTEX)
  uint32_t* word = reinterpret_cast<uint32_t*>(static_cast<char*>(buffer.Data()) + static_cast<size_t>(offset));
  Futex(word, FUTEX_WAKE, INT_MAX, nullptr);
#endif
  return env.Undefined();
}

// The thread's JS call. It goes through the plain C API and ignores the
// status on purpose: while an environment is being torn down (process
// exit, a Worker ending or terminated) a pending call can still be
// dispatched, cannot run JS, and any attempt to throw about that is what
// node-addon-api turns into a fatal error. A call that cannot run is simply
// dropped: nobody is left to tell. An exception thrown by the callback
// itself stays pending and Node reports it as uncaught, as for any callback.
[[maybe_unused]] void CallJs(napi_env env, napi_value callback, void*, void*) {
  if (env == nullptr || callback == nullptr) return;
  napi_value receiver;
  napi_value ignored;
  if (napi_get_undefined(env, &receiver) != napi_ok) return;
  napi_call_function(env, receiver, callback, 0, nullptr, &ignored);
}

// new Watcher(fd, byteOffset, callback): calls callback() on the JS thread,
// soon after the u32 at byteOffset of the file changes. It maps that page of
// the file itself, so its thread never touches memory whose lifetime JS
// controls (at exit, Node frees ArrayBuffers before cleanup hooks run). It
// never keeps the event loop alive. stop() ends the thread; so does the
// environment shutting down.
class Watcher : public Napi::ObjectWrap<Watcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Watcher", {InstanceMethod("stop", &Watcher::Stop)});
  }

  explicit Watcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Watcher>(info) {
    Napi::Env env = info.Env();
#if !defined(GENSYNC_HAVE_FUTEX)
    Napi::Error::New(env, "futexes are not available on this platform").ThrowAsJavaScriptException();
#else
    int64_t fd_value, offset_value, sleepers_value = -1;
    if (!IntegerArgument(info, 0, "fd", 0, &fd_value) || !IntegerArgument(info, 1, "offset", 0, &offset_value)) return;
    if (info.Length() > 3 && !info[3].IsUndefined() && !IntegerArgument(info, 3, "sleepersOffset", 0, &sleepers_value)) return;
    int fd = static_cast<int>(fd_value);
    off_t offset = static_cast<off_t>(offset_value);
    if (info.Length() < 3 || !info[2].IsFunction() || offset % static_cast<off_t>(sizeof(uint32_t)) != 0) {
      Napi::TypeError::New(env, "expected a callback and an aligned offset").ThrowAsJavaScriptException();
      return;
    }
    long page = sysconf(_SC_PAGESIZE);
    off_t page_start = offset - offset % page;
    if (sleepers_value >= 0 && (sleepers_value % static_cast<int64_t>(sizeof(uint32_t)) != 0 || sleepers_value - sleepers_value % page != page_start)) {
      Napi::RangeError::New(env, "the sleepers offset must be aligned and on the page of the word").ThrowAsJavaScriptException();
      return;
    }
    void* address = mmap(nullptr, static_cast<size_t>(page), PROT_READ | PROT_WRITE, MAP_SHARED, fd, page_start);
    if (address == MAP_FAILED) {
      ThrowErrno(env, errno, "mmap");
      return;
    }
    napi_value name = Napi::String::New(env, "generation-sync watcher");
    napi_status status = napi_create_threadsafe_function(env, info[2], nullptr, name, kQueueLength, 1, nullptr, nullptr,
                                                         nullptr, CallJs, &tsfn_);
    if (status != napi_ok) {
      munmap(address, static_cast<size_t>(page));
      Napi::Error::New(env, "could not create the watcher's thread-safe function").ThrowAsJavaScriptException();
      return;
    }
    napi_unref_threadsafe_function(env, tsfn_);
    // Truncating the file must not kill this thread with SIGBUS either.
    RegisterRegion(address, static_cast<size_t>(page));
    mapping_ = address;
    mapping_length_ = static_cast<size_t>(page);
    word_ = reinterpret_cast<uint32_t*>(static_cast<char*>(address) + (offset - page_start));
    if (sleepers_value >= 0) sleepers_ = reinterpret_cast<uint32_t*>(static_cast<char*>(address) + (sleepers_value - page_start));
    env_ = env;
    napi_add_env_cleanup_hook(env_, &Watcher::OnEnvironmentCleanup, this);
    // Read the word now, on the JS thread: a change made right after this
    // constructor returns must count as a change, however late the thread starts.
    uint32_t seen = __atomic_load_n(word_, __ATOMIC_SEQ_CST);
    running_ = true;
    thread_ = std::thread([this, seen]() { Run(seen); });
#endif
  }

  ~Watcher() override { Shutdown(true); }

 private:
  static void OnEnvironmentCleanup(void* self) { static_cast<Watcher*>(self)->Shutdown(false); }

  // One pending call is enough: the callback reads the latest state.
  [[maybe_unused]] static constexpr size_t kQueueLength = 1;
  [[maybe_unused]] static constexpr long kStopRetryNs = 50 * 1000;  // 50 us
  // The thread re-checks whether it should stop at least this often, so
  // that stopping never depends on a wake-up arriving (FUTEX_WAKE cannot
  // reach a page whose file was truncated).
  [[maybe_unused]] static constexpr long kWaitSliceNs = 100 * 1000 * 1000;  // 100 ms

  void Run([[maybe_unused]] uint32_t seen) {
#if defined(GENSYNC_HAVE_FUTEX)
    const struct timespec slice = {0, kWaitSliceNs};
    while (!stopping_.load()) {
      if (sleepers_ != nullptr) __atomic_add_fetch(sleepers_, 1, __ATOMIC_SEQ_CST);
      if (__atomic_load_n(word_, __ATOMIC_SEQ_CST) == seen) Futex(word_, FUTEX_WAIT, seen, &slice);
      if (sleepers_ != nullptr) __atomic_sub_fetch(sleepers_, 1, __ATOMIC_SEQ_CST);
      uint32_t now = __atomic_load_n(word_, __ATOMIC_SEQ_CST);
      if (stopping_.load()) break;
      if (now != seen) {
        seen = now;
        // napi_queue_full means a call is already pending; it will see this change too.
        napi_call_threadsafe_function(tsfn_, nullptr, napi_tsfn_nonblocking);
      }
    }
#endif
    exited_.store(true);
  }

  // `removeHook` is false when called from the environment's cleanup hook itself.
  void Shutdown(bool removeHook) {
    if (!running_) return;
    running_ = false;
    if (removeHook) napi_remove_env_cleanup_hook(env_, &Watcher::OnEnvironmentCleanup, this);
    stopping_.store(true);
#if defined(GENSYNC_HAVE_FUTEX)
    // Wake the thread; a wake sent before it enters FUTEX_WAIT is lost, so
    // repeat until it has left its loop. It leaves within one wait slice
    // even if no wake can reach it.
    while (!exited_.load()) {
      Futex(word_, FUTEX_WAKE, INT_MAX, nullptr);
      struct timespec pause = {0, kStopRetryNs};
      nanosleep(&pause, nullptr);
    }
#endif
    if (thread_.joinable()) thread_.join();
    napi_release_threadsafe_function(tsfn_, napi_tsfn_release);
    UnregisterRegion(mapping_);
    munmap(mapping_, mapping_length_);
    mapping_ = nullptr;
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    Shutdown(true);
    return info.Env().Undefined();
  }

  void* mapping_ = nullptr;
  size_t mapping_length_ = 0;
  [[maybe_unused]] uint32_t* word_ = nullptr;
  [[maybe_unused]] uint32_t* sleepers_ = nullptr;
  napi_env env_ = nullptr;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> exited_{false};
  bool running_ = false;
  std::thread thread_;
  napi_threadsafe_function tsfn_ = nullptr;
};

}  // namespace

void InitWatcher(Napi::Env env, Napi::Object exports, Napi::Object capabilities) {
  exports.Set("wake", Napi::Function::New(env, Wake, "wake"));
  exports.Set("Watcher", Watcher::Define(env));
#if defined(GENSYNC_HAVE_FUTEX)
  capabilities.Set("futex", Napi::Boolean::New(env, true));
#else
  capabilities.Set("futex", Napi::Boolean::New(env, false));
#endif
  // Watchers count themselves asleep when given a sleepers word (older builds did not).
  capabilities.Set("sleepers", Napi::Boolean::New(env, true));
}

}  // namespace gensync
