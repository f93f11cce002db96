/* Peak-throughput loops for benchmarks/bench_popcount_ceiling.py (compiled there with cc, loaded
 * with ctypes; plain C + GNU inline asm for x86-64, no torch).
 *
 * Each loop runs 12 independent chains, enough to hide every instruction's latency, so the time
 * measures issue throughput only:
 *   xor_popcnt_*  t = a XOR b; t = popcount64(t); acc += t  (a binary MAC per bit: XNOR-popcount)
 *   fma_f32_*     acc = acc + a * b                          (one FP32 MAC per lane)
 *   vnni_int8_zmm acc += u8 a . s8 b, four bytes per lane    (VPDPBUSD: 64 int8 MACs)
 *   amx_int8      C += A . B on the AMX tile unit            (TDPBSSD: 16 x 16 x 64 int8 MACs)
 * and, for CPUs without AVX-512 (below): the AVX2 path's nibble-lookup popcount (whole bytes, and
 * on operands split into nibbles beforehand as the AVX2 GEMM holds them), scalar POPCNT,
 * FP32 FMA on ymm0-15 and INT8 by VPMADDUBSW + VPMADDWD (ONNX Runtime's INT8 GEMM without VNNI).
 * The last two are the ceilings of an INT8 GEMM (what ONNX Runtime's quantize_dynamic models run):
 * VNNI on AVX-512 CPUs without AMX, the tile unit on Intel Xeons since Sapphire Rapids.
 * The loops are written in asm so the compiler can neither hoist the loop-invariant XOR/popcount
 * nor spill the chains to memory: exactly these instructions run. Each function returns -1 when the
 * CPU lacks the instructions, else the seconds taken for `iters` iterations of 12 vector ops. */
#include <stdint.h>
#include <time.h>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

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
#define DPBC(R, j) "vpdpbusd %%" R "30, %%" R "31, %%" R #j "\n\t"

#define XPC12(R)                                                                       \
  XPC(R, 0, 12) XPC(R, 1, 13) XPC(R, 2, 14) XPC(R, 3, 15) XPC(R, 4, 16) XPC(R, 5, 17) \
  XPC(R, 6, 18) XPC(R, 7, 19) XPC(R, 8, 20) XPC(R, 9, 21) XPC(R, 10, 22) XPC(R, 11, 23)
#define FMA12(R)                                                                       \
  FMAC(R, 0) FMAC(R, 1) FMAC(R, 2) FMAC(R, 3) FMAC(R, 4) FMAC(R, 5) FMAC(R, 6)         \
  FMAC(R, 7) FMAC(R, 8) FMAC(R, 9) FMAC(R, 10) FMAC(R, 11)

#define DPB12(R)                                                                       \
  DPBC(R, 0) DPBC(R, 1) DPBC(R, 2) DPBC(R, 3) DPBC(R, 4) DPBC(R, 5) DPBC(R, 6)         \
  DPBC(R, 7) DPBC(R, 8) DPBC(R, 9) DPBC(R, 10) DPBC(R, 11)

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

__attribute__((target("avx512f,avx512vl,avx512vnni"))) static double vz(int64_t iters) {
  RUN("zmm", DPB12("zmm"))
}

/* AMX: 8 tiles of 16 rows x 64 bytes (palette 1); 12 TDPBSSDs per iteration into the four C
 * tiles tmm0-3 from A tiles tmm4-5 and B tiles tmm6-7 (each C tile's chain of 3 per iteration is
 * longer than the unit's issue interval, so throughput is what is timed). Tile contents do not
 * matter for the time; the tiles are zeroed first. */
struct tile_config {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};
#define TDP(c, a, b) "tdpbssd %%tmm" #b ", %%tmm" #a ", %%tmm" #c "\n\t"
static double az(int64_t iters) {
  struct tile_config config __attribute__((aligned(64))) = {1, 0, {0}, {0}, {0}};
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = 16;
  }
  __asm__ volatile("ldtilecfg %0\n\t"
                   "tilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\ttilezero %%tmm3\n\t"
                   "tilezero %%tmm4\n\ttilezero %%tmm5\n\ttilezero %%tmm6\n\ttilezero %%tmm7\n\t"
                   :
                   : "m"(config));
  const double t0 = now_s();
  __asm__ volatile("1:\n\t" TDP(0, 4, 6) TDP(1, 4, 7) TDP(2, 5, 6) TDP(3, 5, 7) TDP(0, 4, 6)
                       TDP(1, 4, 7) TDP(2, 5, 6) TDP(3, 5, 7) TDP(0, 4, 6) TDP(1, 4, 7)
                           TDP(2, 5, 6) TDP(3, 5, 7) "dec %0\n\t"
                                                     "jnz 1b\n\t"
                   : "+r"(iters)
                   :
                   : "cc");
  const double t = now_s() - t0;
  __asm__ volatile("tilerelease" ::: "memory");
  return t;
}

