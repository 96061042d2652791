#include "xrt/kernel_abi.h"

namespace hyperdex::board {

std::string KernelArgs::name(uint32_t i) const {
  if (i < channels) {
    std::string n = std::to_string(i);
    return "hbm" + std::string(n.size() < 2 ? 2 - n.size() : 0, '0') + n;
  }
  static const char* names[] = {"program", "status",   "n_instructions", "start_pos", "n_tokens",
                                "flags",   "io_base",  "io_bytes",       "ring"};
  return i - channels < 9 ? names[i - channels] : "arg" + std::to_string(i);
}

std::string status_text(const StatusBlock& s) {
  const std::string at = "the kernel stopped at instruction " + std::to_string(s.instruction) + ": ";
  const std::string detail = std::to_string(s.detail);
  switch (KernelStatus(s.code)) {
    case KernelStatus::Ok: return "ok";
    case KernelStatus::BadProgram:
      return at + "the program is malformed (bad header, checksum or opcode); recompile the model";
    case KernelStatus::OutOfBounds:
      return at + "an operand or HBM region lies outside its memory (offset " + detail +
             "); the program does not match this xclbin's memory, recompile";
    case KernelStatus::PositionOutOfRange:
      return at + "position " + detail + " is past the KV cache (max_length)";
    case KernelStatus::TokenOutOfRange:
      return at + "row " + detail + " is outside its embedding table";
    case KernelStatus::Fault:
      return at + "the device reported a fault (code detail " + detail + "); check the board with "
             "xbutil examine";
  }
  return at + "unknown status code " + std::to_string(s.code) + " (detail " + detail + ")";
}

}  // namespace hyperdex::board
