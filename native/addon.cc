// generation-sync native addon.
//
// Only what JavaScript cannot do itself lives here: map a file MAP_SHARED
// and hand it to JS as an external ArrayBuffer, reserve a file's blocks,
// take, test and release kernel locks on byte ranges of it, rename without
// replacing, and wait for / wake a futex word in the mapping from a
// dedicated thread.
// Every argument is checked in TypeScript before it reaches this file; the
// checks below only keep a wrong call from crashing the process.

#include <napi.h>
#include <uv.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>

#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/futex.h>
#define GENSYNC_HAVE_FUTEX 1
#endif

namespace {

// Byte of the store file that the key-creation lock covers.
constexpr off_t kCreationLockByte = 0;

// Backoff bounds while waiting for a lock held by another process.
constexpr long kLockBackoffMinNs = 20 * 1000;        // 20 us
constexpr long kLockBackoffMaxNs = 1000 * 1000;      // 1 ms

// Throws a JS Error shaped like Node's own system errors: `code` is the
// errno name ("ENOSPC"), `errno` the number, `syscall` the failing call.
void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  const char* name = uv_err_name(-err);
  std::string message = std::string(name) + ": " + std::strerror(err) + ", " + syscall;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, name));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  error.ThrowAsJavaScriptException();
}

bool GetFd(const Napi::CallbackInfo& info, size_t index, int* fd) {
  if (info.Length() <= index || !info[index].IsNumber()) {
    Napi::TypeError::New(info.Env(), "file descriptor must be a number")
        .ThrowAsJavaScriptException();
    return false;
  }
  *fd = info[index].As<Napi::Number>().Int32Value();
  return true;
}

bool GetLength(const Napi::CallbackInfo& info, size_t index, size_t* length) {
  if (info.Length() <= index || !info[index].IsNumber()) {
    Napi::TypeError::New(info.Env(), "length must be a number").ThrowAsJavaScriptException();
    return false;
  }
  double value = info[index].As<Napi::Number>().DoubleValue();
  if (!(value > 0) || value > 9007199254740991.0) {
    Napi::RangeError::New(info.Env(), "length must be a positive safe integer")
        .ThrowAsJavaScriptException();
    return false;
  }
  *length = static_cast<size_t>(value);
  return true;
}

// map(fd, length) -> ArrayBuffer over a MAP_SHARED mapping of the file.
// The mapping lives until the ArrayBuffer is garbage-collected; the fd may
// be closed earlier. The caller has checked that the file is at least
// `length` bytes long, so no access through the buffer can SIGBUS unless
// another process shrinks the file.
Napi::Value Map(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  size_t length;
  if (!GetFd(info, 0, &fd) || !GetLength(info, 1, &length)) return env.Undefined();

  void* address = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (address == MAP_FAILED) {
    ThrowErrno(env, errno, "mmap");
    return env.Undefined();
  }
  return Napi::ArrayBuffer::New(
      env, address, length,
      [](Napi::Env, void* data, size_t* hint) {
        munmap(data, *hint);
        delete hint;
      },
      new size_t(length));
}

// allocate(fd, length): reserve every block up to `length` so that a full
// filesystem fails here, at creation, and never as a SIGBUS later.
Napi::Value Allocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  size_t length;
  if (!GetFd(info, 0, &fd) || !GetLength(info, 1, &length)) return env.Undefined();
#if defined(__linux__)
  int err = posix_fallocate(fd, 0, static_cast<off_t>(length));
  if (err != 0) ThrowErrno(env, err, "posix_fallocate");
#else
  // No posix_fallocate: write zeros so no block is left sparse.
  char zeros[65536] = {0};
  size_t done = 0;
  while (done < length) {
    size_t chunk = length - done < sizeof(zeros) ? length - done : sizeof(zeros);
    ssize_t written = pwrite(fd, zeros, chunk, static_cast<off_t>(done));
    if (written < 0) {
      if (errno == EINTR) continue;
      ThrowErrno(env, errno, "pwrite");
      return env.Undefined();
    }
    done += static_cast<size_t>(written);
  }
