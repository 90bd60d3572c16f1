/* hip_shim.c: TEST-ONLY stand-in for libamdhip64.so and libhiprtc.so on NVIDIA machines.
 *
 * hip-python dlopens "libamdhip64.so" and "libhiprtc.so" and looks symbols up by name. This file
 * exports exactly the hip* / hiprtc* functions rocmforge_core/gpu/runtime_hip.py calls and forwards
 * each to the CUDA driver (libcuda.so.1) and NVRTC, so the hip runtime path runs unchanged on an
 * NVIDIA GPU. Built with gcc on the GPU machine (scripts/hip_shim/build.sh); never shipped.
 *
 * No CUDA headers needed: handles are opaque pointers, the few enums are written out, and both
 * libraries are opened with dlopen (NVRTC from $RF_SHIM_NVRTC, else the usual sonames).
 * HIP error codes equal CUDA's for every code passed through here (0, 1, 2, 3, 100, 101, 200, 500,
 * 600, 700-series, 801, 999); anything else becomes hipErrorUnknown (999).
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void* CUcontext;
typedef void* Handle;
typedef unsigned long long CUdeviceptr;

static void* g_cuda;
static void* g_nvrtc;
static CUcontext g_ctx;
static int g_device;
static char g_err[512];

static void* lib_cuda(void) {
    if (!g_cuda) g_cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!g_cuda) snprintf(g_err, sizeof g_err, "hip_shim: %s", dlerror());
    return g_cuda;
}

static void* lib_nvrtc(void) {
    const char* names[] = {getenv("RF_SHIM_NVRTC"), "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"};
    for (size_t i = 0; !g_nvrtc && i < sizeof names / sizeof *names; ++i) {
        if (names[i]) g_nvrtc = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
    }
    if (!g_nvrtc) snprintf(g_err, sizeof g_err, "hip_shim: cannot open NVRTC (set RF_SHIM_NVRTC)");
    return g_nvrtc;
}

/* First symbol of a NULL-terminated list of names that exists (versioned driver entry points). */
static void* sym(void* lib, const char* const* names) {
    for (; lib && *names; ++names) {
        void* p = dlsym(lib, *names);
        if (p) return p;
    }
    return NULL;
}

#define CU_FN(ret, var, params, ...)                                            \
    static ret(*var) params;                                                    \
    if (!var) {                                                                 \
        static const char* const n_[] = {__VA_ARGS__, NULL};                    \
        var = (ret(*) params)sym(lib_cuda(), n_);                               \
        if (!var) return 999;                                                   \
    }

static int map_err(CUresult r) {
    switch (r) {
        case 0: case 1: case 2: case 3: case 100: case 101: case 200: case 201: case 209: case 218:
        case 300: case 400: case 500: case 600: case 700: case 701: case 702: case 719: case 801:
        case 900: case 901: case 902: case 903: case 904: case 905: case 906: case 907: case 908:
            return r;
        default:
            return 999;
    }
}

/* The primary context of the current device, current on the calling thread. */
static int ensure_ctx(void) {
    CU_FN(CUresult, get_cur, (CUcontext*), "cuCtxGetCurrent");
    CUcontext cur = NULL;
    if (get_cur(&cur) == 0 && cur && cur == g_ctx) return 0;
    CU_FN(CUresult, init, (unsigned), "cuInit");
    CU_FN(CUresult, dev_get, (CUdevice*, int), "cuDeviceGet");
    CU_FN(CUresult, retain, (CUcontext*, CUdevice), "cuDevicePrimaryCtxRetain");
    CU_FN(CUresult, set_cur, (CUcontext), "cuCtxSetCurrent");
    CUresult r = init(0);
    if (r) return map_err(r);
    if (!g_ctx) {
        CUdevice d;
        if ((r = dev_get(&d, g_device))) return map_err(r);
        if ((r = retain(&g_ctx, d))) return map_err(r);
    }
    return map_err(set_cur(g_ctx));
}

#define NEED_CTX()                  \
    do {                            \
        int e_ = ensure_ctx();      \
        if (e_) return e_;          \
    } while (0)

/* ------------------------------------------------------------------ device */
int hipInit(unsigned flags) {
    CU_FN(CUresult, f, (unsigned), "cuInit");
    return map_err(f(flags));
}

