// generation-sync native addon.
//
// Only what JavaScript cannot do itself lives in native code, one source
// file per resource: mapping a file MAP_SHARED and surviving its
// truncation (mapping.cc), waiting for and waking a futex word from a
// dedicated thread (watcher.cc), kernel locks on bytes of a file
// (locks.cc), reserving blocks and renaming without replacing (files.cc).
// No policy lives here: how long to wait, when to retry, what an error
// means are all decided in TypeScript.

#include "common.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // What this build offers on this platform: { futex, rangeLocks }.
  Napi::Object capabilities = Napi::Object::New(env);
  gensync::InitMapping(env, exports, capabilities);
  gensync::InitWatcher(env, exports, capabilities);
  gensync::InitLocks(env, exports, capabilities);
  gensync::InitFiles(env, exports, capabilities);
  capabilities.Freeze();
  exports.Set("capabilities", capabilities);
  return exports;
}

}  // namespace

NODE_API_MODULE(generation_sync, Init)
