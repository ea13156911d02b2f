// Shared by the addon's source files: one per resource (arguments.cc,
// files.cc, locks.cc, mapping.cc, watcher.cc), each registering its
// functions and capabilities from addon.cc's Init.
//
// TypeScript checks every argument before it reaches native code; the one
// argument reader here only keeps a wrong call from being undefined
// behaviour.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <sys/types.h>

namespace gensync {

// Throws a JS Error shaped like Node's own system errors: `code` is the
// errno name ("ENOSPC"), `errno` the number, `syscall` the failing call.
void ThrowErrno(Napi::Env env, int err, const char* syscall);

// Reads argument `index` as an integer >= min (a safe integer); otherwise
// throws a TypeError naming the argument and returns false.
bool IntegerArgument(const Napi::CallbackInfo& info, size_t index, const char* name, double min, int64_t* out);

// Each resource registers its functions on `exports` and says what this
// platform offers on `capabilities` (exported as one object).
void InitFiles(Napi::Env env, Napi::Object exports, Napi::Object capabilities);
void InitLocks(Napi::Env env, Napi::Object exports, Napi::Object capabilities);
void InitMapping(Napi::Env env, Napi::Object exports, Napi::Object capabilities);
void InitWatcher(Napi::Env env, Napi::Object exports, Napi::Object capabilities);

// Mapped store memory (mapping.cc). A region is registered for as long as it
// is mapped, so that a SIGBUS inside it (the file shrank under us) is
// absorbed instead of killing the process.
void InstallFaultHandler();
bool RegisterRegion(void* start, size_t length);
void UnregisterRegion(void* start);

}  // namespace gensync
