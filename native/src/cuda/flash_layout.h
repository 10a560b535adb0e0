// Index maps of the flash prefill kernel (attention_prefill.cu): the XOR-swizzled shared-memory
// tiles and which row/chunk each lane hands to ldmatrix for each mma.sync m16n8k16 operand. Plain
// integer functions, shared with the host emulation test/flash-emu/flash_emu.cc (which runs the
// kernel's algorithm lane by lane against the PTX ISA's definitions of ldmatrix and mma).
//
// ldmatrix.x4: lane l names row (l % 8) of 8x8 matrix l / 8; afterwards register i of lane l holds
// matrix i's elements (row l / 4, cols 2 (l % 4), +1) (with .trans: (row 2 (l % 4), +1, col l / 4)).
// mma m16n8k16, g = lane / 4, q = lane % 4: A regs {(g, 2q..), (g+8, 2q..), (g, 2q+8..), (g+8, 2q+8..)};
// B regs {(k 2q.., n g), (k 2q+8.., n g)}; C floats (g, 2q), (g, 2q+1), (g+8, 2q), (g+8, 2q+1).
#pragma once

#if defined(__CUDACC__)
#define NS_FLASH_HD __host__ __device__ __forceinline__
#else
#define NS_FLASH_HD inline
#endif

namespace ns::cuda::flash {

// Element offset of 16-byte chunk c (8 elements) of row r in a [rows][D] tile: chunk c is stored at
// c ^ (r & 7), so the 8 rows of one ldmatrix matrix hit 8 different bank groups.
template <int D>
NS_FLASH_HD int swz(int r, int c) { return r * D + ((c ^ (r & 7)) << 3); }

// Q as the A operand of S = Q.K^T (warp w's rows 16 w.., k-step ks over the head dim): matrices
// {rows 0-7, 8-15} x {dims 0-7, 8-15} in A register order.
NS_FLASH_HD int q_row(int warp, int lane) { return warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1); }
NS_FLASH_HD int q_chunk(int ks, int lane) { return 2 * ks + (lane >> 4); }

// K as the B operand (K^T, col-major = K rows): keys 16 np.., matrices {keys 0-7: dims 0-7, 8-15;
// keys 8-15: dims 0-7, 8-15} -> registers {b0, b1} of n-tile 2 np and of n-tile 2 np + 1.
NS_FLASH_HD int k_row(int np, int lane) { return np * 16 + (lane & 7) + 8 * (lane >> 4); }
NS_FLASH_HD int k_chunk(int ks, int lane) { return 2 * ks + ((lane >> 3) & 1); }

// V as the B operand of O += P.V, read with .trans: keys 16 kk.., matrices {keys 0-7, 8-15} x
// {dims 16 dp + 0-7, 16 dp + 8-15} -> {b0, b1} of d-tile 2 dp and of d-tile 2 dp + 1.
NS_FLASH_HD int v_row(int kk, int lane) { return kk * 16 + (lane & 7) + 8 * ((lane >> 3) & 1); }
NS_FLASH_HD int v_chunk(int dp, int lane) { return 2 * dp + (lane >> 4); }

// C fragment: float e (0..3) of a lane sits at (row, col) of the 16x8 tile.
NS_FLASH_HD int c_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
NS_FLASH_HD int c_col(int lane, int e) { return 2 * (lane & 3) + (e & 1); }

// P as the A operand of k-step kk: register r takes floats {2 (r & 1), 2 (r & 1) + 1} of S n-tile
// 2 kk + (r >> 1) (C layout of two n-tiles = A layout of one 16-key k-step).
NS_FLASH_HD int p_ntile(int kk, int r) { return 2 * kk + (r >> 1); }
NS_FLASH_HD int p_elem(int r) { return 2 * (r & 1); }

}  // namespace ns::cuda::flash
