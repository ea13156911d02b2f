// Shared by the addon's source files: errno errors and argument readers.
// TypeScript checks every argument before it reaches native code; these
// readers only keep a wrong call from being undefined behaviour.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <sys/types.h>

namespace gensync {

// Throws a JS Error shaped like Node's own system errors: `code` is the
// errno name ("ENOSPC"), `errno` the number, `syscall` the failing call.
void ThrowErrno(Napi::Env env, int err, const char* syscall);

bool GetFd(const Napi::CallbackInfo& info, size_t index, int* fd);
bool GetLength(const Napi::CallbackInfo& info, size_t index, size_t* length);
bool GetOffset(const Napi::CallbackInfo& info, size_t index, off_t* offset);

// Mapped store memory (mapping.cc). A region is registered for as long as it
// is mapped, so that a SIGBUS inside it (the file shrank under us) is
// absorbed instead of killing the process.
void InstallFaultHandler();
bool RegisterRegion(void* start, size_t length);
void UnregisterRegion(void* start);
void InitMapping(Napi::Env env, Napi::Object exports);

// The change-notification thread (watcher.cc).
void InitWatcher(Napi::Env env, Napi::Object exports);

}  // namespace gensync
