// Run-time loading of the CUDA plugin. Plain POSIX dlopen: the core stays free
// of CUDA headers and libraries, and a machine without the plugin, without a
// driver or without a GPU only sees info().backends.cuda say why.
#include "sparsekit/cuda_plugin.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#if !defined(_WIN32)
#include <dlfcn.h>
#include <sys/stat.h>
#endif

namespace sparsekit {

const char* cuda_plugin_file_name() {
#if defined(__APPLE__)
  return "libsparsekit_cuda.dylib";
#elif defined(_WIN32)
  return "sparsekit_cuda.dll";
#else
  return "libsparsekit_cuda.so";
#endif
}

const char* prebuild_platform_dir() {
#if defined(__linux__) && defined(__x86_64__)
  return "linux-x64";
#elif defined(__linux__) && defined(__aarch64__)
  return "linux-arm64";
#elif defined(__APPLE__) && defined(__aarch64__)
  return "darwin-arm64";
#elif defined(__APPLE__)
  return "darwin-x64";
#elif defined(_WIN32)
  return "win32-x64";
#else
  return "unknown";
#endif
}

namespace {

void set_state(CudaBackend* b, CudaState s, const char* status, std::string reason) {
  b->state = s;
  b->status = status;
  b->reason = std::move(reason);
}

#if !defined(_WIN32)
bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join_list(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

template <class F>
bool resolve(void* lib, const char* name, F* out, std::string* missing) {
  void* p = dlsym(lib, name);
  if (!p) {
    if (!missing->empty()) *missing += ", ";
    *missing += name;
    return false;
  }
  *out = reinterpret_cast<F>(p);
  return true;
}

// Resolves the whole interface; `missing` lists what is not there.
bool resolve_api(void* lib, CudaApi* a, std::string* missing) {
  bool ok = true;
  ok &= resolve(lib, "sk_cuda_abi_version", &a->abi_version, missing);
  ok &= resolve(lib, "sk_cuda_query", &a->query, missing);
  ok &= resolve(lib, "sk_cuda_last_error", &a->last_error, missing);
  ok &= resolve(lib, "sk_cuda_kernel_names", &a->kernel_names, missing);
  ok &= resolve(lib, "sk_cuda_set_option", &a->set_option, missing);
  ok &= resolve(lib, "sk_cuda_stream_create", &a->stream_create, missing);
  ok &= resolve(lib, "sk_cuda_stream_destroy", &a->stream_destroy, missing);
  ok &= resolve(lib, "sk_cuda_stream_synchronize", &a->stream_synchronize, missing);
  ok &= resolve(lib, "sk_cuda_stream_wait", &a->stream_wait, missing);
  ok &= resolve(lib, "sk_cuda_malloc", &a->malloc, missing);
  ok &= resolve(lib, "sk_cuda_free", &a->free, missing);
  ok &= resolve(lib, "sk_cuda_memcpy_h2d", &a->memcpy_h2d, missing);
  ok &= resolve(lib, "sk_cuda_memcpy_d2h", &a->memcpy_d2h, missing);
  ok &= resolve(lib, "sk_cuda_memcpy_d2d", &a->memcpy_d2d, missing);
  ok &= resolve(lib, "sk_cuda_memset", &a->memset, missing);
  ok &= resolve(lib, "sk_cuda_convert", &a->convert, missing);
  ok &= resolve(lib, "sk_cuda_fill_random", &a->fill_random, missing);
  ok &= resolve(lib, "sk_cuda_linear", &a->linear, missing);
  ok &= resolve(lib, "sk_cuda_grouped_linear", &a->grouped_linear, missing);
  ok &= resolve(lib, "sk_cuda_permute", &a->permute, missing);
  ok &= resolve(lib, "sk_cuda_invert_slots", &a->invert_slots, missing);
  ok &= resolve(lib, "sk_cuda_combine", &a->combine, missing);
  ok &= resolve(lib, "sk_cuda_add_rows", &a->add_rows, missing);
  ok &= resolve(lib, "sk_cuda_bsr_linear", &a->bsr_linear, missing);
  ok &= resolve(lib, "sk_cuda_sddmm", &a->sddmm, missing);
  ok &= resolve(lib, "sk_cuda_nm24_linear", &a->nm24_linear, missing);
  ok &= resolve(lib, "sk_cuda_nm_linear", &a->nm_linear, missing);
  ok &= resolve(lib, "sk_cuda_route", &a->route, missing);
  return ok;
}

void load(CudaBackend* b, const std::vector<std::string>& dirs) {
  const char* env = std::getenv("SPARSEKIT_CUDA_PLUGIN");
  std::string path;
  if (env && *env) {
    std::string v(env);
    if (v == "off" || v == "0" || v == "none" || v == "false") {
      set_state(b, CudaState::kDisabled, "disabled", "the CUDA backend is disabled by SPARSEKIT_CUDA_PLUGIN=" + v);
      return;
    }
    b->searched.push_back(v);
    if (!file_exists(v)) {
      set_state(b, CudaState::kNoPlugin, "no-plugin",
                "no CUDA plugin: SPARSEKIT_CUDA_PLUGIN=" + v + " is not a file");
      return;
    }
    path = v;
  } else {
    for (const auto& d : dirs) {
      std::string p = d + "/" + cuda_plugin_file_name();
      b->searched.push_back(p);
      if (path.empty() && file_exists(p)) path = p;
    }
    if (path.empty()) {
      set_state(b, CudaState::kNoPlugin, "no-plugin",
                std::string("no CUDA plugin found (looked for ") + join_list(b->searched) +
                    "); build it with `npm run build:cuda` or point SPARSEKIT_CUDA_PLUGIN at " +
                    cuda_plugin_file_name());
      return;
    }
  }
  b->plugin_path = path;
  dlerror();
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* e = dlerror();
    set_state(b, CudaState::kLoadError, "load-error",
              "the CUDA plugin " + path + " could not be loaded: " + (e ? e : "unknown dlopen error"));
    return;
  }
  // The ABI version first: an older or newer plugin may not have the rest.
  int (*abi)() = nullptr;
  std::string missing;
  if (!resolve(lib, "sk_cuda_abi_version", &abi, &missing)) {
    set_state(b, CudaState::kLoadError, "load-error",
              "the CUDA plugin " + path + " is not a sparsekit plugin (no sk_cuda_abi_version)");
    dlclose(lib);
    return;
  }
  b->plugin_abi = abi();
  if (b->plugin_abi != SK_CUDA_ABI_VERSION) {
    set_state(b, CudaState::kAbiMismatch, "abi-mismatch",
              "the CUDA plugin " + path + " has ABI version " + std::to_string(b->plugin_abi) +
                  " but this addon needs version " + std::to_string(SK_CUDA_ABI_VERSION) +
                  ": rebuild the plugin (npm run build:cuda) or install matching versions");
    dlclose(lib);
    return;
  }
  missing.clear();
  if (!resolve_api(lib, &b->api, &missing)) {
    set_state(b, CudaState::kLoadError, "load-error",
              "the CUDA plugin " + path + " lacks functions of ABI version " + std::to_string(SK_CUDA_ABI_VERSION) +
                  ": " + missing);
    b->api = CudaApi{};
    dlclose(lib);
    return;
  }
  // Kept loaded for the life of the process from here on: device memory and
  // streams handed out must stay valid.
  sk_cuda_device_info& d = b->device;
  b->api.query(&d);
  switch (d.status) {
    case SK_CUDA_OK: {
      char buf[512];
      std::snprintf(buf, sizeof(buf), "%s (sm_%d%d, %d SMs, %.1f GiB), CUDA driver %d.%d, runtime %d.%d, plugin %s",
                    d.name, d.sm_major, d.sm_minor, d.multiprocessors,
                    static_cast<double>(d.total_memory) / (1024.0 * 1024.0 * 1024.0), d.driver_version / 1000,
                    (d.driver_version % 1000) / 10, d.runtime_version / 1000, (d.runtime_version % 1000) / 10,
                    path.c_str());
      set_state(b, CudaState::kAvailable, "available", buf);
      return;
    }
    case SK_CUDA_ENODRIVER:
      set_state(b, CudaState::kNoDriver, "no-driver", d.message);
      return;
    case SK_CUDA_EUNSUPPORTED:
      set_state(b, CudaState::kUnsupported, "unsupported-gpu", d.message);
      return;
    default:
      set_state(b, CudaState::kNoDevice, "no-gpu", d.message[0] ? d.message : "no CUDA GPU");
      return;
  }
}
#endif

}  // namespace

const CudaBackend& cuda_backend(const std::vector<std::string>& search_dirs) {
  static std::once_flag once;
  static CudaBackend backend;
  std::call_once(once, [&] {
#if defined(_WIN32)
    set_state(&backend, CudaState::kNoPlugin, "no-plugin", "the CUDA plugin is only built for Linux");
    (void)search_dirs;
#else
    load(&backend, search_dirs);
#endif
  });
  return backend;
}

}  // namespace sparsekit