#endif
  return env.Undefined();
}

// Locks are Linux OFD locks on one byte each: the kernel drops them when the
// holder dies, and closing some other fd of the same file (a user's
// fs.readFileSync) does not. Byte 0 is the key-creation lock; other bytes
// are shared locks that mark watchers. Without OFD locks (macOS, BSD),
// flock on the whole file serves the creation lock and there are no
// range locks.
#if defined(F_OFD_SETLK)
constexpr bool kRangeLocks = true;

int RangeLock(int fd, int command, short type, off_t offset) {
  struct flock request;
  std::memset(&request, 0, sizeof(request));
  request.l_type = type;
  request.l_whence = SEEK_SET;
  request.l_start = offset;
  request.l_len = 1;
  return fcntl(fd, command, &request) == 0 ? 0 : errno;
}

int TryLock(int fd, off_t offset, bool exclusive) {
  return RangeLock(fd, F_OFD_SETLK, exclusive ? F_WRLCK : F_RDLCK, offset);
}

int Unlock(int fd, off_t offset) { return RangeLock(fd, F_OFD_SETLK, F_UNLCK, offset); }
#else
constexpr bool kRangeLocks = false;

int TryLock(int fd, off_t offset, bool exclusive) {
  if (offset != kCreationLockByte) return ENOTSUP;
  return flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0 ? 0 : errno;
}

int Unlock(int fd, off_t offset) {
  if (offset != kCreationLockByte) return ENOTSUP;
  return flock(fd, LOCK_UN) == 0 ? 0 : errno;
}
#endif

bool IsContended(int err) { return err == EAGAIN || err == EACCES || err == EWOULDBLOCK; }

bool GetOffset(const Napi::CallbackInfo& info, size_t index, off_t* offset) {
  if (info.Length() <= index || !info[index].IsNumber()) {
    Napi::TypeError::New(info.Env(), "offset must be a number").ThrowAsJavaScriptException();
    return false;
  }
  double value = info[index].As<Napi::Number>().DoubleValue();
  if (!(value >= 0) || value > 9007199254740991.0) {
    Napi::RangeError::New(info.Env(), "offset must be a non-negative safe integer").ThrowAsJavaScriptException();
    return false;
  }
  *offset = static_cast<off_t>(value);
  return true;
}

// lock(fd, offset, exclusive, timeoutMs) -> boolean: true once held, false
// if another holder still conflicted when the timeout passed.
Napi::Value Lock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  off_t offset;
  if (!GetFd(info, 0, &fd) || !GetOffset(info, 1, &offset)) return env.Undefined();
  if (info.Length() < 4 || !info[2].IsBoolean() || !info[3].IsNumber()) {
    Napi::TypeError::New(env, "exclusive must be a boolean and timeout a number").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  bool exclusive = info[2].As<Napi::Boolean>().Value();
  double timeout_ms = info[3].As<Napi::Number>().DoubleValue();

  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  long backoff_ns = kLockBackoffMinNs;
  for (;;) {
    int err = TryLock(fd, offset, exclusive);
    if (err == 0) return Napi::Boolean::New(env, true);
    if (err == EINTR) continue;
    if (!IsContended(err)) {
      ThrowErrno(env, err, "fcntl(F_OFD_SETLK)");
      return env.Undefined();
    }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double elapsed_ms = (now.tv_sec - start.tv_sec) * 1e3 + (now.tv_nsec - start.tv_nsec) / 1e6;
    if (elapsed_ms >= timeout_ms) return Napi::Boolean::New(env, false);
    struct timespec pause = {0, backoff_ns};
    nanosleep(&pause, nullptr);
    backoff_ns = backoff_ns * 2 > kLockBackoffMaxNs ? kLockBackoffMaxNs : backoff_ns * 2;
  }
}