/* AVX2 CPUs (no AVX-512: ymm0-15 only). The binary loop is the AVX2 path's popcount by nibble
 * lookup (cpu_kernels_avx2.cpp): t = a XOR b; the low and high nibbles of each byte through
 * VPSHUFB of a 16-entry table; both counts added into byte accumulators. Four chains (accumulator
 * ymm0-3, two temporaries each in ymm4-11; a, b, table, nibble mask in ymm12-15), three rounds:
 * 12 XNOR-popcounts of 256 bits per iteration. */
#define LUT(j, t, u)                                                                   \
  "vpxor %%ymm13, %%ymm12, %%ymm" #t "\n\t"                                           \
  "vpsrlw $4, %%ymm" #t ", %%ymm" #u "\n\t"                                            \
  "vpand %%ymm15, %%ymm" #t ", %%ymm" #t "\n\t"                                        \
  "vpand %%ymm15, %%ymm" #u ", %%ymm" #u "\n\t"                                        \
  "vpshufb %%ymm" #t ", %%ymm14, %%ymm" #t "\n\t"                                      \
  "vpshufb %%ymm" #u ", %%ymm14, %%ymm" #u "\n\t"                                      \
  "vpaddb %%ymm" #t ", %%ymm" #j ", %%ymm" #j "\n\t"                                    \
  "vpaddb %%ymm" #u ", %%ymm" #j ", %%ymm" #j "\n\t"
#define LUT4 LUT(0, 4, 5) LUT(1, 6, 7) LUT(2, 8, 9) LUT(3, 10, 11)
/* The same count on operands already split into their bytes' low nibbles and high nibbles
 * shifted down (the AVX2 GEMM splits each operand once and reuses it across a register block):
 * per 256 bits, XOR of the low halves and of the high halves, each a table index as it stands,
 * two VPSHUFB, two byte adds. Same chains (a low / high in ymm12 / ymm15, b in ymm13). */
#define SPLIT(j, t, u)                                                                 \
  "vpxor %%ymm13, %%ymm12, %%ymm" #t "\n\t"                                           \
  "vpxor %%ymm13, %%ymm15, %%ymm" #u "\n\t"                                           \
  "vpshufb %%ymm" #t ", %%ymm14, %%ymm" #t "\n\t"                                      \
  "vpshufb %%ymm" #u ", %%ymm14, %%ymm" #u "\n\t"                                      \
  "vpaddb %%ymm" #t ", %%ymm" #j ", %%ymm" #j "\n\t"                                    \
  "vpaddb %%ymm" #u ", %%ymm" #j ", %%ymm" #j "\n\t"
#define SPLIT4 SPLIT(0, 4, 5) SPLIT(1, 6, 7) SPLIT(2, 8, 9) SPLIT(3, 10, 11)
/* INT8 on AVX2, as ONNX Runtime's MLAS runs u8 x s8 without VNNI: VPMADDUBSW (32 byte products
 * summed in pairs), VPMADDWD by ones (to int32), VPADDD: 32 int8 MACs per op. Six chains
 * (accumulator ymm0-5, temporary ymm6-11; a, b, ones in ymm12-14), two rounds. */
#define MUB(j, t)                                                                      \
  "vpmaddubsw %%ymm13, %%ymm12, %%ymm" #t "\n\t"                                      \
  "vpmaddwd %%ymm14, %%ymm" #t ", %%ymm" #t "\n\t"                                    \
  "vpaddd %%ymm" #t ", %%ymm" #j ", %%ymm" #j "\n\t"
#define MUB6 MUB(0, 6) MUB(1, 7) MUB(2, 8) MUB(3, 9) MUB(4, 10) MUB(5, 11)
#define FMA2(j) "vfmadd231ps %%ymm14, %%ymm15, %%ymm" #j "\n\t"
#define FMA2_12                                                                        \
  FMA2(0) FMA2(1) FMA2(2) FMA2(3) FMA2(4) FMA2(5) FMA2(6) FMA2(7) FMA2(8) FMA2(9)       \
  FMA2(10) FMA2(11)
