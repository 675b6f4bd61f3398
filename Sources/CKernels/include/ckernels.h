#pragma once
#include <stdint.h>

// The matrix-vector product of decoding (one row of activations) with a bf16 weight, where the
// weight's bytes are all that matter: y[o] = scale * (W[o, :] . x) (+ y[o] when accumulate), for
// rows [first, end) of a row-major W with `cols` columns; `xp` is x in pair order (kd_pair_order).
void kd_gemv_bf16(const uint16_t *w, long first, long end, long cols, const float *x, const float *xp, float *y,
                  int accumulate, float scale);

// kd_gemv_bf16 on a path no wider than `width` bits: 512 (AVX-512), 256 (AVX2) or 0 (scalar
// code), falling back to the widest this build and CPU have. Every path gives the same bits;
// kd_gemv_bf16 takes the widest.
void kd_gemv_bf16_width(int width, const uint16_t *w, long first, long end, long cols, const float *x, const float *xp,
                        float *y, int accumulate, float scale);

// The widest path kd_gemv_bf16 takes here: 512, 256 or 0.
int kd_gemv_bf16_widest(void);

// xp[16b + j] = x[16b + 2j] and xp[16b + 8 + j] = x[16b + 2j + 1] for j < 8 and every whole
// block b of 16 columns (cols / 16 * 16 values).
void kd_pair_order(const float *x, long cols, float *xp);

// Runs fn(context, part) for part 0..<parts: part 0 on the calling thread, the others on helper
// threads that spin a little between jobs (Sources/CKernels/parts.c), or all on the caller when
// another caller's job is running (or there are more than 65,535 parts). Returns when every part has returned.
void kd_run_parts(int parts, void (*fn)(void *context, int part), void *context);

// kd_gemv_bf16_width over rows [0, rows) in `parts` consecutive runs of ceil(rows / parts) rows,
// run by kd_run_parts.
void kd_gemv_bf16_parts(int parts, int width, const uint16_t *w, long rows, long cols, const float *x, const float *xp,
                        float *y, int accumulate, float scale);

// The product of a few rows of activations with a weight, for MoE experts:
// y[i, j] = scale * Σ_p x[i, p] * W[j, p] (+ y[i, j] when accumulate) for i < m, j < n, p < k, where
// x and y are row-major with row strides ldx and ldy, and W is row-major [n, k] with row stride
// ldw elements, f32 (w_is_bf16 = 0) or bf16 (1). Each element is one chain of fused multiply-adds
// over p = 0, 1, ..., k - 1 in order from +0, then scaled (and added to y), so f32 and bf16
// weights holding the same values give the same bits, and so does any split of the rows or
// columns into separate calls. Safe to call from several threads at once; allocates nothing (it
// uses 25 KiB of stack).
void kd_gemm_nt(long m, long n, long k, const float *x, long ldx, const void *w, int w_is_bf16, long ldw, float *y,
                long ldy, int accumulate, float scale);

// kd_gemm_nt on a path no wider than `width` bits: 256 (AVX2) or 0 (scalar code), falling back
// to the widest this build has. Every path gives the same bits; kd_gemm_nt takes the widest.
void kd_gemm_nt_width(int width, long m, long n, long k, const float *x, long ldx, const void *w, int w_is_bf16,
                      long ldw, float *y, long ldy, int accumulate, float scale);

// The widest path kd_gemm_nt takes here: 256 or 0.
int kd_gemm_nt_widest(void);
