// Exceptions the core throws; the bindings map each to its Python counterpart in
// hyperdex.errors, so a message written here reaches the user unchanged.
#pragma once
#include <stdexcept>
#include <string>

namespace hyperdex {

// A hyperdex artifact (program, parameter file) is corrupt, stale or of another version.
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The model and options do not fit the device (HBM, on-chip memory).
struct CapacityError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Invalid spec or arguments handed to the core.
struct SpecError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// A device failed while running (bad operand, sequence past max_length, ...).
struct DeviceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The run was interrupted by the host (Ctrl-C).
struct Interrupted : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace hyperdex
