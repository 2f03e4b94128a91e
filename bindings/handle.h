// Opaque JS handles to native objects (packed weights, sparse formats).
//
// A handle holds a shared_ptr: async work copies it, so collecting the handle
// while a call runs is safe. Handles are made only by the binding's factory
// functions (constructing the class from JS throws), and their descriptive
// properties are read-only values set once at creation.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <string>

#include "args.h"
#include "families.h"

namespace sparsekit {
namespace binding {

template <class T>
class Handle : public Napi::ObjectWrap<Handle<T>> {
 public:
  using Describe = std::function<void(Napi::Env, Napi::Object&, const T&)>;

  // Registers the class `name` on exports. `how` tells the user how to make one.
  static void Init(Napi::Env env, Napi::Object exports, const char* name, const char* how) {
    name_ = name;
    how_ = how;
    Napi::Function f = Handle::DefineClass(env, name, {});
    addon_data(env)->handle_ctors[name] = Napi::Persistent(f);
    exports.Set(name, f);
  }

  explicit Handle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Handle<T>>(info) {
    if (info.Length() != 1 || !info[0].IsExternal()) throw_type(info.Env(), name_, how_);
    ptr_ = *info[0].As<Napi::External<std::shared_ptr<T>>>().Data();
  }

  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<T> p, const Describe& describe) {
    const T& ref = *p;
    auto ext = Napi::External<std::shared_ptr<T>>::New(env, new std::shared_ptr<T>(std::move(p)),
                                                       [](Napi::Env, std::shared_ptr<T>* q) { delete q; });
    Napi::Object o = ctor(env).New({ext});
    describe(env, o, ref);
    return o;
  }

  static bool Is(const Napi::Value& v) {
    if (!v.IsObject()) return false;
    Napi::FunctionReference& c = ctor(v.Env());
    return !c.IsEmpty() && v.As<Napi::Object>().InstanceOf(c.Value());
  }

  // The native object behind `v`, or a TypeError naming the argument.
  static std::shared_ptr<T> Get(Napi::Env env, const std::string& fn, const std::string& arg, const Napi::Value& v) {
    if (!Is(v)) throw_type(env, fn, arg + " must be a " + name_ + " (" + how_ + "), got " + describe(v));
    return Handle::Unwrap(v.As<Napi::Object>())->ptr_;
  }

  // Sets a read-only, enumerable property.
  static void Prop(Napi::Object& o, const char* key, Napi::Value v) {
    o.DefineProperty(Napi::PropertyDescriptor::Value(key, v, napi_enumerable));
  }

 private:
  static Napi::FunctionReference& ctor(Napi::Env env) { return addon_data(env)->handle_ctors[name_]; }
  static inline const char* name_ = "";
  static inline const char* how_ = "";
  std::shared_ptr<T> ptr_;
};

}  // namespace binding
}  // namespace sparsekit
