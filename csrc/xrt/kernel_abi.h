// The contract between the host and the LPU kernel inside an xclbin: the kernel's
// arguments in order, the status block it writes, and the key-value metadata an
// xclbin carries so the host can tell it fits the compiled programs.
// docs/xrt.md is the prose version; keep the two in step.
#pragma once
#include <cstdint>
#include <string>

namespace hyperdex::board {

constexpr uint32_t kKernelAbiVersion = 1;
constexpr const char* kDefaultKernel = "lpu";

// Argument indices for a device of `channels` HBM pseudo-channels: one global
// pointer per channel (arg c is pseudo-channel c, connected to its own HBM bank),
// then the program, the status block and the scalars of a run.
struct KernelArgs {
  uint32_t channels;

  uint32_t hbm(uint32_t c) const { return c; }
  uint32_t program() const { return channels; }         // the program file's bytes
  uint32_t status() const { return channels + 1; }      // StatusBlock, written by the kernel
  uint32_t n_instructions() const { return channels + 2; }  // u32
  uint32_t start_pos() const { return channels + 3; }   // u32
  uint32_t n_tokens() const { return channels + 4; }    // u32
  uint32_t flags() const { return channels + 5; }       // u32, kRunLogitsAll | kRunWantLogits
  uint32_t io_base() const { return channels + 6; }     // u64, I/O region offset in channel 0
  uint32_t io_bytes() const { return channels + 7; }    // u32
  uint32_t ring() const { return channels + 8; }        // u32, rank | size << 16
  uint32_t count() const { return channels + 9; }

  bool is_buffer(uint32_t i) const { return i <= status(); }
  uint32_t scalar_bytes(uint32_t i) const { return i == io_base() ? 8 : 4; }
  std::string name(uint32_t i) const;  // "hbm07", "program", ..., as in the xclbin's metadata
};

constexpr uint32_t kRunLogitsAll = 1;
constexpr uint32_t kRunWantLogits = 2;

// The program buffer holds the program file as written in inst/ (header, then
// 96-byte instructions); the status block is 64 bytes.
constexpr uint64_t kStatusBytes = 64;

// What the kernel writes into the status block when a run ends. The host zeroes
// the block before every run, so a kernel that finishes cleanly may leave it alone.
enum class KernelStatus : uint32_t {
  Ok = 0,
  BadProgram = 1,          // bad header, checksum or opcode
  OutOfBounds = 2,         // an operand or region outside the memory it names
  PositionOutOfRange = 3,  // a KV row past the cache (max_length)
  TokenOutOfRange = 4,     // an embedding row outside its table
  Fault = 5,               // anything else the kernel detects (e.g. an HBM ECC error)
};

struct StatusBlock {
  uint32_t code = 0;         // KernelStatus
  uint32_t instruction = 0;  // index of the instruction that failed
  uint32_t detail = 0;       // code-specific (the offending row, position or token)
  uint32_t reserved[13] = {};
};
static_assert(sizeof(StatusBlock) == kStatusBytes, "the status block is 64 bytes");

std::string status_text(const StatusBlock& s);  // "the kernel stopped at instruction 12: ..."

// Keys of the xclbin's KEYVALUE_METADATA section (xclbinutil --add-key-value
// USER:<key>:<value> writes the same format).
namespace meta {
constexpr const char* kAbi = "hyperdex.kernel_abi";
constexpr const char* kIsa = "hyperdex.isa_version";
constexpr const char* kProgramFormat = "hyperdex.program_format_version";
constexpr const char* kPreset = "hyperdex.preset";
constexpr const char* kChannels = "hyperdex.hbm_channels";
}  // namespace meta

}  // namespace hyperdex::board
