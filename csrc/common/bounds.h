// Overflow-safe bounds arithmetic. Offsets and sizes that come from artifacts (a memory
// map, a program, a parameter file, an xclbin) may hold any 64-bit value, so a check
// written as `offset + length <= capacity` can wrap round and pass. Every check that a
// range lies inside a buffer goes through fits(), which has no sum that can wrap; an
// extent computed from such fields (rows * stride * element size, base + rows * row
// bytes) is computed as a Checked, which remembers an overflow instead of wrapping.
#pragma once
#include <cstdint>

namespace hyperdex {

// [offset, offset + length) lies inside [0, capacity).
constexpr bool fits(uint64_t offset, uint64_t length, uint64_t capacity) noexcept {
  return length <= capacity && offset <= capacity - length;
}

// A uint64_t computed with overflow checks: a + or * whose exact result does not fit in
// 64 bits gives an overflowed Checked (ok() false), and so does anything computed from one.
// Plain uint64_t arithmetic is untouched: only an operand that is a Checked makes it checked.
class Checked {
 public:
  constexpr Checked(uint64_t value = 0) noexcept : value_(value) {}  // NOLINT: implicit on purpose
  static constexpr Checked overflowed() noexcept {
    Checked c;
    c.ok_ = false;
    return c;
  }
  constexpr bool ok() const noexcept { return ok_; }
  // The value; meaningful only when ok().
  constexpr uint64_t value() const noexcept { return value_; }

  friend constexpr Checked operator+(Checked a, Checked b) noexcept {
    uint64_t r = 0;
    if (!a.ok_ || !b.ok_ || __builtin_add_overflow(a.value_, b.value_, &r)) return overflowed();
    return Checked(r);
  }
  friend constexpr Checked operator*(Checked a, Checked b) noexcept {
    uint64_t r = 0;
    if (!a.ok_ || !b.ok_ || __builtin_mul_overflow(a.value_, b.value_, &r)) return overflowed();
    return Checked(r);
  }
  Checked& operator+=(Checked b) noexcept { return *this = *this + b; }
  Checked& operator*=(Checked b) noexcept { return *this = *this * b; }

 private:
  uint64_t value_ = 0;
  bool ok_ = true;
};

// fits() for computed extents: false as well when either overflowed.
constexpr bool fits(Checked offset, Checked length, uint64_t capacity) noexcept {
  return offset.ok() && length.ok() && fits(offset.value(), length.value(), capacity);
}

// Rounds up to a multiple of `align` (> 0), overflow-checked.
constexpr Checked align_up_checked(Checked v, uint64_t align) noexcept {
  const Checked r = v + (align - 1);
  return r.ok() ? Checked(r.value() / align * align) : r;
}

}  // namespace hyperdex
