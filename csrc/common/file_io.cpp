#include "common/file_io.h"

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <unistd.h>

#include "common/error.h"

namespace hyperdex {
namespace {

std::string errno_text() { return std::strerror(errno); }

}  // namespace

std::vector<uint8_t> read_file(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw FormatError("cannot open " + path + ": " + errno_text());
  std::vector<uint8_t> data;
  uint8_t buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f.get())) > 0) data.insert(data.end(), buf, buf + got);
  if (std::ferror(f.get())) throw FormatError("cannot read " + path);
  return data;
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  AtomicFileWriter w(path);
  w.write(data, size);
  w.commit();
}

AtomicFileWriter::AtomicFileWriter(std::string path)
    : path_(std::move(path)), tmp_path_(path_ + ".tmp." + std::to_string(::getpid())) {
  file_.reset(std::fopen(tmp_path_.c_str(), "wb"));
  if (!file_) throw std::runtime_error("cannot create " + tmp_path_ + ": " + errno_text());
}

AtomicFileWriter::~AtomicFileWriter() {
  if (file_) {
    file_.reset();
    std::remove(tmp_path_.c_str());
  }
}

void AtomicFileWriter::write(const void* data, size_t size) {
  if (size && std::fwrite(data, 1, size, file_.get()) != size)
    throw std::runtime_error("cannot write " + tmp_path_ + ": " + errno_text());
  written_ += size;
}

void AtomicFileWriter::write_zeros(size_t size) {
  static constexpr uint8_t kZeros[4096] = {};
  while (size) {
    size_t n = size < sizeof kZeros ? size : sizeof kZeros;
    write(kZeros, n);
    size -= n;
  }
}

void AtomicFileWriter::commit() {
  if (std::fflush(file_.get()) != 0 || ::fsync(::fileno(file_.get())) != 0)
    throw std::runtime_error("cannot flush " + tmp_path_ + ": " + errno_text());
  file_.reset();
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    std::remove(tmp_path_.c_str());
    throw std::runtime_error("cannot rename " + tmp_path_ + " to " + path_ + ": " + errno_text());
  }
}

}  // namespace hyperdex
