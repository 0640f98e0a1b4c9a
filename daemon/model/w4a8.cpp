// Block-quantized matmuls on integer activations for the CPU (daemon/model/w4a8.py says why and how
// they are built): y[r, n] = sum over blocks b of 32 inputs of
//     sum over levels l of d[n, b] * dx_l[r, b] * sum_i q[n, b, i] * xq_l[r, b, i]  +  m[n, b] * sx[r, b]
// where the weights are unsigned codes q with a float16 scale d and offset m per block (Q4_1: codes
// 0..15, w = d*q + m; Q8_0: codes stored + 128, w = d*(q - 128), m = d, sx = -128*sum_l dx_l*sum(xq_l))
// and the activations, rounded to bfloat16, are split per block into two int8 levels: xq_1 with
// dx_1 = amax/127, then xq_2 the same for what xq_1*dx_1 leaves (x = dx_1*xq_1 + dx_2*xq_2 to about
// 2^-15 of the block's largest value; sx = the block's float sum for Q4_1). The integer sums are
// exact; the float steps per block are the same operations in the same order on every path below
// (AVX-512 VNNI, AVX2, scalar), so every path gives the same bits, and a row's result never depends on
// how many rows are multiplied with it or on the thread count.
//
// Layout: output rows in tiles of 16 (a SIMD lane per output row). Q4 codes [N/16, K/8, 16, 4]: byte
// j of lane l in group p holds input 8p+j (low nibble) and 8p+4+j (high nibble) of row 16t+l. Q8
// codes [N/16, K/4, 16, 4]: inputs 4p..4p+3. Scales and offsets [N/16, K/32, 16] float16.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu_ops.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define W4A8_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define W4A8_AVX2 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t BLOCK = 32;   // inputs per block
constexpr int64_t TILE = 16;    // output rows per tile
constexpr int64_t CHUNK = 4;    // activation rows multiplied per pass over a tile's codes
constexpr int64_t GROUPS = 8;   // 4-input groups per block
constexpr int64_t LEVELS = 2;   // int8 levels an activation block is split into

struct Activations {
  const int8_t* xq[LEVELS];  // [R, K] each
  const float* dx[LEVELS];   // [R, K/32] each
  const float* sx;           // [R, K/32]
};

float half_to_float(const at::Half* p) { return static_cast<float>(*p); }

// Activations are rounded to bfloat16 first, as torch's weight-only kernels take them: a last-bit
// difference between a verify's rows and the decode steps' (DeltaNet's multi-token path rounds
// differently) then reaches the int8 codes, the scale and the block sum no more often than it reaches
// torch's kernels, which is what keeps MTP decoding token-identical to plain decoding.
// One level: xq = round(v * 127 / amax(v)), dx = amax / 127; v becomes what is left; returns sum(xq).
int32_t quantize_level(float* v, int8_t* xq, float* dx) {
  float amax = 0.f;
  for (int64_t i = 0; i < BLOCK; ++i) amax = std::max(amax, std::fabs(v[i]));
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  *dx = amax / 127.f;
  int32_t qsum = 0;
  for (int64_t i = 0; i < BLOCK; ++i) {
    const int32_t q = static_cast<int32_t>(std::nearbyint(v[i] * inv));
    xq[i] = static_cast<int8_t>(q);
    qsum += q;
    v[i] = v[i] - *dx * static_cast<float>(q);
  }
  return qsum;
}

void quantize_rows(const float* x_in, int64_t blocks, bool q8, int8_t* const xq[LEVELS], float* const dx[LEVELS],
                   float* sx) {
  for (int64_t b = 0; b < blocks; ++b) {
    float v[BLOCK];
    float sum = 0.f;
    for (int64_t i = 0; i < BLOCK; ++i) {
      v[i] = static_cast<float>(c10::BFloat16(x_in[b * BLOCK + i]));
      sum += v[i];
    }
    float offset = 0.f;
    for (int64_t l = 0; l < LEVELS; ++l) {
      const int32_t qsum = quantize_level(v, xq[l] + b * BLOCK, dx[l] + b);
      offset += dx[l][b] * static_cast<float>(qsum);
    }
    sx[b] = q8 ? -128.f * offset : sum;
  }
}