int hipGetDeviceCount(int* n) {
    CU_FN(CUresult, init, (unsigned), "cuInit");
    CU_FN(CUresult, f, (int*), "cuDeviceGetCount");
    CUresult r = init(0);
    return map_err(r ? r : f(n));
}

int hipSetDevice(int device) {
    if (g_ctx && device != g_device) return 1; /* one device per process is all the tests use */
    g_device = device;
    return ensure_ctx();
}

int hipDeviceGetAttribute(int* value, int attr, int device) {
    CU_FN(CUresult, f, (int*, int, CUdevice), "cuDeviceGetAttribute");
    CU_FN(CUresult, dev_get, (CUdevice*, int), "cuDeviceGet");
    int cu;
    switch (attr) { /* hipDeviceAttribute_t (ROCm 7) -> CUdevice_attribute */
        case 87: cu = 10; break;  /* WarpSize */
        case 23: cu = 75; break;  /* ComputeCapabilityMajor */
        case 61: cu = 76; break;  /* ComputeCapabilityMinor */
        case 63: cu = 16; break;  /* MultiprocessorCount */
        case 56: cu = 1; break;   /* MaxThreadsPerBlock */
        case 74: cu = 8; break;   /* MaxSharedMemoryPerBlock */
        default: return 801;      /* hipErrorNotSupported: the runtime asks for nothing else */
    }
    CUdevice d;
    CUresult r = dev_get(&d, device);
    return map_err(r ? r : f(value, cu, d));
}

int hipDeviceGetName(char* name, int len, int device) {
    CU_FN(CUresult, f, (char*, int, CUdevice), "cuDeviceGetName");
    CU_FN(CUresult, dev_get, (CUdevice*, int), "cuDeviceGet");
    CUdevice d;
    CUresult r = dev_get(&d, device);
    return map_err(r ? r : f(name, len, d));
}

int hipDeviceTotalMem(size_t* bytes, int device) {
    CU_FN(CUresult, f, (size_t*, CUdevice), "cuDeviceTotalMem_v2", "cuDeviceTotalMem");
    CU_FN(CUresult, dev_get, (CUdevice*, int), "cuDeviceGet");
    CUdevice d;
    CUresult r = dev_get(&d, device);
    return map_err(r ? r : f(bytes, d));
}

int hipDeviceSynchronize(void) {
    NEED_CTX();
    CU_FN(CUresult, f, (void), "cuCtxSynchronize");
    return map_err(f());
}

const char* hipGetErrorString(int err) {
    static CUresult (*f)(CUresult, const char**);
    static const char* const n_[] = {"cuGetErrorString", NULL};
    if (!f) f = (CUresult(*)(CUresult, const char**))sym(lib_cuda(), n_);
    const char* s = NULL;
    if (f && f(err, &s) == 0 && s) return s;
    return g_err[0] ? g_err : "unknown error (hip_shim)";
}

int hipRuntimeGetVersion(int* v) {
    CU_FN(CUresult, f, (int*), "cuDriverGetVersion");
    return map_err(f(v));
}

/* ------------------------------------------------------------------ memory */
int hipMalloc(void** p, size_t n) {
    NEED_CTX();
    CU_FN(CUresult, f, (CUdeviceptr*, size_t), "cuMemAlloc_v2");
    CUdeviceptr d = 0;
    CUresult r = f(&d, n);
    *p = (void*)(size_t)d;
    return map_err(r);
}

int hipFree(void* p) {
    NEED_CTX();
    CU_FN(CUresult, f, (CUdeviceptr), "cuMemFree_v2");
    return map_err(f((CUdeviceptr)(size_t)p));
}

int hipHostMalloc(void** p, size_t n, unsigned flags) {
    NEED_CTX();
    CU_FN(CUresult, f, (void**, size_t, unsigned), "cuMemHostAlloc");
    (void)flags;  /* hipHostMallocDefault (0) is the only flag rocmforge passes */
    return map_err(f(p, n, 0));
}

int hipHostFree(void* p) {
    NEED_CTX();
    CU_FN(CUresult, f, (void*), "cuMemFreeHost");
    return map_err(f(p));
}

int hipMemcpyHtoDAsync(void* dst, const void* src, size_t n, Handle stream) {
    NEED_CTX();
    CU_FN(CUresult, f, (CUdeviceptr, const void*, size_t, Handle), "cuMemcpyHtoDAsync_v2");
    return map_err(f((CUdeviceptr)(size_t)dst, src, n, stream));
}

