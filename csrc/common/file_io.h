// Whole-file reads and atomic writes (temporary name in the same folder, then
// rename), so an interrupted write never leaves a file that looks complete; and
// MappedMemory, memory from mmap that can map files copy-on-write.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace hyperdex {

std::vector<uint8_t> read_file(const std::string& path);
void write_file_atomic(const std::string& path, const void* data, size_t size);

// Streams a file out in pieces; commit() renames it into place. Destroying an
// uncommitted writer removes the temporary file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  void write(const void* data, size_t size);
  void write_zeros(size_t size);
  uint64_t bytes_written() const { return written_; }
  void commit();

 private:
  std::string path_, tmp_path_;
  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, Closer> file_;  // reset in commit(); else the destructor discards
  uint64_t written_ = 0;
};

// Zeroed, page-aligned memory from an anonymous private mapping (MAP_NORESERVE: a page
// costs nothing until it is touched), unmapped by the destructor, with an inaccessible
// guard page on either side (under AddressSanitizer the bytes between the 64-byte-rounded
// size and the page end are poisoned too, as a heap block's would be). Parts of it can be
// replaced by copy-on-write mappings of files (map_file). Where mmap is missing (not a
// Unix) it is a zeroed heap block and map_file always declines.
class MappedMemory {
 public:
  MappedMemory() = default;
  // `bytes` (0 counts as 1) of zeroed memory; std::bad_alloc when the address space
  // cannot be had.
  explicit MappedMemory(uint64_t bytes);
  ~MappedMemory();
  MappedMemory(MappedMemory&& other) noexcept;
  MappedMemory& operator=(MappedMemory&& other) noexcept;
  MappedMemory(const MappedMemory&) = delete;
  MappedMemory& operator=(const MappedMemory&) = delete;

  uint8_t* get() const { return data_; }
  uint64_t size() const { return bytes_; }

  // Replaces [offset, offset + bytes) with a private (copy-on-write) mapping of the
  // regular file at `path`, which must be exactly `bytes` long: its bytes read through
  // the page cache (memory the system holds once, however many processes map it), and
  // a write lands in a private copy of its page, never in the file. Returns false, with
  // the range's contents unspecified (zero or as before), when it cannot: `offset` not a
  // multiple of the page size, `bytes` zero or past the end, the file missing,
  // unreadable, not regular or of another size, or mmap failing; the caller then writes
  // the bytes itself (and reports what is wrong with the file). The size is checked with
  // fstat on the descriptor that is mapped. What no check here can rule out: the file
  // truncated while mapped (an access past its new end is SIGBUS) or rewritten in place
  // (the unwritten pages show the new bytes). hyperdex never does either to a param file
  // (files are replaced by rename, which leaves a mapping on the old file).
  bool map_file(uint64_t offset, const std::string& path, uint64_t bytes);

 private:
  void reset() noexcept;
  void poison_tail() const;
  uint8_t* data_ = nullptr;     // the usable bytes (after the leading guard page)
  uint64_t bytes_ = 0;          // usable size as asked for
  uint8_t* mapping_ = nullptr;  // the whole reservation, guard pages included
  uint64_t mapping_bytes_ = 0;
};

}  // namespace hyperdex
