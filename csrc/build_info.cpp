#include "build_info.h"

#include "kernels.h"

#include <string>

#ifdef _OPENMP
#include <omp.h>
#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define OPRD_HAVE_DLADDR 1
#endif
#endif

#if OPRD_CUDA_BUILT
extern "C" int oprd_cuda_runtime_version();
#endif

namespace py = pybind11;

namespace oprd {
namespace {

py::dict compiler_info() {
  py::dict d;
  d["id"] = OPRD_CXX_COMPILER_ID;
  d["version"] = OPRD_CXX_COMPILER_VERSION;
#ifdef __VERSION__
  d["version_string"] = __VERSION__;
#else
  d["version_string"] = "";
#endif
  d["cplusplus"] = static_cast<long>(__cplusplus);
  d["build_type"] = OPRD_BUILD_TYPE;
  return d;
}

py::dict openmp_info() {
  py::dict d;
#ifdef _OPENMP
  d["enabled"] = true;
  d["version"] = static_cast<int>(_OPENMP);
  d["max_threads"] = omp_get_max_threads();
  // Only with OpenMP: the file of the runtime instance this module's calls resolved to (with torch imported first,
  // the one torch loaded: docs/kernels.md); "" where the platform cannot say.
  std::string library;
#ifdef OPRD_HAVE_DLADDR
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&omp_get_max_threads), &info) != 0 && info.dli_fname != nullptr) {
    library = info.dli_fname;
  }
#endif
  d["library"] = library;
#else
  d["enabled"] = false;
  d["version"] = 0;
  d["max_threads"] = 1;
#endif
  return d;
}

py::dict cuda_info() {
  py::dict d;
  d["requested"] = std::string(OPRD_CUDA_REQUESTED) == "ON";
  d["compiled"] = OPRD_CUDA_BUILT != 0;
  d["compiler_version"] = OPRD_CUDA_COMPILER_VERSION;
  d["architectures"] = OPRD_CUDA_ARCHITECTURES;
#if OPRD_CUDA_BUILT
  d["runtime_version"] = oprd_cuda_runtime_version();
#else
  d["runtime_version"] = 0;
#endif
  return d;
}

py::list simd_info() {
  py::list isa;
#ifdef __SSE4_2__
  isa.append("sse4.2");
#endif
#ifdef __AVX__
  isa.append("avx");
#endif
#ifdef __AVX2__
  isa.append("avx2");
#endif
#ifdef __FMA__
  isa.append("fma");
#endif
#ifdef __AVX512F__
  isa.append("avx512f");
#endif
#ifdef __AVX512BF16__
  isa.append("avx512bf16");
#endif
#ifdef __ARM_NEON
  isa.append("neon");
#endif
  return isa;
}

}  // namespace

py::dict build_info() {
  py::dict d;
  d["compiler"] = compiler_info();
  d["openmp"] = openmp_info();
  d["cuda"] = cuda_info();
  d["simd"] = simd_info();
  d["kernel_isa"] = kernel_isa();
  py::list variants;
  variants.append("base");
#ifdef OPRD_HAVE_AVX2
  variants.append("avx2");
#endif
  d["kernel_variants"] = variants;
  d["pybind11"] = OPRD_PYBIND11_VERSION;
  d["pointer_bits"] = static_cast<int>(sizeof(void*) * 8);
  return d;
}

}  // namespace oprd