// The 16 lanes' byte groups g (inputs 4g..4g+3 of the block) of block b, as unsigned codes.
template <bool Q8>
inline uint8_t code(const uint8_t* tile, int64_t b, int64_t g, int64_t lane, int64_t byte) {
  if (Q8) return tile[((b * GROUPS + g) * TILE + lane) * 4 + byte];
  const int64_t p = g / 2;  // the 8-input group holding 4g..4g+3: the low nibbles for even g
  const uint8_t packed = tile[((b * 4 + p) * TILE + lane) * 4 + byte];
  return g % 2 ? packed >> 4 : packed & 0x0F;
}

// Software prefetch PREFETCH bytes ahead in the weight stream (codes, then d and m at their rate: 8 or 16 times
// fewer bytes a block): tiles lie back to back, so it runs on into the next tile. The hardware prefetcher alone
// left one core at 6.8 GB/s over the demo's int4 layers where the machine reads 12.4 (Sapphire Rapids, cold
// weights, /tmp driver over 30 copies of each layer); 2048 bytes ahead took them to 8.6-9.3 GB/s at one thread
// and 10.8-12.9 -> 14.4-14.8 at two (1024 and 4096-8192 measured slower, 1536 and 3072 alike).
constexpr int64_t PREFETCH = 2048;

template <bool Q8>
inline void prefetch_block(const uint8_t* tile, const at::Half* d, const at::Half* m, int64_t b) {
  const int64_t block_bytes = GROUPS * 64 / (Q8 ? 1 : 2);
  const char* codes = reinterpret_cast<const char*>(tile) + b * block_bytes + PREFETCH;
  for (int64_t line = 0; line < block_bytes; line += 64) __builtin_prefetch(codes + line);
  const int64_t scale_ahead = PREFETCH * TILE * 2 / block_bytes;  // d and m: 16 float16 a block
  __builtin_prefetch(reinterpret_cast<const char*>(d + b * TILE) + scale_ahead);
  __builtin_prefetch(reinterpret_cast<const char*>(m + b * TILE) + scale_ahead);
}

template <bool Q8>
void tile_scalar(const uint8_t* tile, const at::Half* d, const at::Half* m, const Activations& a, int64_t blocks,
                 int64_t r0, int64_t rows, float* y, int64_t ldy) {
  for (int64_t r = r0; r < r0 + rows; ++r) {
    for (int64_t lane = 0; lane < TILE; ++lane) {
      float acc = 0.f;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t i = r * blocks + b;
        const float dv = half_to_float(d + b * TILE + lane), mv = half_to_float(m + b * TILE + lane);
        for (int64_t l = 0; l < LEVELS; ++l) {
          int32_t s = 0;
          for (int64_t g = 0; g < GROUPS; ++g)
            for (int64_t byte = 0; byte < 4; ++byte)
              s += code<Q8>(tile, b, g, lane, byte) * a.xq[l][r * blocks * BLOCK + b * BLOCK + 4 * g + byte];
          acc = std::fma(static_cast<float>(s), dv * a.dx[l][i], acc);
        }
        acc = std::fma(mv, a.sx[i], acc);
      }
      y[r * ldy + lane] = acc;
    }
  }
}

