// Whole-file reads and atomic writes (temporary name in the same folder, then
// rename), so an interrupted write never leaves a file that looks complete.
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

}  // namespace hyperdex