int hipMemcpyDtoHAsync(void* dst, const void* src, size_t n, Handle stream) {
    NEED_CTX();
    CU_FN(CUresult, f, (void*, CUdeviceptr, size_t, Handle), "cuMemcpyDtoHAsync_v2");
    return map_err(f(dst, (CUdeviceptr)(size_t)src, n, stream));
}

int hipMemcpyDtoDAsync(void* dst, const void* src, size_t n, Handle stream) {
    NEED_CTX();
    CU_FN(CUresult, f, (CUdeviceptr, CUdeviceptr, size_t, Handle), "cuMemcpyDtoDAsync_v2");
    return map_err(f((CUdeviceptr)(size_t)dst, (CUdeviceptr)(size_t)src, n, stream));
}

int hipMemsetD8Async(void* dst, unsigned char value, size_t n, Handle stream) {
    NEED_CTX();
    CU_FN(CUresult, f, (CUdeviceptr, unsigned char, size_t, Handle), "cuMemsetD8Async");
    return map_err(f((CUdeviceptr)(size_t)dst, value, n, stream));
}

/* ------------------------------------------------------------------ streams, events */
int hipStreamCreate(Handle* s) {
    NEED_CTX();
    CU_FN(CUresult, f, (Handle*, unsigned), "cuStreamCreate");
    return map_err(f(s, 0));
}

int hipStreamDestroy(Handle s) {
    CU_FN(CUresult, f, (Handle), "cuStreamDestroy_v2", "cuStreamDestroy");
    return map_err(f(s));
}

int hipStreamSynchronize(Handle s) {
    NEED_CTX();
    CU_FN(CUresult, f, (Handle), "cuStreamSynchronize");
    return map_err(f(s));
}

int hipEventCreate(Handle* e) {
    NEED_CTX();
    CU_FN(CUresult, f, (Handle*, unsigned), "cuEventCreate");
    return map_err(f(e, 0));
}

int hipEventRecord(Handle e, Handle s) {
    CU_FN(CUresult, f, (Handle, Handle), "cuEventRecord");
    return map_err(f(e, s));
}

int hipEventSynchronize(Handle e) {
    CU_FN(CUresult, f, (Handle), "cuEventSynchronize");
    return map_err(f(e));
}

int hipEventElapsedTime(float* ms, Handle a, Handle b) {
    CU_FN(CUresult, f, (float*, Handle, Handle), "cuEventElapsedTime_v2", "cuEventElapsedTime");
    return map_err(f(ms, a, b));
}

int hipEventDestroy(Handle e) {
    CU_FN(CUresult, f, (Handle), "cuEventDestroy_v2", "cuEventDestroy");
    return map_err(f(e));
}

/* ------------------------------------------------------------------ modules, launch */
int hipModuleLoadData(Handle* m, const void* image) {
    NEED_CTX();
    CU_FN(CUresult, f, (Handle*, const void*), "cuModuleLoadData");
    return map_err(f(m, image));
}

int hipModuleUnload(Handle m) {
    CU_FN(CUresult, f, (Handle), "cuModuleUnload");
    return map_err(f(m));
}

int hipModuleGetFunction(Handle* fn, Handle m, const char* name) {
    CU_FN(CUresult, f, (Handle*, Handle, const char*), "cuModuleGetFunction");
    return map_err(f(fn, m, name));
}

int hipModuleLaunchKernel(Handle fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, unsigned shared, Handle stream, void** params, void** extra) {
    NEED_CTX();
    CU_FN(CUresult, f, (Handle, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, Handle,
                        void**, void**), "cuLaunchKernel");
    return map_err(f(fn, gx, gy, gz, bx, by, bz, shared, stream, params, extra));
}

/* ------------------------------------------------------------------ graphs */
int hipStreamBeginCapture(Handle s, int mode) { /* hipStreamCaptureMode values equal CUDA's */
    CU_FN(CUresult, f, (Handle, int), "cuStreamBeginCapture_v2", "cuStreamBeginCapture");
    return map_err(f(s, mode));
}

int hipStreamEndCapture(Handle s, Handle* graph) {
    CU_FN(CUresult, f, (Handle, Handle*), "cuStreamEndCapture");
    return map_err(f(s, graph));
}

