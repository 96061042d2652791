// Quantized weights (ISA v3): the QMatrix row layout, the dequantizing kernels of
// every level against the fp16 MATMUL over the dequantized matrix, and the plan,
// parameter files and programs of a quantized spec.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "common/error.h"
#include "common/file_io.h"
#include "common/fp16.h"
#include "common/thread_pool.h"
#include "cost/cost_model.h"
#include "emu/kernels.h"
#include "instgen/instgen.h"
#include "isa/qmatrix.h"
#include "mapper/memory_plan.h"
#include "mapper/param_writer.h"
#include "test_util.h"

using namespace hyperdex;
using hyperdex::emu::KernelLevel;
using hyperdex::emu::Kernels;
using isa::QRowFormat;

namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Scales as a quantizer makes them (fp16, positive) over a wide range of
// magnitudes, fp16 subnormals included; small enough that no value overflows.
std::vector<uint16_t> random_scales(std::mt19937& rng, size_t n, uint32_t bits) {
  std::uniform_int_distribution<int> e(-26, bits == 4 ? 10 : 6);
  std::uniform_real_distribution<float> m(1.0f, 2.0f);
  std::vector<uint16_t> v(n);
  for (auto& s : v) s = float_to_half(std::ldexp(m(rng), e(rng)));
  if (n > 2) v[1] = 0;  // an all-zero group (zero padding, a dead column block)
  return v;
}

std::vector<uint8_t> random_codes(std::mt19937& rng, size_t n, uint32_t bits) {
  std::uniform_int_distribution<int> q(0, (1 << bits) - 1);
  std::vector<uint8_t> v(n);
  for (auto& c : v) c = uint8_t(q(rng));
  return v;
}

std::vector<float> random_x(std::mt19937& rng, size_t n) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::uniform_int_distribution<int> e(-12, 12);
  std::vector<float> v(n);
  for (auto& f : v) f = std::ldexp(d(rng), e(rng));
  return v;
}

TEST(QMatrix, WorkedLayoutExamples) {
  // docs/formats.md: k = 4096, g = 128, int4: 32 groups in 2 chunks of 32 + 16 * 64 bytes.
  const QRowFormat q4{4, 128, 4096};
  EXPECT_EQ(q4.groups(), 32u);
  EXPECT_EQ(q4.chunks(), 2u);
  EXPECT_EQ(q4.group_code_bytes(), 64u);
  EXPECT_EQ(q4.chunk_offset(1), 1056u);
  EXPECT_EQ(q4.scale_offset(17), 1058u);
  EXPECT_EQ(q4.codes_offset(17), 1056u + 32u + 64u);
  EXPECT_EQ(q4.data_bytes(), 2112u);  // = 33 lines of 64 bytes, against 8192 in fp16
  // int8: 32 + 16 * 128 bytes per chunk.
  const QRowFormat q8{8, 128, 4096};
  EXPECT_EQ(q8.chunk_offset(1), 2080u);
  EXPECT_EQ(q8.data_bytes(), 4160u);
  // A last chunk with fewer groups: k = 2560, g = 128 -> 20 groups, 16 + 4.
  const QRowFormat part{4, 128, 2560};
  EXPECT_EQ(part.chunks(), 2u);
  EXPECT_EQ(part.data_bytes(), 1056u + 32u + 4u * 64u);
  // Per row (g = k): one scale in a line of 16.
  EXPECT_EQ((QRowFormat{8, 96, 96}.data_bytes()), 32u + 96u);
  EXPECT_EQ((QRowFormat{4, 96, 96}.data_bytes()), 32u + 48u);
  EXPECT_EQ((QRowFormat{4, 128, 4096}.check()), "");
  EXPECT_NE((QRowFormat{3, 128, 4096}.check()), "");
  // A group size that does not divide k leaves a shorter last group, as in GPTQ: SmolLM2's
  // 576 inputs in groups of 128 are 4 + one of 64, all in one chunk.
  const QRowFormat short_last{4, 128, 576};
  EXPECT_EQ(short_last.check(), "");
  EXPECT_EQ(short_last.groups(), 5u);
  EXPECT_EQ(short_last.group_len(3), 128u);
  EXPECT_EQ(short_last.group_len(4), 64u);
  EXPECT_EQ(short_last.codes_offset(4), 32u + 4u * 64u);
  EXPECT_EQ(short_last.data_bytes(), 32u + 288u);
  EXPECT_NE((QRowFormat{4, 7, 22}.check()), "");  // odd int4 groups do not pack in bytes
  EXPECT_NE((QRowFormat{4, 7, 21}.check()), "");  // half a byte left over
  EXPECT_NE((QRowFormat{8, 0, 16}.check()), "");
}