#if W4A8_AVX512
inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <bool Q8>
void tile_simd(const uint8_t* tile, const at::Half* d, const at::Half* m, const Activations& a, int64_t blocks,
               int64_t r0, int64_t rows, float* y, int64_t ldy) {
  __m512 acc[CHUNK];
  for (int64_t r = 0; r < CHUNK; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i low = _mm512_set1_epi8(0x0F);
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i q[GROUPS];
    for (int64_t p = 0; p < GROUPS / 2; ++p) {
      if (Q8) {
        q[2 * p] = _mm512_loadu_si512(tile + (b * GROUPS + 2 * p) * 64);
        q[2 * p + 1] = _mm512_loadu_si512(tile + (b * GROUPS + 2 * p + 1) * 64);
      } else {
        const __m512i v = _mm512_loadu_si512(tile + (b * 4 + p) * 64);
        q[2 * p] = _mm512_and_si512(v, low);
        q[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
      }
    }
    prefetch_block<Q8>(tile, d, m, b);
    const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + b * TILE)));
    const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + b * TILE)));
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = (r0 + r) * blocks + b;
      for (int64_t l = 0; l < LEVELS; ++l) {
        const int8_t* xb = a.xq[l] + (r0 + r) * blocks * BLOCK + b * BLOCK;
        __m512i s = _mm512_setzero_si512();
        for (int64_t g = 0; g < GROUPS; ++g) s = _mm512_dpbusd_epi32(s, q[g], broadcast4(xb + 4 * g));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dv, _mm512_set1_ps(a.dx[l][i])), acc[r]);
      }
      acc[r] = _mm512_fmadd_ps(mv, _mm512_set1_ps(a.sx[i]), acc[r]);
    }
  }
  for (int64_t r = 0; r < rows; ++r) _mm512_storeu_ps(y + (r0 + r) * ldy, acc[r]);
}
#elif W4A8_AVX2
inline __m256i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// sum over 4-byte groups of unsigned q times signed x, exact: q <= 15 never saturates maddubs's int16
// pairs; Q8 codes (q + 128 up to 255) are split into q's sign and magnitude first.
template <bool Q8>
inline __m256i dot4(__m256i q, __m256i x) {
  const __m256i ones = _mm256_set1_epi16(1);
  if (!Q8) return _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
  const __m256i sq = _mm256_xor_si256(q, _mm256_set1_epi8(static_cast<char>(0x80)));  // q - 128, signed
  const __m256i magnitudes = _mm256_abs_epi8(sq), signed_x = _mm256_sign_epi8(x, sq);
  const __m256i signed_dot = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitudes, signed_x), ones);
  const __m256i xsum = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), x), ones);
  return _mm256_add_epi32(signed_dot, _mm256_slli_epi32(xsum, 7));  // + 128 * sum(x): the stored codes' sum
}

template <bool Q8>
void tile_simd(const uint8_t* tile, const at::Half* d, const at::Half* m, const Activations& a, int64_t blocks,
               int64_t r0, int64_t rows, float* y, int64_t ldy) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  for (int64_t half = 0; half < 2; ++half) {  // lanes 0..7, then 8..15
    __m256 acc[CHUNK];
    for (int64_t r = 0; r < CHUNK; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      __m256i q[GROUPS];
      for (int64_t p = 0; p < GROUPS / 2; ++p) {
        if (Q8) {
          q[2 * p] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + (b * GROUPS + 2 * p) * 64 + 32 * half));
          q[2 * p + 1] =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + (b * GROUPS + 2 * p + 1) * 64 + 32 * half));
        } else {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + (b * 4 + p) * 64 + 32 * half));
          q[2 * p] = _mm256_and_si256(v, low);
          q[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
      }
      if (half == 0) prefetch_block<Q8>(tile, d, m, b);
      const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d + b * TILE + 8 * half)));
      const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m + b * TILE + 8 * half)));
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = (r0 + r) * blocks + b;
        for (int64_t l = 0; l < LEVELS; ++l) {
          const int8_t* xb = a.xq[l] + (r0 + r) * blocks * BLOCK + b * BLOCK;
          __m256i s = _mm256_setzero_si256();
          for (int64_t g = 0; g < GROUPS; ++g) s = _mm256_add_epi32(s, dot4<Q8>(q[g], broadcast4(xb + 4 * g)));
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dv, _mm256_set1_ps(a.dx[l][i])), acc[r]);
        }
        acc[r] = _mm256_fmadd_ps(mv, _mm256_set1_ps(a.sx[i]), acc[r]);
      }
    }
    for (int64_t r = 0; r < rows; ++r) _mm256_storeu_ps(y + (r0 + r) * ldy + 8 * half, acc[r]);
  }
}
#endif

