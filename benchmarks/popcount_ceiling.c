/* Peak-throughput loops for benchmarks/bench_popcount_ceiling.py (compiled there with cc, loaded
 * with ctypes; plain C + GNU inline asm for x86-64, no torch).
 *
 * Each loop runs 12 independent chains, enough to hide every instruction's latency, so the time
 * measures issue throughput only:
 *   xor_popcnt_*  t = a XOR b; t = popcount64(t); acc += t  (a binary MAC per bit: XNOR-popcount)
 *   fma_f32_*     acc = acc + a * b                          (one FP32 MAC per lane)
 * The loops are written in asm so the compiler can neither hoist the loop-invariant XOR/popcount
 * nor spill the chains to memory: exactly these instructions run. Each function returns -1 when the
 * CPU lacks the instructions, else the seconds taken for `iters` iterations of 12 vector ops. */
#include <stdint.h>
#include <time.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* One chain: a = reg 30, b = reg 31, temp = reg 12 + j, accumulator = reg j. */
#define XPC(R, j, t)                                          \
  "vpxorq %%" R "30, %%" R "31, %%" R #t "\n\t"               \
  "vpopcntq %%" R #t ", %%" R #t "\n\t"                       \
  "vpaddq %%" R #t ", %%" R #j ", %%" R #j "\n\t"
#define FMAC(R, j) "vfmadd231ps %%" R "30, %%" R "31, %%" R #j "\n\t"

#define XPC12(R)                                                                       \
  XPC(R, 0, 12) XPC(R, 1, 13) XPC(R, 2, 14) XPC(R, 3, 15) XPC(R, 4, 16) XPC(R, 5, 17) \
  XPC(R, 6, 18) XPC(R, 7, 19) XPC(R, 8, 20) XPC(R, 9, 21) XPC(R, 10, 22) XPC(R, 11, 23)
#define FMA12(R)                                                                       \
  FMAC(R, 0) FMAC(R, 1) FMAC(R, 2) FMAC(R, 3) FMAC(R, 4) FMAC(R, 5) FMAC(R, 6)         \
  FMAC(R, 7) FMAC(R, 8) FMAC(R, 9) FMAC(R, 10) FMAC(R, 11)

#define CLOBBERS                                                                         \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",        \
  "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18",       \
  "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm30", "xmm31", "cc"

/* Registers start as whatever they hold: the values do not matter for throughput, and the zero
 * idiom first breaks any dependency on earlier code. */
#define RUN(R, BODY)                                                                 \
  const double t0 = now_s();                                                         \
  __asm__ volatile("vpxord %%zmm30, %%zmm30, %%zmm30\n\t"                            \
                   "vpternlogd $0xff, %%zmm31, %%zmm31, %%zmm31\n\t"                 \
                   "1:\n\t" BODY "dec %0\n\t"                                        \
                   "jnz 1b\n\t"                                                      \
                   : "+r"(iters)                                                     \
                   :                                                                 \
                   : CLOBBERS);                                                      \
  return now_s() - t0;

__attribute__((target("avx512f,avx512vl,avx512vpopcntdq"))) static double xz(int64_t iters) {
  RUN("zmm", XPC12("zmm"))
}
__attribute__((target("avx512f,avx512vl,avx512vpopcntdq"))) static double xy(int64_t iters) {
  RUN("ymm", XPC12("ymm"))
}
__attribute__((target("avx512f,avx512vl,fma"))) static double fz(int64_t iters) {
  RUN("zmm", FMA12("zmm"))
}
__attribute__((target("avx512f,avx512vl,fma"))) static double fy(int64_t iters) {
  RUN("ymm", FMA12("ymm"))
}

static int has_avx512_popcnt(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vpopcntdq");
}

static int has_avx512_fma(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("fma");
}

/* 512-bit and 256-bit forms (on some CPUs, e.g. AMD Zen 4, a 512-bit op issues as two halves). */
double xor_popcnt_zmm(int64_t iters) { return has_avx512_popcnt() ? xz(iters) : -1.0; }
double xor_popcnt_ymm(int64_t iters) { return has_avx512_popcnt() ? xy(iters) : -1.0; }
double fma_f32_zmm(int64_t iters) { return has_avx512_fma() ? fz(iters) : -1.0; }
double fma_f32_ymm(int64_t iters) { return has_avx512_fma() ? fy(iters) : -1.0; }