TEST(QMatrix, PackingOrderIsGptqs) {
  const QRowFormat f{4, 16, 32};
  std::vector<uint8_t> codes(32);
  for (size_t i = 0; i < 32; ++i) codes[i] = uint8_t(i % 16);
  const uint16_t scales[2] = {0x3c00, 0x4000};  // 1.0, 2.0
  std::vector<uint8_t> row(f.data_bytes(), 0xee);
  isa::pack_qrow(f, codes.data(), scales, row.data());
  // The scale line: two scales, 14 zero slots.
  EXPECT_EQ(row[0], 0x00);
  EXPECT_EQ(row[1], 0x3c);
  EXPECT_EQ(row[2], 0x00);
  EXPECT_EQ(row[3], 0x40);
  for (size_t i = 4; i < 32; ++i) EXPECT_EQ(row[i], 0) << i;
  // Element 2j in the low nibble of byte j: a little-endian word holds 8 codes, LSB first.
  EXPECT_EQ(row[32], 0x10);
  EXPECT_EQ(row[33], 0x32);
  uint32_t word;
  std::memcpy(&word, row.data() + 32, 4);
  EXPECT_EQ(word, 0x76543210u);
  // int8: one byte per code.
  const QRowFormat f8{8, 16, 32};
  std::vector<uint8_t> row8(f8.data_bytes());
  isa::pack_qrow(f8, codes.data(), scales, row8.data());
  EXPECT_EQ(std::memcmp(row8.data() + 32, codes.data(), 32), 0);
}

TEST(QMatrix, PackUnpackRoundTrip) {
  std::mt19937 rng(1);
  for (const QRowFormat f : {QRowFormat{4, 16, 64}, QRowFormat{4, 128, 2560}, QRowFormat{8, 32, 96},
                             QRowFormat{8, 8, 1000}, QRowFormat{4, 2, 34}, QRowFormat{4, 96, 96}}) {
    const auto codes = random_codes(rng, f.cols, f.bits);
    const auto scales = random_scales(rng, f.groups(), f.bits);
    std::vector<uint8_t> row(f.data_bytes());
    isa::pack_qrow(f, codes.data(), scales.data(), row.data());
    std::vector<uint8_t> codes2(f.cols);
    std::vector<uint16_t> scales2(f.groups());
    isa::unpack_qrow(f, row.data(), codes2.data(), scales2.data());
    EXPECT_EQ(codes2, codes) << f.bits << "/" << f.group << "/" << f.cols;
    EXPECT_EQ(scales2, scales);
    // Dequantized: w' = fp16((q - z) * scale), computed here in double.
    std::vector<uint16_t> w(f.cols);
    isa::dequantize_qrow(f, row.data(), w.data());
    for (uint32_t i = 0; i < f.cols; ++i) {
      const double want = (double(codes[i]) - f.zero_point()) * half_to_float(scales[i / f.group]);
      ASSERT_EQ(w[i], float_to_half(float(want))) << i;  // the product is exact in float
    }
  }
}

TEST(QMatrix, DequantizedValueRoundsOnceToNearestEven) {
  // 7 * (1 + 2^-10) = 7 + 7/1024 is exact in float; fp16 values near 7 are 4/1024 apart,
  // so it rounds to 7 + 8/1024.
  const uint16_t s = float_to_half(1.0f + 1.0f / 1024);
  EXPECT_EQ(half_to_float(isa::dequantize_code(15, s, 4)), 7.0f + 8.0f / 1024);
  EXPECT_EQ(half_to_float(isa::dequantize_code(8, s, 4)), 0.0f);
  EXPECT_FALSE(std::signbit(half_to_float(isa::dequantize_code(8, s, 4))));
  EXPECT_EQ(half_to_float(isa::dequantize_code(0, s, 4)), -8.0f - 8.0f / 1024);
  EXPECT_EQ(half_to_float(isa::dequantize_code(0, float_to_half(2.0f), 8)), -256.0f);
  // A zero scale gives zeros (padding): +0 for z, -0 below it.
  EXPECT_EQ(isa::dequantize_code(8, 0, 4), 0u);
}

