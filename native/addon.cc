// generation-sync native addon.
//
// Only what JavaScript cannot do itself lives here: map a file MAP_SHARED
// and hand it to JS as an external ArrayBuffer, reserve a file's blocks,
// take and release a kernel lock on it, and rename without replacing.
// Every argument is checked in TypeScript before it reaches this file; the
// checks below only keep a wrong call from crashing the process.

#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <string>

#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

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

// One non-blocking attempt at the creation lock. Returns 0, or an errno.
// Linux OFD locks and BSD flock both belong to the open file description:
// the kernel drops them when the holder dies, and closing some other fd of
// the same file (a user's fs.readFileSync) does not.
int TryLock(int fd) {
#if defined(F_OFD_SETLK)
  struct flock request;
  std::memset(&request, 0, sizeof(request));
  request.l_type = F_WRLCK;
  request.l_whence = SEEK_SET;
  request.l_start = kCreationLockByte;
  request.l_len = 1;
  if (fcntl(fd, F_OFD_SETLK, &request) == 0) return 0;
  return errno;
#else
  if (flock(fd, LOCK_EX | LOCK_NB) == 0) return 0;
  return errno;
#endif
}

bool IsContended(int err) { return err == EAGAIN || err == EACCES || err == EWOULDBLOCK; }

// lock(fd, timeoutMs) -> boolean: true once held, false if another process
// still held it when the timeout passed.
Napi::Value Lock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, &fd)) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "timeout must be a number").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  double timeout_ms = info[1].As<Napi::Number>().DoubleValue();

  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  long backoff_ns = kLockBackoffMinNs;
  for (;;) {
    int err = TryLock(fd);
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

Napi::Value Unlock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, &fd)) return env.Undefined();
#if defined(F_OFD_SETLK)
  struct flock request;
  std::memset(&request, 0, sizeof(request));
  request.l_type = F_UNLCK;
  request.l_whence = SEEK_SET;
  request.l_start = kCreationLockByte;
  request.l_len = 1;
  if (fcntl(fd, F_OFD_SETLK, &request) != 0) ThrowErrno(env, errno, "fcntl(F_OFD_SETLK)");
#else
  if (flock(fd, LOCK_UN) != 0) ThrowErrno(env, errno, "flock");
#endif
  return env.Undefined();
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("map", Napi::Function::New(env, Map, "map"));
  exports.Set("allocate", Napi::Function::New(env, Allocate, "allocate"));
  exports.Set("lock", Napi::Function::New(env, Lock, "lock"));
  exports.Set("unlock", Napi::Function::New(env, Unlock, "unlock"));
  exports.Set("renameNoReplace", Napi::Function::New(env, RenameNoReplace, "renameNoReplace"));
  return exports;
}

}  // namespace

NODE_API_MODULE(generation_sync, Init)