#define CLOBBERS_AVX2                                                                    \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",        \
  "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc"
#define RUN_AVX2(BODY)                                                               \
  const double t0 = now_s();                                                         \
  __asm__ volatile("vpxor %%ymm12, %%ymm12, %%ymm12\n\t"                             \
                   "vpcmpeqb %%ymm13, %%ymm13, %%ymm13\n\t"                          \
                   "1:\n\t" BODY "dec %0\n\t"                                       \
                   "jnz 1b\n\t"                                                      \
                   : "+r"(iters)                                                     \
                   :                                                                 \
                   : CLOBBERS_AVX2);                                                 \
  return now_s() - t0;

__attribute__((target("avx2"))) static double lut_y(int64_t iters) { RUN_AVX2(LUT4 LUT4 LUT4) }
__attribute__((target("avx2"))) static double split_y(int64_t iters) {
  RUN_AVX2(SPLIT4 SPLIT4 SPLIT4)
}
__attribute__((target("avx2"))) static double mub_y(int64_t iters) { RUN_AVX2(MUB6 MUB6) }
__attribute__((target("avx2,fma"))) static double fma2_y(int64_t iters) { RUN_AVX2(FMA2_12) }

/* Not a ceiling: the AVX2 GEMM's own K loop (cpu_kernels_avx2.cpp, xnor_block_4x2), its operands
 * in memory as the GEMM reads them -- per K word one 8-column x 4-row block of two weight vectors'
 * split halves (4 loads) against 4 activation rows' split words (8 broadcasts from memory) -- over
 * a BERT-base row (K = 768: 24 words), all in L1. Against the split loop above it shows what the
 * loads and broadcasts cost; what the GEMM loses beyond it is outside its K loop. One iteration of
 * the timing = 3 K words (6144 binary MACs = 12 x 512, so CHAINS and the MAC count stay exact). */
#define KL_PAIR(acc, w, t)                                                             \
  "vpxor " w ", %%ymm13, %%ymm" #t "\n\t"                                              \
  "vpshufb %%ymm" #t ", %%ymm8, %%ymm" #t "\n\t"                                      \
  "vpaddb %%ymm" #t ", %%ymm" #acc ", %%ymm" #acc "\n\t"
#define KL_ROW(lo, hi, a0, a1, w0, w1, w2, w3)                                         \
  "vpbroadcastd " lo ", %%ymm13\n\t" KL_PAIR(a0, w0, 14) KL_PAIR(a1, w1, 15)           \
  "vpbroadcastd " hi ", %%ymm13\n\t" KL_PAIR(a0, w2, 14) KL_PAIR(a1, w3, 15)
#define KL_ROWS(w0, w1, w2, w3)                                                        \
  KL_ROW("(%[s])", "(%[s],%[st],4)", 0, 1, w0, w1, w2, w3)                             \
  KL_ROW("(%[s],%[st],1)", "(%[s3],%[st],2)", 2, 3, w0, w1, w2, w3)                    \
  KL_ROW("(%[s],%[st],2)", "(%[s6])", 4, 5, w0, w1, w2, w3)                            \
  KL_ROW("(%[s3])", "(%[s6],%[st],1)", 6, 7, w0, w1, w2, w3)
enum { KL_WORDS = 24 };
static uint32_t kl_rows[8 * KL_WORDS] __attribute__((aligned(64)));          /* 4 rows lo, hi */
static uint8_t kl_weights[KL_WORDS * 128] __attribute__((aligned(64)));      /* 4 vectors/word */
static const uint8_t kl_table[32] __attribute__((aligned(32))) = {
    0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4};