// unlock(fd, offset)
Napi::Value UnlockRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  off_t offset;
  if (!GetFd(info, 0, &fd) || !GetOffset(info, 1, &offset)) return env.Undefined();
  int err = Unlock(fd, offset);
  if (err != 0) ThrowErrno(env, err, "fcntl(F_OFD_SETLK)");
  return env.Undefined();
}

// lockedByOthers(fd, offset) -> boolean: whether any other open file
// description (in this process or another) holds a lock on the byte.
Napi::Value LockedByOthers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  off_t offset;
  if (!GetFd(info, 0, &fd) || !GetOffset(info, 1, &offset)) return env.Undefined();
#if defined(F_OFD_GETLK)
  struct flock request;
  std::memset(&request, 0, sizeof(request));
  request.l_type = F_WRLCK;
  request.l_whence = SEEK_SET;
  request.l_start = offset;
  request.l_len = 1;
  if (fcntl(fd, F_OFD_GETLK, &request) != 0) {
    ThrowErrno(env, errno, "fcntl(F_OFD_GETLK)");
    return env.Undefined();
  }
  return Napi::Boolean::New(env, request.l_type != F_UNLCK);
#else
  ThrowErrno(env, ENOTSUP, "fcntl(F_OFD_GETLK)");
  return env.Undefined();
#endif
}

// renameNoReplace(from, to): publish a fully built file under its final
// name, failing with EEXIST instead of replacing a file another process
// made first. Throws ENOSYS/EINVAL where the kernel or filesystem cannot;
// the caller then falls back to link + unlink.
Napi::Value RenameNoReplace(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    Napi::TypeError::New(env, "paths must be strings").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string from = info[0].As<Napi::String>().Utf8Value();
  std::string to = info[1].As<Napi::String>().Utf8Value();
#if defined(__linux__) && defined(SYS_renameat2)
  constexpr unsigned int kRenameNoReplace = 1;  // RENAME_NOREPLACE
  if (syscall(SYS_renameat2, AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), kRenameNoReplace) != 0) {
    ThrowErrno(env, errno, "renameat2");
  }
#else
  ThrowErrno(env, ENOSYS, "renameat2");
#endif
  return env.Undefined();
}

// --- Change notification --------------------------------------------------
//
// A u32 word in the file is the store's notification sequence. A process
// that changes a watched key adds one to it (from JS, with Atomics) and calls
// wake(); each process with watchers runs one Watcher: a dedicated thread
// that sleeps in FUTEX_WAIT on the word and, when it changes, calls back
// into JS through a thread-safe function. Process-shared futexes work on
// shared file mappings: the kernel keys them by inode and offset, so
// different mappings of the same page (JS's and the Watcher's own) meet.

bool GetWord(const Napi::CallbackInfo& info, uint32_t** word) {
  if (info.Length() < 2 || !info[0].IsArrayBuffer() || !info[1].IsNumber()) {
    Napi::TypeError::New(info.Env(), "expected an ArrayBuffer and a byte offset").ThrowAsJavaScriptException();
    return false;
  }
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  double offset = info[1].As<Napi::Number>().DoubleValue();
  if (!(offset >= 0) || static_cast<size_t>(offset) % sizeof(uint32_t) != 0 ||
      static_cast<size_t>(offset) + sizeof(uint32_t) > buffer.ByteLength()) {
    Napi::RangeError::New(info.Env(), "offset must be an aligned offset inside the buffer").ThrowAsJavaScriptException();
    return false;
  }
  *word = reinterpret_cast<uint32_t*>(static_cast<char*>(buffer.Data()) + static_cast<size_t>(offset));
  return true;
}

#if defined(GENSYNC_HAVE_FUTEX)
long Futex(uint32_t* word, int op, uint32_t value) {
  return syscall(SYS_futex, word, op, value, nullptr, nullptr, 0);
}
#endif

