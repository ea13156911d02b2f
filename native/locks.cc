// Kernel locks on single bytes of a store file. The one place that knows
// which lock each platform has.
//
// Linux: OFD locks, one byte each. The kernel drops them when the holder
// dies, and closing some other fd of the same file (a user's
// fs.readFileSync) does not. Byte 0 is the key-creation lock; other bytes
// are shared locks that mark watchers, and any process can ask whether a
// byte is held by someone else.
//
// Elsewhere (macOS, BSD): flock on the whole file serves the creation lock
// and there are no range locks (capabilities.rangeLocks is false; watching
// then polls). macOS SDKs define F_OFD_SETLK too, but not every macOS
// accepts it, so OFD locks are used on Linux only.

#include "common.h"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace gensync {
namespace {

// Byte of the store file that the key-creation lock covers.
constexpr off_t kCreationLockByte = 0;

#if defined(__linux__) && defined(F_OFD_SETLK) && defined(F_OFD_GETLK)
constexpr bool kRangeLocks = true;
constexpr const char* kLockCall = "fcntl(F_OFD_SETLK)";

int RangeLock(int fd, int command, struct flock* request, short type, off_t offset) {
  std::memset(request, 0, sizeof(*request));
  request->l_type = type;
  request->l_whence = SEEK_SET;
  request->l_start = offset;
  request->l_len = 1;
  return fcntl(fd, command, request) == 0 ? 0 : errno;
}

int TryLock(int fd, off_t offset, bool exclusive) {
  struct flock request;
  return RangeLock(fd, F_OFD_SETLK, &request, exclusive ? F_WRLCK : F_RDLCK, offset);
}

int Unlock(int fd, off_t offset) {
  struct flock request;
  return RangeLock(fd, F_OFD_SETLK, &request, F_UNLCK, offset);
}

// 0 and *held set, or an errno.
int HeldByOthers(int fd, off_t offset, bool* held) {
  struct flock request;
  int err = RangeLock(fd, F_OFD_GETLK, &request, F_WRLCK, offset);
  *held = err == 0 && request.l_type != F_UNLCK;
  return err;
}
#else
constexpr bool kRangeLocks = false;
constexpr const char* kLockCall = "flock";

int TryLock(int fd, off_t offset, bool exclusive) {
  if (offset != kCreationLockByte) return ENOTSUP;
  return flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0 ? 0 : errno;
}

int Unlock(int fd, off_t offset) {
  if (offset != kCreationLockByte) return ENOTSUP;
  return flock(fd, LOCK_UN) == 0 ? 0 : errno;
}

int HeldByOthers(int, off_t, bool*) { return ENOTSUP; }
#endif

bool IsContended(int err) { return err == EAGAIN || err == EACCES || err == EWOULDBLOCK; }

bool FdAndOffset(const Napi::CallbackInfo& info, int* fd, off_t* offset) {
  int64_t fd_value, offset_value;
  if (!IntegerArgument(info, 0, "fd", 0, &fd_value) || !IntegerArgument(info, 1, "offset", 0, &offset_value)) return false;
  *fd = static_cast<int>(fd_value);
  *offset = static_cast<off_t>(offset_value);
  return true;
}

// tryLock(fd, offset, exclusive) -> boolean: true once held, false if
// another holder conflicts. Waiting (how long, how often to retry) is the
// caller's, in TypeScript (src/system/lock-wait.ts).
Napi::Value TryLockByte(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  off_t offset;
  if (!FdAndOffset(info, &fd, &offset)) return env.Undefined();
  bool exclusive = info.Length() > 2 && info[2].ToBoolean().Value();
  for (;;) {
    int err = TryLock(fd, offset, exclusive);
    if (err == 0) return Napi::Boolean::New(env, true);
    if (err == EINTR) continue;
    if (IsContended(err)) return Napi::Boolean::New(env, false);
    ThrowErrno(env, err, kLockCall);
    return env.Undefined();
  }
}

// unlock(fd, offset)
Napi::Value UnlockByte(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  off_t offset;
  if (!FdAndOffset(info, &fd, &offset)) return env.Undefined();
  int err = Unlock(fd, offset);
  if (err != 0) ThrowErrno(env, err, kLockCall);
  return env.Undefined();
}

// lockedByOthers(fd, offset) -> boolean: whether any other open file
// description (in this process or another) holds a lock on the byte.
Napi::Value LockedByOthers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  off_t offset;
  if (!FdAndOffset(info, &fd, &offset)) return env.Undefined();
  bool held = false;
  int err = HeldByOthers(fd, offset, &held);
  if (err != 0) {
    ThrowErrno(env, err, "fcntl(F_OFD_GETLK)");
    return env.Undefined();
  }
  return Napi::Boolean::New(env, held);
}

}  // namespace

void InitLocks(Napi::Env env, Napi::Object exports, Napi::Object capabilities) {
  exports.Set("tryLock", Napi::Function::New(env, TryLockByte, "tryLock"));
  exports.Set("unlock", Napi::Function::New(env, UnlockByte, "unlock"));
  exports.Set("lockedByOthers", Napi::Function::New(env, LockedByOthers, "lockedByOthers"));
  capabilities.Set("rangeLocks", Napi::Boolean::New(env, kRangeLocks));
}

}  // namespace gensync