// x [R, K] (any float dtype) times the first `tiles` tiles of one block-quantized matrix -> [R, 16*tiles]
// float32; `simd` false takes the scalar path (the reference the tests hold the SIMD path to).
template <bool Q8>
torch::Tensor block_mm(const torch::Tensor& x_in, const torch::Tensor& codes, const torch::Tensor& d,
                       const torch::Tensor& m, int64_t tiles, bool simd) {
  const torch::Tensor x = x_in.to(torch::kFloat).contiguous();
  const int64_t R = x.size(0), K = x.size(1), blocks = K / BLOCK, N = tiles * TILE;
  TORCH_CHECK(K % BLOCK == 0 && codes.is_contiguous() && d.is_contiguous() && m.is_contiguous(),
              "w4a8: inputs must be a multiple of 32 and the weights contiguous");
  TORCH_CHECK(codes.size(0) >= tiles && codes.numel() / codes.size(0) == TILE * K / (Q8 ? 1 : 2),
              "w4a8: codes do not match the input's width");
  // scratch outside torch's allocator: a decode step makes 121 of these calls
  std::vector<int8_t> xq(LEVELS * R * K);
  std::vector<float> dx(LEVELS * R * blocks), sx(R * blocks);
  int8_t* xqs[LEVELS];
  float* dxs[LEVELS];
  Activations a{};
  for (int64_t l = 0; l < LEVELS; ++l) {
    a.xq[l] = xqs[l] = xq.data() + l * R * K;
    a.dx[l] = dxs[l] = dx.data() + l * R * blocks;
  }
  a.sx = sx.data();
  quantize_rows(x.data_ptr<float>(), R * blocks, Q8, xqs, dxs, sx.data());
  auto y = torch::empty({R, N}, torch::kFloat);
  const uint8_t* c = codes.data_ptr<uint8_t>();
  const at::Half* dp = d.data_ptr<at::Half>();
  const at::Half* mp = m.data_ptr<at::Half>();
  float* yp = y.data_ptr<float>();
  const int64_t tile_bytes = TILE * K / (Q8 ? 1 : 2);
  auto tile_fn = tile_scalar<Q8>;
#if W4A8_AVX512 || W4A8_AVX2
  if (simd) tile_fn = tile_simd<Q8>;
#endif
  at::parallel_for(0, tiles, 4, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t r0 = 0; r0 < R; r0 += CHUNK) {
        const int64_t rows = std::min(CHUNK, R - r0);
        tile_fn(c + t * tile_bytes, dp + t * blocks * TILE, mp + t * blocks * TILE, a, blocks, r0, rows,
                yp + t * TILE, N);
      }
    }
  });
  return y;
}

std::string simd_path() {
#if W4A8_AVX512
  return "avx512-vnni";
#elif W4A8_AVX2
  return "avx2";
#else
  return "scalar";
#endif
}

}  // namespace

torch::Tensor mtpchat::q4_mm(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& d,
                             const torch::Tensor& m, int64_t tiles, bool simd) {
  return block_mm<false>(x, codes, d, m, tiles, simd);
}

TORCH_LIBRARY(mtpchat_w4a8, lib) {
  lib.def("q4_mm(Tensor x, Tensor codes, Tensor d, Tensor m, int tiles, bool simd) -> Tensor");
  lib.def("q8_mm(Tensor x, Tensor codes, Tensor d, Tensor m, int tiles, bool simd) -> Tensor");
  lib.def("simd_path() -> str", &simd_path);
}

TORCH_LIBRARY_IMPL(mtpchat_w4a8, CPU, lib) {
  lib.impl("q4_mm", &mtpchat::q4_mm);
  lib.impl("q8_mm", &block_mm<true>);
}