// wake(buffer, byteOffset): wake every thread, in every process, waiting on the word.
Napi::Value Wake(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t* word;
  if (!GetWord(info, &word)) return env.Undefined();
#if defined(GENSYNC_HAVE_FUTEX)
  if (Futex(word, FUTEX_WAKE, INT_MAX) < 0) ThrowErrno(env, errno, "futex(FUTEX_WAKE)");
#endif
  return env.Undefined();
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
    int fd;
    off_t offset;
    if (!GetFd(info, 0, &fd) || !GetOffset(info, 1, &offset)) return;
    if (info.Length() < 3 || !info[2].IsFunction()) {
      Napi::TypeError::New(env, "callback must be a function").ThrowAsJavaScriptException();
      return;
    }
    if (offset % static_cast<off_t>(sizeof(uint32_t)) != 0) {
      Napi::RangeError::New(env, "offset must be aligned to 4 bytes").ThrowAsJavaScriptException();
      return;
    }
    long page = sysconf(_SC_PAGESIZE);
    off_t page_start = offset - offset % page;
    void* address = mmap(nullptr, static_cast<size_t>(page), PROT_READ | PROT_WRITE, MAP_SHARED, fd, page_start);
    if (address == MAP_FAILED) {
      ThrowErrno(env, errno, "mmap");
      return;
    }
    mapping_ = address;
    mapping_length_ = static_cast<size_t>(page);
    word_ = reinterpret_cast<uint32_t*>(static_cast<char*>(address) + (offset - page_start));
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[2].As<Napi::Function>(), "generation-sync watcher", kQueueLength, 1);
    tsfn_.Unref(env);
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
  static constexpr size_t kQueueLength = 1;
  static constexpr long kStopRetryNs = 50 * 1000;  // 50 us

  void Run(uint32_t seen) {
#if defined(GENSYNC_HAVE_FUTEX)
    while (!stopping_.load()) {
      Futex(word_, FUTEX_WAIT, seen);
      uint32_t now = __atomic_load_n(word_, __ATOMIC_SEQ_CST);
      if (stopping_.load()) break;
      if (now != seen) {
        seen = now;
        // napi_queue_full means a call is already pending; it will see this change too.
        tsfn_.NonBlockingCall();
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
    // A wake sent before the thread enters FUTEX_WAIT is lost, so repeat it
    // until the thread has left its loop (normally the first wake does).
    while (!exited_.load()) {
      Futex(word_, FUTEX_WAKE, INT_MAX);
      struct timespec pause = {0, kStopRetryNs};
      nanosleep(&pause, nullptr);
    }
#endif
    if (thread_.joinable()) thread_.join();
    tsfn_.Release();
    munmap(mapping_, mapping_length_);
    mapping_ = nullptr;
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    Shutdown(true);
    return info.Env().Undefined();
  }

  void* mapping_ = nullptr;
  size_t mapping_length_ = 0;
  uint32_t* word_ = nullptr;
  napi_env env_ = nullptr;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> exited_{false};
  bool running_ = false;
  std::thread thread_;
  Napi::ThreadSafeFunction tsfn_;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("map", Napi::Function::New(env, Map, "map"));
  exports.Set("allocate", Napi::Function::New(env, Allocate, "allocate"));
  exports.Set("lock", Napi::Function::New(env, Lock, "lock"));
  exports.Set("unlock", Napi::Function::New(env, UnlockRange, "unlock"));
  exports.Set("lockedByOthers", Napi::Function::New(env, LockedByOthers, "lockedByOthers"));
  exports.Set("rangeLocks", Napi::Boolean::New(env, kRangeLocks));
  exports.Set("wake", Napi::Function::New(env, Wake, "wake"));
  exports.Set("Watcher", Watcher::Define(env));
#if defined(GENSYNC_HAVE_FUTEX)
  exports.Set("futex", Napi::Boolean::New(env, true));
#else
  exports.Set("futex", Napi::Boolean::New(env, false));
#endif
  exports.Set("renameNoReplace", Napi::Function::New(env, RenameNoReplace, "renameNoReplace"));
  return exports;
}

}  // namespace

NODE_API_MODULE(generation_sync, Init)