int hipGraphInstantiate(Handle* exec, Handle graph, Handle* error_node, char* log, size_t log_size) {
    CU_FN(CUresult, f, (Handle*, Handle, unsigned long long), "cuGraphInstantiateWithFlags");
    if (error_node) *error_node = NULL;
    if (log && log_size) log[0] = 0;
    return map_err(f(exec, graph, 0));
}

int hipGraphLaunch(Handle exec, Handle s) {
    CU_FN(CUresult, f, (Handle, Handle), "cuGraphLaunch");
    return map_err(f(exec, s));
}

int hipGraphExecDestroy(Handle exec) {
    CU_FN(CUresult, f, (Handle), "cuGraphExecDestroy");
    return map_err(f(exec));
}

int hipGraphDestroy(Handle graph) {
    CU_FN(CUresult, f, (Handle), "cuGraphDestroy");
    return map_err(f(graph));
}

/* ------------------------------------------------------------------ hiprtc -> NVRTC */
#define RTC_FN(var, params, name)                                           \
    static int(*var) params;                                                \
    if (!var) {                                                             \
        static const char* const n_[] = {name, NULL};                       \
        var = (int(*) params)sym(lib_nvrtc(), n_);                          \
        if (!var) return 11; /* HIPRTC_ERROR_INTERNAL_ERROR */              \
    }

int hiprtcVersion(int* major, int* minor) {
    RTC_FN(f, (int*, int*), "nvrtcVersion");
    return f(major, minor);
}

const char* hiprtcGetErrorString(int r) {
    static const char* (*f)(int);
    static const char* const n_[] = {"nvrtcGetErrorString", NULL};
    if (!f) f = (const char* (*)(int))sym(lib_nvrtc(), n_);
    return f ? f(r) : "hiprtc (hip_shim): NVRTC not loaded";
}

int hiprtcCreateProgram(Handle* prog, const char* src, const char* name, int n_headers,
                        const char* const* headers, const char* const* include_names) {
    RTC_FN(f, (Handle*, const char*, const char*, int, const char* const*, const char* const*),
           "nvrtcCreateProgram");
    return f(prog, src, name, n_headers, headers, include_names);
}

/* hiprtc options -> NVRTC options: drop -O<n> (NVRTC always optimises and rejects it), keep the rest,
 * and name the current device's sm_XY (hiprtc compiles for the current device by default too). */
int hiprtcCompileProgram(Handle prog, int n, const char* const* options) {
    RTC_FN(f, (Handle, int, const char* const*), "nvrtcCompileProgram");
    int e = ensure_ctx();
    if (e) return 11;
    CU_FN(CUresult, attr, (int*, int, CUdevice), "cuDeviceGetAttribute");
    CU_FN(CUresult, dev_get, (CUdevice*, int), "cuDeviceGet");
    CUdevice d;
    int major = 0, minor = 0;
    if (dev_get(&d, g_device) || attr(&major, 75, d) || attr(&minor, 76, d)) return 11;
    static char arch[64];
    snprintf(arch, sizeof arch, "--gpu-architecture=sm_%d%d", major, minor);
    const char** opts = (const char**)calloc((size_t)n + 1, sizeof *opts);
    int m = 0;
    opts[m++] = arch;
    for (int i = 0; i < n; ++i) {
        if (strncmp(options[i], "-O", 2) == 0 || strncmp(options[i], "--offload-arch", 14) == 0) continue;
        opts[m++] = options[i];
    }
    int r = f(prog, m, opts);
    free(opts);
    return r;
}

int hiprtcGetProgramLogSize(Handle prog, size_t* n) {
    RTC_FN(f, (Handle, size_t*), "nvrtcGetProgramLogSize");
    return f(prog, n);
}

int hiprtcGetProgramLog(Handle prog, char* log) {
    RTC_FN(f, (Handle, char*), "nvrtcGetProgramLog");
    return f(prog, log);
}

int hiprtcGetCodeSize(Handle prog, size_t* n) {
    RTC_FN(f, (Handle, size_t*), "nvrtcGetCUBINSize");
    return f(prog, n);
}

int hiprtcGetCode(Handle prog, char* code) {
    RTC_FN(f, (Handle, char*), "nvrtcGetCUBIN");
    return f(prog, code);
}

int hiprtcDestroyProgram(Handle* prog) {
    RTC_FN(f, (Handle*), "nvrtcDestroyProgram");
    return f(prog);
}
