// Host emulation of the PTX operations the tensor-core kernels use (ldmatrix, mma.sync m16n8k16
// bf16, cp.async groups), from the PTX ISA's definitions; used by flash_emu.cc.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

using bf16 = uint16_t;

static float bf2f(bf16 x) { uint32_t u = (uint32_t)x << 16; float f; std::memcpy(&f, &u, 4); return f; }
static bf16 f2bf(float f) {  // round to nearest even, as __float2bfloat16 / __floats2bfloat162_rn
  uint32_t u; std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  u += 0x7fff + ((u >> 16) & 1);
  return (bf16)(u >> 16);
}
static uint32_t pack2(float x, float y) { return (uint32_t)f2bf(x) | ((uint32_t)f2bf(y) << 16); }
static float lo(uint32_t r) { return bf2f((bf16)(r & 0xffff)); }
static float hi(uint32_t r) { return bf2f((bf16)(r >> 16)); }


// ldmatrix.x4 (optionally .trans): lane l supplies the element offset of row l % 8 of matrix l / 8.
static void ldmatrix_x4(const std::vector<bf16>& sm, const int addr[32], uint32_t out[32][4], bool trans) {
  for (int m = 0; m < 4; ++m) {
    bf16 M[8][8];
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) M[r][c] = sm.at(addr[m * 8 + r] + c);
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, q = l % 4;
      const bf16 a = trans ? M[2 * q][g] : M[g][2 * q], b = trans ? M[2 * q + 1][g] : M[g][2 * q + 1];
      out[l][m] = (uint32_t)a | ((uint32_t)b << 16);
    }
  }
}

// mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32, fragment ownership as in the PTX ISA (9.7.13.4.8).
static void mma(float c[32][4], const uint32_t a[32][4], const uint32_t b[32][2]) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, q = l & 3;
    for (int i = 0; i < 8; ++i) {  // a_i: register i / 2, half i % 2
      const uint32_t reg = a[l][i / 2];
      const float v = (i & 1) ? hi(reg) : lo(reg);
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = q * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = v;
    }
    for (int i = 0; i < 4; ++i) {
      const uint32_t reg = b[l][i / 2];
      B[q * 2 + (i & 1) + (i >= 2 ? 8 : 0)][g] = (i & 1) ? hi(reg) : lo(reg);
    }
    for (int i = 0; i < 4; ++i) C[g + (i >= 2 ? 8 : 0)][q * 2 + (i & 1)] = c[l][i];
  }
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) {
      float acc = C[r][n];
      for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][n];
      C[r][n] = acc;
    }
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) c[l][i] = C[(l >> 2) + (i >= 2 ? 8 : 0)][(l & 3) * 2 + (i & 1)];
}

// cp.async: 16-byte copies grouped by commit; wait<N> completes all but the newest N groups.
struct AsyncCopies {
  bool eager;
  struct Copy { std::vector<bf16>* dst; int off; const bf16* src; bool valid; };
  std::vector<Copy> open;
  std::vector<std::vector<Copy>> groups;
  static void apply(const Copy& c) { for (int i = 0; i < 8; ++i) (*c.dst)[c.off + i] = c.valid ? c.src[i] : 0; }
  void copy(std::vector<bf16>& dst, int off, const bf16* src, bool valid) {
    Copy c{&dst, off, src, valid};
    if (eager) apply(c); else open.push_back(c);
  }
  void commit() { groups.push_back(open); open.clear(); }
  void wait(size_t n) {
    while (groups.size() > n) { for (auto& c : groups.front()) apply(c); groups.erase(groups.begin()); }
  }
};