/* count K words of the loop whose body (per K word) is BODY. */
#define KL_WORDS_FN(name, BODY)                                                                \
  __attribute__((target("avx2"))) static void name(int64_t count) {                            \
    const int64_t st = 4 * KL_WORDS; /* bytes from one split row to the next */                \
    const uint32_t *s = kl_rows, *s3 = kl_rows + 3 * KL_WORDS, *s6 = kl_rows + 6 * KL_WORDS;   \
    const uint8_t* b = kl_weights;                                                             \
    __asm__ volatile("vmovdqa %[lut], %%ymm8\n\t"                                             \
                     "1:\n\t" BODY                                                             \
                     "add $128, %[b]\n\tadd $4, %[s]\n\tadd $4, %[s3]\n\tadd $4, %[s6]\n\t"    \
                     "dec %[count]\n\tjnz 1b\n\t"                                              \
                     : [s] "+r"(s), [s3] "+r"(s3), [s6] "+r"(s6), [b] "+r"(b),                 \
                       [count] "+r"(count)                                                     \
                     : [st] "r"(st), [lut] "m"(*(const uint8_t(*)[32])kl_table)                \
                     : CLOBBERS_AVX2, "memory");                                               \
  }
KL_WORDS_FN(kloop_words,
            "vmovdqa (%[b]), %%ymm9\n\tvmovdqa 32(%[b]), %%ymm10\n\t"
            "vmovdqa 64(%[b]), %%ymm11\n\tvmovdqa 96(%[b]), %%ymm12\n\t"
            KL_ROWS("%%ymm9", "%%ymm10", "%%ymm11", "%%ymm12"))
typedef void (*kloop_fn)(int64_t);
__attribute__((target("avx2"))) static double kloop_time(kloop_fn words, int64_t iters) {
  const double t0 = now_s();
  for (int64_t pass = 0; pass < iters / (KL_WORDS / 3); ++pass) words(KL_WORDS);
  if (iters % (KL_WORDS / 3)) words(3 * (iters % (KL_WORDS / 3)));
  return now_s() - t0;
}
__attribute__((target("avx2"))) static double kloop_y(int64_t iters) {
  return kloop_time(kloop_words, iters);
}
/* The K loop's other form (cpu_features.h, Avx2KLoop::kFolded; the GEMM runs it on CPUs that split
 * 256-bit ops, AMD Zen 1 / Zen+): cpu_kernels_avx2.cpp's xnor_pairs_2x4, two activation rows
 * against a 16-row panel two K words at a time -- per K pair and row 2 quadword broadcasts and
 * 8 logic ops reading their weight vectors from L1 (the pair's 8 split vectors, 256 bytes). One
 * pass = the 12 pairs of a BERT-base row (K = 768) = 4 iterations of the timing (3 pairs of two
 * rows: 6144 binary MACs). */
#define KP_ROW(lo, hi, a0, a1, a2, a3)                                                 \
  "vpbroadcastq " lo ", %%ymm13\n\t"                                                   \
  KL_PAIR(a0, "(%[b])", 14) KL_PAIR(a1, "32(%[b])", 15)                                \
  KL_PAIR(a2, "64(%[b])", 14) KL_PAIR(a3, "96(%[b])", 15)                              \
  "vpbroadcastq " hi ", %%ymm13\n\t"                                                   \
  KL_PAIR(a0, "128(%[b])", 14) KL_PAIR(a1, "160(%[b])", 15)                            \
  KL_PAIR(a2, "192(%[b])", 14) KL_PAIR(a3, "224(%[b])", 15)
__attribute__((target("avx2"))) static void kloop_pairs(int64_t count) {
  const int64_t st = 4 * KL_WORDS; /* bytes from one split row to the next */
  const uint32_t *p = kl_rows, *q = kl_rows + KL_WORDS;
  const uint8_t* b = kl_weights;
  __asm__ volatile("vmovdqa %[lut], %%ymm8\n\t"
                   "1:\n\t" KP_ROW("(%[p])", "(%[p],%[st],4)", 0, 1, 2, 3)
                   KP_ROW("(%[q])", "(%[q],%[st],4)", 4, 5, 6, 7)
                   "add $256, %[b]\n\tadd $8, %[p]\n\tadd $8, %[q]\n\t"
                   "dec %[count]\n\tjnz 1b\n\t"
                   : [p] "+r"(p), [q] "+r"(q), [b] "+r"(b), [count] "+r"(count)
                   : [st] "r"(st), [lut] "m"(*(const uint8_t(*)[32])kl_table)
                   : CLOBBERS_AVX2, "memory");
}
__attribute__((target("avx2"))) static double kloop_pairs_y(int64_t iters) {
  const double t0 = now_s();
  for (int64_t pass = 0; pass < iters / 4; ++pass) kloop_pairs(KL_WORDS / 2);
  if (iters % 4) kloop_pairs(3 * (iters % 4));
  return now_s() - t0;
}

