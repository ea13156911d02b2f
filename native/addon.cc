// generation-sync native addon.
//
// Only what JavaScript cannot do itself lives in native code: map a file
// MAP_SHARED and hand it to JS as an external ArrayBuffer, and survive the
// file being truncated (mapping.cc); wait for / wake a futex word in the
// mapping from a dedicated thread (watcher.cc); and, here, reserve a file's
// blocks, take, test and release kernel locks on byte ranges of it, and
// rename without replacing.
// Every argument is checked in TypeScript before it reaches native code;
// the checks only keep a wrong call from crashing the process.

#include "common.h"

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

namespace gensync {

// Byte of the store file that the key-creation lock covers.
constexpr off_t kCreationLockByte = 0;

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

namespace {

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

// tryLock(fd, offset, exclusive) -> boolean: true once held, false if
// another holder conflicts. Waiting (how long, how often to retry) is the
// caller's, in TypeScript (src/system/lock-wait.ts).
Napi::Value TryLockRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  off_t offset;
  if (!GetFd(info, 0, &fd) || !GetOffset(info, 1, &offset)) return env.Undefined();
  if (info.Length() < 3 || !info[2].IsBoolean()) {
    Napi::TypeError::New(env, "exclusive must be a boolean").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  bool exclusive = info[2].As<Napi::Boolean>().Value();
  for (;;) {
    int err = TryLock(fd, offset, exclusive);
    if (err == 0) return Napi::Boolean::New(env, true);
    if (err == EINTR) continue;
    if (IsContended(err)) return Napi::Boolean::New(env, false);
    ThrowErrno(env, err, "fcntl(F_OFD_SETLK)");
    return env.Undefined();
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitMapping(env, exports);
  InitWatcher(env, exports);
  exports.Set("allocate", Napi::Function::New(env, Allocate, "allocate"));
  exports.Set("tryLock", Napi::Function::New(env, TryLockRange, "tryLock"));
  exports.Set("unlock", Napi::Function::New(env, UnlockRange, "unlock"));
  exports.Set("lockedByOthers", Napi::Function::New(env, LockedByOthers, "lockedByOthers"));
  exports.Set("rangeLocks", Napi::Boolean::New(env, kRangeLocks));
  exports.Set("renameNoReplace", Napi::Function::New(env, RenameNoReplace, "renameNoReplace"));
  return exports;
}

}  // namespace
}  // namespace gensync

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) { return gensync::Init(env, exports); }
}  // namespace

NODE_API_MODULE(generation_sync, Init)
