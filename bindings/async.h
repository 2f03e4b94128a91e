// One way to run every op, sync or async. A binding validates its arguments,
// then hands `run_op` a kernel closure (plain C++, no Node-API inside) and a
// result closure (builds the JS value on the main thread). Async calls run the
// kernel on a libuv worker thread, holding references to every JS value the
// kernel reads or writes until the promise settles.
#pragma once
#include <napi.h>

#include <functional>
#include <string>
#include <vector>

#include "args.h"
#include "sparsekit/common.h"

namespace sparsekit {
namespace binding {

// Builds the op's JS result on the main thread. `kept` holds the values passed
// as `keep`, in order: a napi_value captured at the call is dead by the time an
// async op settles, so results must be built from these.
using ResultFn = std::function<Napi::Value(Napi::Env, const std::vector<Napi::Value>& kept)>;

class OpWorker : public Napi::AsyncWorker {
 public:
  OpWorker(Napi::Env env, std::string fn, std::function<Status()> kernel,
           ResultFn result, const std::vector<Napi::Value>& keep)
      : Napi::AsyncWorker(env, fn.c_str()),
        fn_(std::move(fn)),
        kernel_(std::move(kernel)),
        result_(std::move(result)),
        deferred_(Napi::Promise::Deferred::New(env)) {
    for (const auto& v : keep) {
      refs_.emplace_back();
      if (!v.IsEmpty() && v.IsObject()) refs_.back() = Napi::Persistent(v);
    }
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override { status_ = kernel_(); }
  void OnOK() override {
    Napi::Env env = Env();
    if (!status_.ok()) {
      try {
        throw_if_error(env, fn_, status_);
      } catch (const Napi::Error& e) {
        deferred_.Reject(e.Value());
      }
      return;
    }
    try {
      std::vector<Napi::Value> kept;
      for (auto& r : refs_) kept.push_back(r.IsEmpty() ? env.Undefined() : r.Value());
      deferred_.Resolve(result_(env, kept));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::string fn_;
  std::function<Status()> kernel_;
  ResultFn result_;
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::Reference<Napi::Value>> refs_;
  Status status_;
};

// Runs the op now (sync) or returns a Promise (async). Arguments must already
// be validated, so both variants throw the same errors at the call.
inline Napi::Value run_op(Napi::Env env, bool async, const std::string& fn, std::function<Status()> kernel,
                          ResultFn result, const std::vector<Napi::Value>& keep) {
  if (!async) {
    throw_if_error(env, fn, kernel());
    return result(env, keep);
  }
  auto* w = new OpWorker(env, fn, std::move(kernel), std::move(result), keep);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace binding
}  // namespace sparsekit
