// Compiled only when CMake is asked for CUDA (OPRD_WITH_CUDA=ON) and finds a CUDA compiler.
// Proves the CUDA toolchain path of the build; the CUDA kernels themselves come later.
#include <cuda_runtime_api.h>

__global__ void oprd_noop_kernel() {}

extern "C" int oprd_cuda_runtime_version() { return CUDART_VERSION; }
