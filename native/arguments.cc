// Errors and arguments shared by the addon's source files.

#include "common.h"

#include <uv.h>

#include <cstring>
#include <string>

namespace gensync {

void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  const char* name = uv_err_name(-err);
  std::string message = std::string(name) + ": " + std::strerror(err) + ", " + syscall;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, name));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  error.ThrowAsJavaScriptException();
}

bool IntegerArgument(const Napi::CallbackInfo& info, size_t index, const char* name, double min, int64_t* out) {
  // Compared as doubles first: casting NaN or Infinity to an integer is undefined behaviour.
  double value = info.Length() > index && info[index].IsNumber() ? info[index].As<Napi::Number>().DoubleValue() : -1;
  if (!(value >= min) || value > 9007199254740991.0 || value != static_cast<double>(static_cast<int64_t>(value))) {
    std::string message = std::string(name) + " must be an integer of at least " + std::to_string(static_cast<int64_t>(min));
    Napi::TypeError::New(info.Env(), message).ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<int64_t>(value);
  return true;
}

}  // namespace gensync
