// File operations Node does not offer: reserving a file's blocks, and
// renaming without replacing.

#include "common.h"

#include <cerrno>
#include <string>

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#if defined(__linux__)
#include <sys/syscall.h>
#endif

namespace gensync {
namespace {

// allocate(fd, length): reserve every block up to `length` so that a full
// filesystem fails here, at creation, and never as a SIGBUS later.
Napi::Value Allocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd, length;
  if (!IntegerArgument(info, 0, "fd", 0, &fd) || !IntegerArgument(info, 1, "length", 1, &length)) return env.Undefined();
#if defined(__linux__)
  int err = posix_fallocate(static_cast<int>(fd), 0, static_cast<off_t>(length));
  if (err != 0) ThrowErrno(env, err, "posix_fallocate");
#else
  // No posix_fallocate: write zeros so no block is left sparse.
  char zeros[65536] = {0};
  int64_t done = 0;
  while (done < length) {
    size_t chunk = length - done < static_cast<int64_t>(sizeof(zeros)) ? static_cast<size_t>(length - done) : sizeof(zeros);
    ssize_t written = pwrite(static_cast<int>(fd), zeros, chunk, static_cast<off_t>(done));
    if (written < 0) {
      if (errno == EINTR) continue;
      ThrowErrno(env, errno, "pwrite");
      return env.Undefined();
    }
    done += written;
  }
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

}  // namespace

void InitFiles(Napi::Env env, Napi::Object exports, Napi::Object) {
  exports.Set("allocate", Napi::Function::New(env, Allocate, "allocate"));
  exports.Set("renameNoReplace", Napi::Function::New(env, RenameNoReplace, "renameNoReplace"));
}

}  // namespace gensync