// ---- kernels ------------------------------------------------------------------

// A quantized matrix striped the way the emulator lays a QMatrix region out.
class StripedQMatrix {
 public:
  StripedQMatrix(const QRowFormat& f, const std::vector<uint8_t>& codes,
                 const std::vector<uint16_t>& scales, size_t m, uint32_t channels)
      : buf_((f.data_bytes() + 63) / 64 * 64, 128, m, channels) {
    for (size_t r = 0; r < m; ++r)
      isa::pack_qrow(f, codes.data() + r * f.cols, scales.data() + r * f.groups(), buf_.row(r));
  }
  const emu::StripedRows& rows() const { return buf_.rows(); }

 private:
  hyperdex::testing::StripedBuffer buf_;
};

const Kernels& scalar() { return emu::kernels_for(KernelLevel::Scalar); }

TEST(QuantKernels, DequantRowIsTheSameAtEveryLevel) {
  std::mt19937 rng(2);
  for (const QRowFormat f : {QRowFormat{4, 16, 64}, QRowFormat{4, 128, 2560}, QRowFormat{8, 32, 96},
                             QRowFormat{8, 8, 1000}, QRowFormat{4, 6, 36}, QRowFormat{8, 96, 96}}) {
    const auto codes = random_codes(rng, f.cols, f.bits);
    const auto scales = random_scales(rng, f.groups(), f.bits);
    std::vector<uint8_t> row(f.data_bytes());
    isa::pack_qrow(f, codes.data(), scales.data(), row.data());
    std::vector<uint16_t> h(f.cols);
    isa::dequantize_qrow(f, row.data(), h.data());
    for (KernelLevel level : {KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512}) {
      if (!emu::cpu_supports(level)) continue;
      std::vector<float> got(f.cols);
      emu::kernels_for(level).dequant_row(f, row.data(), got.data());
      for (uint32_t i = 0; i < f.cols; ++i)
        ASSERT_EQ(bits_of(got[i]), bits_of(half_to_float(h[i])))
            << emu::kernels_for(level).name << " " << f.bits << "/" << f.group << " " << i;
    }
  }
}

// matmul_q at every level, channel count and pool size equals the scalar
// dot_f16 over the dequantized fp16 rows (what matmul_f16 computes), bit for bit.
void check_matmul_q(const QRowFormat& f, size_t m, size_t n, std::mt19937& rng) {
  const size_t k = f.cols, x_stride = k + 5, y_stride = m + 3;
  const auto codes = random_codes(rng, m * k, f.bits);
  const auto scales = random_scales(rng, m * f.groups(), f.bits);
  std::vector<uint16_t> deq(m * k);
  {
    std::vector<uint8_t> row(f.data_bytes());
    for (size_t r = 0; r < m; ++r) {
      isa::pack_qrow(f, codes.data() + r * k, scales.data() + r * f.groups(), row.data());
      isa::dequantize_qrow(f, row.data(), deq.data() + r * k);
    }
  }
  std::vector<float> x(n * x_stride, NAN);  // NaN between tokens must never reach a result
  for (size_t t = 0; t < n; ++t) {
    const auto xt = random_x(rng, k);
    std::copy(xt.begin(), xt.end(), x.begin() + t * x_stride);
  }
  std::vector<float> want(n * y_stride);
  for (size_t t = 0; t < n; ++t)
    for (size_t r = 0; r < m; ++r)
      want[t * y_stride + r] = scalar().dot_f16(deq.data() + r * k, x.data() + t * x_stride, k);
  constexpr uint32_t kSentinel = 0x7fc0beef;
  for (KernelLevel level : {KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512}) {
    if (!emu::cpu_supports(level)) continue;
    const Kernels& kern = emu::kernels_for(level);
    for (uint32_t channels : {1u, 3u, 32u}) {
      const StripedQMatrix sm(f, codes, scales, m, channels);
      for (size_t threads : {1, 3}) {
        ThreadPool pool(threads);
        std::vector<uint32_t> y(n * y_stride, kSentinel);
        emu::matmul_q(kern, sm.rows(), f, m, x.data(), x_stride, n,
                      reinterpret_cast<float*>(y.data()), y_stride, pool);
        for (size_t t = 0; t < n; ++t)
          for (size_t i = 0; i < y_stride; ++i) {
            const uint32_t expect = i < m ? bits_of(want[t * y_stride + i]) : kSentinel;
            ASSERT_EQ(y[t * y_stride + i], expect)
                << kern.name << " int" << f.bits << " g=" << f.group << " k=" << k << " m=" << m
                << " n=" << n << " channels=" << channels << " threads=" << threads << " token "
                << t << " row " << i;
          }
      }
    }
  }
}