/* Scalar: t = a XOR b; POPCNT; add (64 binary MACs per op), as a CPU without vector popcount may
 * also count. Four chains (accumulators r10-r13, temporaries rax, rcx, rdx, rsi; a, b in r8, r9),
 * three rounds. */
#define XP64(acc, t)                                                                   \
  "mov %%r8, %%" t "\n\t"                                                              \
  "xor %%r9, %%" t "\n\t"                                                              \
  "popcnt %%" t ", %%" t "\n\t"                                                        \
  "add %%" t ", %%" acc "\n\t"
#define XP64_4 XP64("r10", "rax") XP64("r11", "rcx") XP64("r12", "rdx") XP64("r13", "rsi")
__attribute__((target("popcnt"))) static double xp64(int64_t iters) {
  const double t0 = now_s();
  __asm__ volatile("xor %%r8, %%r8\n\t"
                   "mov $-1, %%r9\n\t"
                   "1:\n\t" XP64_4 XP64_4 XP64_4 "dec %0\n\t"
                   "jnz 1b\n\t"
                   : "+r"(iters)
                   :
                   : "rax", "rcx", "rdx", "rsi", "r8", "r9", "r10", "r11", "r12", "r13", "cc");
  return now_s() - t0;
}

/* AVX-512 (F, VL) and one more feature (a string literal, as __builtin_cpu_supports needs). */
#define HAS_AVX512_WITH(feature)                                                     \
  (__builtin_cpu_init(), __builtin_cpu_supports("avx512f") &&                        \
                             __builtin_cpu_supports("avx512vl") &&                   \
                             __builtin_cpu_supports(feature))

/* The CPU has the tile unit and Linux lets this process use its registers (asked once: Linux
 * 5.16 on hands the tile data only to processes that request it, ARCH_REQ_XCOMP_PERM). */
static int amx_usable(void) {
  static int usable = -1;
  if (usable < 0) {
    __builtin_cpu_init();
    usable = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8");
#if defined(__linux__) && defined(SYS_arch_prctl)
    if (usable) usable = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                 18 /* XFEATURE_XTILEDATA */) == 0;
#else
    usable = 0;
#endif
  }
  return usable;
}

/* 512-bit and 256-bit forms (on some CPUs, e.g. AMD Zen 4, a 512-bit op issues as two halves). */
double xor_popcnt_zmm(int64_t iters) {
  return HAS_AVX512_WITH("avx512vpopcntdq") ? xz(iters) : -1.0;
}
double xor_popcnt_ymm(int64_t iters) {
  return HAS_AVX512_WITH("avx512vpopcntdq") ? xy(iters) : -1.0;
}
double fma_f32_zmm(int64_t iters) { return HAS_AVX512_WITH("fma") ? fz(iters) : -1.0; }
double fma_f32_ymm(int64_t iters) { return HAS_AVX512_WITH("fma") ? fy(iters) : -1.0; }
double vnni_int8_zmm(int64_t iters) { return HAS_AVX512_WITH("avx512vnni") ? vz(iters) : -1.0; }
double amx_int8(int64_t iters) { return amx_usable() ? az(iters) : -1.0; }

static int has(int avx2, int fma, int popcnt) {
  __builtin_cpu_init();
  return (!avx2 || __builtin_cpu_supports("avx2")) && (!fma || __builtin_cpu_supports("fma")) &&
         (!popcnt || __builtin_cpu_supports("popcnt"));
}
double xor_lut_ymm(int64_t iters) { return has(1, 0, 0) ? lut_y(iters) : -1.0; }
double xor_split_lut_ymm(int64_t iters) { return has(1, 0, 0) ? split_y(iters) : -1.0; }
double gemm_kloop_avx2(int64_t iters) { return has(1, 0, 0) ? kloop_y(iters) : -1.0; }
double gemm_kloop_avx2_pairs(int64_t iters) { return has(1, 0, 0) ? kloop_pairs_y(iters) : -1.0; }
double xor_popcnt_r64(int64_t iters) { return has(0, 0, 1) ? xp64(iters) : -1.0; }
double fma_f32_ymm_avx2(int64_t iters) { return has(1, 1, 0) ? fma2_y(iters) : -1.0; }
double int8_avx2_ymm(int64_t iters) { return has(1, 0, 0) ? mub_y(iters) : -1.0; }
