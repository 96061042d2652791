#include "common/file_io.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <unistd.h>

#include "common/error.h"

#if defined(__unix__) || defined(__APPLE__)
#define HYPERDEX_HAVE_MMAP 1
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define HYPERDEX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HYPERDEX_ASAN 1
#endif
#endif
#ifdef HYPERDEX_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace hyperdex {
namespace {

std::string errno_text() { return std::strerror(errno); }

uint64_t round_up(uint64_t v, uint64_t m) { return (v + m - 1) / m * m; }

#ifdef HYPERDEX_HAVE_MMAP
uint64_t page_size() { return uint64_t(::sysconf(_SC_PAGESIZE)); }

// Closes a descriptor when it goes out of scope.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};
#endif

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

#ifdef HYPERDEX_HAVE_MMAP

MappedMemory::MappedMemory(uint64_t bytes) {
  const uint64_t page = page_size();
  const uint64_t want = std::max<uint64_t>(bytes, 1);
  if (want > SIZE_MAX - 3 * page) throw std::bad_alloc();
  const uint64_t body = round_up(want, page);
  const uint64_t total = body + 2 * page;
  void* p = ::mmap(nullptr, total, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  mapping_ = static_cast<uint8_t*>(p);
  mapping_bytes_ = total;
  data_ = mapping_ + page;
  bytes_ = bytes;
  if (::mprotect(mapping_, page, PROT_NONE) != 0 ||
      ::mprotect(data_ + body, page, PROT_NONE) != 0) {
    reset();
    throw std::bad_alloc();
  }
  poison_tail();
}

void MappedMemory::reset() noexcept {
  if (mapping_) {
#ifdef HYPERDEX_ASAN
    ASAN_UNPOISON_MEMORY_REGION(mapping_, mapping_bytes_);  // the addresses may be mapped again
#endif
    ::munmap(mapping_, mapping_bytes_);
  }
  data_ = mapping_ = nullptr;
  bytes_ = mapping_bytes_ = 0;
}

// A heap block of the size would end at the next 64 bytes; so does what ASan lets through.
void MappedMemory::poison_tail() const {
#ifdef HYPERDEX_ASAN
  const uint64_t used = round_up(std::max<uint64_t>(bytes_, 1), 64);
  const uint64_t body = mapping_bytes_ - 2 * page_size();
  if (body > used) ASAN_POISON_MEMORY_REGION(data_ + used, body - used);
#endif
}

bool MappedMemory::map_file(uint64_t offset, const std::string& path, uint64_t bytes) {
  const uint64_t page = page_size();
  if (!data_ || bytes == 0 || offset % page != 0 || offset > bytes_ || bytes > bytes_ - offset)
    return false;
  Fd file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) return false;
  struct stat st;
  if (::fstat(file.fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
      uint64_t(st.st_size) != bytes)
    return false;
  // The last page reaches past the file's end: its bytes there read zero (as the
  // anonymous memory did) and take writes privately.
  void* p =
      ::mmap(data_ + offset, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, file.fd, 0);
  if (p == MAP_FAILED) {
    // A failed MAP_FIXED may have unmapped the range already: put zeroed memory back.
    p = ::mmap(data_ + offset, round_up(bytes, page), PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    poison_tail();
    return false;
  }
  poison_tail();  // an mmap interceptor may have cleared the poison of the last page
  return true;
}

#else  // no mmap: a zeroed heap block

MappedMemory::MappedMemory(uint64_t bytes) {
  const uint64_t rounded = round_up(std::max<uint64_t>(bytes, 1), 64);
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, rounded);
  data_ = mapping_ = static_cast<uint8_t*>(p);
  bytes_ = bytes;
  mapping_bytes_ = rounded;
}

void MappedMemory::reset() noexcept {
  std::free(mapping_);
  data_ = mapping_ = nullptr;
  bytes_ = mapping_bytes_ = 0;
}

void MappedMemory::poison_tail() const {}

bool MappedMemory::map_file(uint64_t, const std::string&, uint64_t) { return false; }

#endif

MappedMemory::~MappedMemory() { reset(); }

MappedMemory::MappedMemory(MappedMemory&& other) noexcept
    : data_(other.data_), bytes_(other.bytes_), mapping_(other.mapping_),
      mapping_bytes_(other.mapping_bytes_) {
  other.data_ = other.mapping_ = nullptr;
  other.bytes_ = other.mapping_bytes_ = 0;
}

MappedMemory& MappedMemory::operator=(MappedMemory&& other) noexcept {
  if (this != &other) {
    reset();
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
    std::swap(mapping_, other.mapping_);
    std::swap(mapping_bytes_, other.mapping_bytes_);
  }
  return *this;
}

}  // namespace hyperdex