TEST(QuantKernels, MatmulEqualsFp16MatmulOfDequantizedWeights) {
  std::mt19937 rng(3);
  const QRowFormat formats[] = {
      {4, 16, 64},   {4, 128, 256}, {4, 32, 96},  {4, 128, 2560}, {8, 16, 48},  {8, 64, 640},
      {8, 128, 256}, {4, 96, 96},   {8, 96, 96},  {4, 8, 40},     {8, 40, 40},  {4, 2, 34},
  };
  for (const auto& f : formats) {
    for (size_t n : {1, 2, 7, 19}) {
      check_matmul_q(f, f.cols >= 1000 ? 40 : 150, n, rng);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(QuantKernels, RejectsABadFormat) {
  ThreadPool pool(1);
  emu::StripedRows rows;
  float x = 0, y = 0;
  EXPECT_THROW(emu::matmul_q(scalar(), rows, QRowFormat{4, 7, 64}, 1, &x, 64, 1, &y, 1, pool),
               std::invalid_argument);
}

// ---- plan, parameters, programs -------------------------------------------------

ModelSpec quantized_llama(uint32_t bits, uint32_t group, bool head = false) {
  ModelSpec s = hyperdex::testing::tiny_llama();
  s.weight_bits = bits;
  s.group_size = group;
  s.quantize_lm_head = head;
  return s;
}

TEST(QuantPlan, LinearsBecomeQMatrixRegions) {
  const ModelSpec spec = quantized_llama(4, 16);
  const MemoryPlan plan = plan_memory(spec, hyperdex::testing::small_preset(), 64, 8);
  for (const char* name : {"blk.0.attn_qkv", "blk.0.attn_output", "blk.1.ffn_gate_up",
                           "blk.1.ffn_down"}) {
    const Region& r = plan.find(name);
    EXPECT_EQ(r.kind, RegionKind::QMatrix) << name;
    EXPECT_EQ(r.bits, 4u);
    EXPECT_EQ(r.group, 16u);
    EXPECT_EQ(r.row_bytes % kRowAlignBytes, 0u);
    EXPECT_EQ(r.row_bytes, (r.qformat().data_bytes() + 63) / 64 * 64) << name;
  }
  // hidden 64, g 16: 4 groups -> one chunk of 32 + 32 bytes; down (96 inputs): 32 + 48 -> 128.
  EXPECT_EQ(plan.find("blk.0.attn_qkv").row_bytes, 64u);
  EXPECT_EQ(plan.find("blk.0.ffn_down").row_bytes, 128u);
  EXPECT_EQ(plan.find("tok_embd").kind, RegionKind::Matrix);
  EXPECT_EQ(plan.find("blk.0.attn_norm.weight").kind, RegionKind::Vector);
  EXPECT_EQ(plan.find_or_null("output"), nullptr);  // tied, head not quantized
  // The quantized plan is another plan.
  const MemoryPlan fp16 = plan_memory(hyperdex::testing::tiny_llama(),
                                      hyperdex::testing::small_preset(), 64, 8);
  EXPECT_NE(plan.fingerprint(), fp16.fingerprint());
  EXPECT_LT(plan.weights_bytes, fp16.weights_bytes);
  // Per row: each matrix's group is its input width; int8 here.
  const MemoryPlan per_row =
      plan_memory(quantized_llama(8, 0), hyperdex::testing::small_preset(), 64, 8);
  EXPECT_EQ(per_row.find("blk.0.ffn_down").group, 96u);
  EXPECT_EQ(per_row.find("blk.0.attn_qkv").group, 64u);
  EXPECT_NE(per_row.fingerprint(), plan.fingerprint());
  // Unfused passes: every projection its own QMatrix.
  PassOptions unfused;
  unfused.fuse_qkv = unfused.fuse_gate_up = false;
  const MemoryPlan sep = plan_memory(spec, hyperdex::testing::small_preset(), 64, 8, unfused);
  for (const char* name : {"blk.0.attn_q", "blk.0.attn_k", "blk.0.attn_v", "blk.0.ffn_gate",
                           "blk.0.ffn_up"})
    EXPECT_EQ(sep.find(name).kind, RegionKind::QMatrix) << name;
}

TEST(QuantPlan, QuantizedHeadGetsItsOwnRegionWithTiedEmbeddings) {
  const ModelSpec spec = quantized_llama(8, 32, true);
  const MemoryPlan plan = plan_memory(spec, hyperdex::testing::small_preset(), 64, 8);
  const Region& head = plan.find("output");
  EXPECT_EQ(head.kind, RegionKind::QMatrix);
  EXPECT_EQ(head.rows, spec.vocab_size);
  EXPECT_EQ(head.sources, std::vector<std::string>{"output.weight"});
  EXPECT_EQ(plan.find("tok_embd").kind, RegionKind::Matrix);
  const Programs p = generate_programs(spec, plan);
  const isa::Instruction& last = p.decode.code.back();
  EXPECT_EQ(last.op, isa::Opcode::MatMul);
  EXPECT_EQ(last.w0.base, head.base);
  EXPECT_EQ(last.i0, 8u);
  EXPECT_EQ(last.i1, 32u);
}

TEST(QuantPlan, SpecValidationNamesTheProblem) {
  ModelSpec s = quantized_llama(4, 48);  // 48 does not divide 64: a shorter last group
  EXPECT_NO_THROW(s.validate());
  s = quantized_llama(4, 7);  // odd: int4 codes of a group would not fill whole bytes
  try {
    s.validate();
    FAIL() << "no error";
  } catch (const SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("group 7"), std::string::npos) << e.what();
  }
  s = quantized_llama(3, 16);
  EXPECT_THROW(s.validate(), SpecError);
  s = hyperdex::testing::tiny_llama();
  s.group_size = 16;  // fp16 with a group size
  EXPECT_THROW(s.validate(), SpecError);
  s = quantized_llama(4, 32, true);
  s.vocab_size = 301;  // rows do not matter, only the input width
  EXPECT_NO_THROW(s.validate());
}

TEST(QuantPlan, ProgramsCarryTheWeightFormat) {
  const ModelSpec spec = quantized_llama(4, 16);
  const MemoryPlan plan = plan_memory(spec, hyperdex::testing::small_preset(), 64, 8);
  const Programs p = generate_programs(spec, plan);
  std::map<uint64_t, const Region*> by_base;
  for (const Region& r : plan.regions) by_base[r.base] = &r;
  size_t quantized = 0;
  for (const auto& in : p.decode.code) {
    if (in.op != isa::Opcode::MatMul && in.op != isa::Opcode::Prefetch) continue;
    const Region& r = *by_base.at(in.w0.base);
    if (r.quantized()) {
      EXPECT_EQ(in.i0, 4u);
      EXPECT_EQ(in.i1, 16u);
      ++quantized;
    } else {
      EXPECT_EQ(in.i0, 0u) << r.name;
      EXPECT_EQ(in.i1, 0u) << r.name;
    }
  }
  EXPECT_EQ(quantized, 2u * spec.num_layers * 4);  // qkv, output, gate_up, down: MATMUL + PREFETCH
  const std::string text = isa::disassemble(p.decode);
  EXPECT_NE(text.find("int4 group=16"), std::string::npos);
  EXPECT_NE(text.find("ISA v" + std::to_string(isa::kIsaVersion)), std::string::npos);
  // Round trip through the binary encoding.
  const auto bytes = isa::serialize(p.decode);
  const isa::Program back = isa::deserialize(bytes.data(), bytes.size());
  for (size_t i = 0; i < back.code.size(); ++i) {
    EXPECT_EQ(back.code[i].i0, p.decode.code[i].i0);
    EXPECT_EQ(back.code[i].i1, p.decode.code[i].i1);
  }
}

// write_params packs codes and scales into the region rows; errors name the tensor.
class QuantParams : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("hdx_quant_" + std::to_string(::getpid()) + "_" + info->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  struct Tensor {
    std::vector<uint8_t> bytes;
    std::vector<int64_t> shape;
    DType dtype;
  };
  // Every tensor of the tiny Llama: fp16 ones random, quantized ones as codes + scales.
  std::map<std::string, Tensor> tensors(const ModelSpec& s, std::mt19937& rng) {
    std::map<std::string, Tensor> t;
    auto f16 = [&](const std::string& name, std::vector<int64_t> shape) {
      size_t n = 1;
      for (int64_t d : shape) n *= size_t(d);
      std::vector<uint16_t> v(n);
      std::normal_distribution<float> d(0.0f, 0.3f);
      for (auto& h : v) h = float_to_half(d(rng));
      Tensor x{std::vector<uint8_t>(n * 2), std::move(shape), DType::F16};
      std::memcpy(x.bytes.data(), v.data(), n * 2);
      t[name] = std::move(x);
    };
    auto quant = [&](const std::string& name, int64_t out, int64_t in) {
      const QRowFormat f{s.weight_bits, s.group_for(uint32_t(in)), uint32_t(in)};
      t[name + ".weight"] =
          Tensor{random_codes(rng, size_t(out * in), f.bits), {out, in}, DType::U8};
      const auto sc = random_scales(rng, size_t(out) * f.groups(), f.bits);
      Tensor x{std::vector<uint8_t>(sc.size() * 2), {out, int64_t(f.groups())}, DType::F16};
      std::memcpy(x.bytes.data(), sc.data(), sc.size() * 2);
      t[name + ".scales"] = std::move(x);
    };
    const int64_t H = s.hidden_size, I = s.intermediate_size;
    const int64_t q = int64_t(s.num_heads) * s.head_dim, kv = int64_t(s.num_kv_heads) * s.head_dim;
    f16("tok_embd.weight", {int64_t(s.vocab_size), H});
    f16("output_norm.weight", {H});
    for (uint32_t l = 0; l < s.num_layers; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      f16(b + "attn_norm.weight", {H});
      f16(b + "ffn_norm.weight", {H});
      quant(b + "attn_q", q, H);
      quant(b + "attn_k", kv, H);
      quant(b + "attn_v", kv, H);
      quant(b + "attn_output", H, q);
      quant(b + "ffn_gate", I, H);
      quant(b + "ffn_up", I, H);
      quant(b + "ffn_down", H, I);
    }
    return t;
  }
  std::vector<ParamFile> write(const ModelSpec& s, const MemoryPlan& plan,
                               const std::map<std::string, Tensor>& t) {
    return write_params(s, plan, [&](const std::string& name) {
      auto it = t.find(name);
      if (it == t.end()) throw SpecError("no tensor " + name);
      return TensorView{it->second.bytes.data(), it->second.shape, it->second.dtype};
    }, dir_.string());
  }

  std::filesystem::path dir_;
};

TEST_F(QuantParams, RowsHoldPackedCodesAndScales) {
  const ModelSpec spec = quantized_llama(4, 32);
  const MemoryPlan plan = plan_memory(spec, hyperdex::testing::small_preset(4), 64, 8);
  std::mt19937 rng(4);
  const auto t = tensors(spec, rng);
  write(spec, plan, t);
  std::vector<std::vector<uint8_t>> ch;
  for (uint32_t c = 0; c < plan.num_channels; ++c)
    ch.push_back(read_file((dir_ / param_file_name(c)).string()));
  // Row r of the fused QKV region is attn_q row r (r < 64), then K, then V.
  const Region& qkv = plan.find("blk.1.attn_qkv");
  const QRowFormat f = qkv.qformat();
  for (uint32_t r : {0u, 5u, 63u, 64u, 95u, 127u}) {
    const std::string src = r < 64 ? "blk.1.attn_q" : r < 96 ? "blk.1.attn_k" : "blk.1.attn_v";
    const uint32_t local = r < 64 ? r : r < 96 ? r - 64 : r - 96;
    const uint8_t* row = ch[r % 4].data() + qkv.base + (r / 4) * qkv.row_bytes;
    std::vector<uint8_t> codes(f.cols);
    std::vector<uint16_t> scales(f.groups());
    isa::unpack_qrow(f, row, codes.data(), scales.data());
    const Tensor& w = t.at(src + ".weight");
    const Tensor& s = t.at(src + ".scales");
    EXPECT_EQ(std::memcmp(codes.data(), w.bytes.data() + local * f.cols, f.cols), 0) << r;
    EXPECT_EQ(std::memcmp(scales.data(), s.bytes.data() + local * f.groups() * 2, f.groups() * 2),
              0)
        << r;
    for (uint64_t b = f.data_bytes(); b < qkv.row_bytes; ++b) ASSERT_EQ(row[b], 0) << r;
  }
}

TEST_F(QuantParams, ErrorsNameTheTensor) {
  const ModelSpec spec = quantized_llama(4, 32);
  const MemoryPlan plan = plan_memory(spec, hyperdex::testing::small_preset(4), 64, 8);
  std::mt19937 rng(5);
  auto expect_error = [&](std::map<std::string, Tensor> t, const std::string& needle) {
    try {
      write(spec, plan, t);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const SpecError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto t = tensors(spec, rng);
  t["blk.0.ffn_up.weight"].dtype = DType::F16;  // an fp16 weight where codes belong
  expect_error(t, "blk.0.ffn_up.weight is f16");
  t = tensors(spec, rng);
  t.erase("blk.1.ffn_down.scales");
  expect_error(t, "blk.1.ffn_down.scales");
  t = tensors(spec, rng);
  t["blk.0.attn_k.scales"].shape = {32, 1};
  expect_error(t, "blk.0.attn_k.scales has shape [32, 1]");
  t = tensors(spec, rng);
  t["blk.0.attn_output.weight"].bytes[70] = 16;  // not a 4-bit code
  expect_error(t, "blk.0.attn_output.weight row 1 holds codes above 15");
  t = tensors(spec, rng);
  t["tok_embd.weight"].dtype = DType::U8;
  expect_error(t, "tok_embd.weight is u8");
}

// The cost model prices a quantized stream by its bytes; the MACs stay those of fp16.
TEST(QuantCost, StreamsTheRegionBytesAndKeepsTheMacs) {
  ModelSpec fp16 = hyperdex::testing::tiny_llama();
  fp16.hidden_size = 1024;
  fp16.num_heads = 16;
  fp16.num_kv_heads = 4;
  fp16.head_dim = 64;
  fp16.rope_dim = 64;
  fp16.rope_inv_freq.assign(32, 0.01f);
  fp16.intermediate_size = 2816;
  fp16.vocab_size = 4000;
  ModelSpec q4 = fp16;
  q4.weight_bits = 4;
  q4.group_size = 128;
  DevicePreset preset = hyperdex::testing::small_preset(32, 256ull << 20);
  preset.mac_trees = 256;  // enough MACs that fp16 decode is bound by the HBM stream
  const RunArgs decode{10, 1, false, true};
  auto price = [&](const ModelSpec& s) {
    const MemoryPlan plan = plan_memory(s, preset, 64, 8);
    const isa::Program p = generate_programs(s, plan).decode;
    return std::make_pair(cost::CostModel(p, preset).run(decode), cost::floors(p, preset, decode));
  };
  const auto [c16, f16] = price(fp16);
  const auto [c4, f4] = price(q4);
  EXPECT_EQ(c4.macs, c16.macs);
  EXPECT_EQ(f4.macs, f16.macs);
  // Per layer matrix: k = 1024 -> 8 groups: 32 + 512 bytes per row (576 with padding) vs 2048.
  EXPECT_LT(double(c4.weight_bytes), 0.4 * double(c16.weight_bytes));
  EXPECT_LT(double(f4.weight_bytes), 0.4 * double(f16.weight_bytes));
  EXPECT_GE(c4.time_ns, f4.bandwidth_ns);
  EXPECT_GE(c4.time_ns, f4.compute_ns);
  EXPECT_LT(c4.time_ns, 0.7 * c16.time_ns);
}

}  // namespace
