#include "xrt/xclbin.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <set>
#include <sstream>

#include "common/bounds.h"
#include "common/crc32.h"
#include "common/error.h"
#include "common/file_io.h"
#include "isa/isa.h"
#include "xrt/kernel_abi.h"

namespace hyperdex::board {
namespace {

// Byte offsets of XRT's xclbin.h structures (all little-endian, naturally aligned).
constexpr size_t kAxlfHeader = 304;     // struct axlf: magic, signature, key block, unique id
constexpr size_t kSectionTable = 456;   // sizeof(axlf) - sizeof(axlf_section_header)
constexpr size_t kSectionHeaderBytes = 40;
constexpr size_t kMemDataBytes = 40;
constexpr size_t kConnectionBytes = 12;
constexpr size_t kIpDataBytes = 80;

// Section kinds (xclbin.h axlf_section_kind).
constexpr uint32_t kEmbeddedMetadata = 2;
constexpr uint32_t kMemTopology = 6;
constexpr uint32_t kConnectivity = 7;
constexpr uint32_t kIpLayout = 8;
constexpr uint32_t kKeyValueMetadata = 15;
constexpr uint32_t kGroupTopology = 26;
constexpr uint32_t kGroupConnectivity = 27;
constexpr uint32_t kIpKernel = 1;  // IP_TYPE

template <typename T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
void put(std::vector<uint8_t>& out, size_t at, T v) {
  std::memcpy(out.data() + at, &v, sizeof(T));
}
void put_str(std::vector<uint8_t>& out, size_t at, const std::string& s, size_t cap) {
  std::memcpy(out.data() + at, s.data(), std::min(s.size(), cap - 1));
}
std::string get_str(const uint8_t* p, size_t cap) {
  size_t n = 0;
  while (n < cap && p[n]) ++n;
  return std::string(reinterpret_cast<const char*>(p), n);
}

struct Section {
  uint32_t kind;
  const uint8_t* data;
  uint64_t size;
};

// --- a small XML tag scanner: enough for the EMBEDDED_METADATA v++ and the stub write ---

struct Tag {
  std::string name;  // "kernel", "/kernel", "arg", ...
  std::map<std::string, std::string> attrs;
};

std::vector<Tag> scan_tags(const std::string& xml) {
  std::vector<Tag> tags;
  size_t i = 0;
  while ((i = xml.find('<', i)) != std::string::npos) {
    if (xml.compare(i, 4, "<!--") == 0) {
      size_t e = xml.find("-->", i);
      i = e == std::string::npos ? xml.size() : e + 3;
      continue;
    }
    size_t end = xml.find('>', i);
    if (end == std::string::npos) break;
    std::string body = xml.substr(i + 1, end - i - 1);
    i = end + 1;
    if (body.empty() || body[0] == '?' || body[0] == '!') continue;
    Tag t;
    size_t k = 0;
    while (k < body.size() && !std::isspace(static_cast<unsigned char>(body[k])) && body[k] != '/')
      ++k;
    t.name = body.substr(0, k);
    if (t.name.empty() && !body.empty() && body[0] == '/') {
      size_t j = 1;
      while (j < body.size() && !std::isspace(static_cast<unsigned char>(body[j]))) ++j;
      t.name = body.substr(0, j);
    }
    while (k < body.size()) {
      size_t eq = body.find('=', k);
      if (eq == std::string::npos) break;
      size_t ks = k;
      while (ks < eq && (std::isspace(static_cast<unsigned char>(body[ks])) || body[ks] == '/')) ++ks;
      std::string key = body.substr(ks, eq - ks);
      while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back()))) key.pop_back();
      size_t q = body.find_first_of("\"'", eq);
      if (q == std::string::npos) break;
      size_t qe = body.find(body[q], q + 1);
      if (qe == std::string::npos) break;
      t.attrs[key] = body.substr(q + 1, qe - q - 1);
      k = qe + 1;
    }
    tags.push_back(std::move(t));
  }
  return tags;
}

uint64_t to_u64(const std::string& s) {
  if (s.empty()) return 0;
  try {
    return std::stoull(s, nullptr, 0);
  } catch (const std::exception&) {
    return 0;
  }
}

std::string attr(const Tag& t, const char* key) {
  auto it = t.attrs.find(key);
  return it == t.attrs.end() ? std::string() : it->second;
}

// --- KEYVALUE_METADATA: {"key_values": {"kv_data": {"key": ..., "value": ...}, ...}} -----

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// Reads a JSON string starting at the quote at `i`; returns the index after it.
size_t read_json_string(const std::string& s, size_t i, std::string& out) {
  out.clear();
  for (++i; i < s.size() && s[i] != '"'; ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    out += s[i];
  }
  return i + 1;
}

// Every "key": "...", "value": "..." pair, in whatever nesting xclbinutil wrote.
std::map<std::string, std::string> parse_key_values(const std::string& json) {
  std::map<std::string, std::string> kv;
  std::string pending_key;
  bool have_key = false;
  for (size_t i = 0; i < json.size();) {
    if (json[i] != '"') {
      ++i;
      continue;
    }
    std::string name;
    i = read_json_string(json, i, name);
    size_t colon = json.find_first_not_of(" \t\r\n", i);
    if (colon == std::string::npos || json[colon] != ':') continue;
    size_t v = json.find_first_not_of(" \t\r\n", colon + 1);
    if (v == std::string::npos || json[v] != '"') {
      i = colon + 1;
      continue;
    }
    std::string value;
    i = read_json_string(json, v, value);
    if (name == "key") {
      pending_key = value;
      have_key = true;
    } else if (name == "value" && have_key) {
      kv[pending_key] = value;
      have_key = false;
    }
  }
  return kv;
}

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) s += d[p[i] >> 4], s += d[p[i] & 15];
  return s;
}

}  // namespace

const XclbinKernel* XclbinInfo::kernel(const std::string& name) const {
  for (const auto& k : kernels)
    if (k.name == name) return &k;
  return nullptr;
}

XclbinInfo parse_xclbin(const std::vector<uint8_t>& bytes, const std::string& what) {
  auto bad = [&](const std::string& why) {
    return FormatError(what + " is not a usable xclbin: " + why);
  };
  const uint8_t* b = bytes.data();
  if (bytes.size() < kSectionTable || std::memcmp(b, "xclbin2", 8) != 0)
    throw bad("no xclbin2 magic (too short, or another format)");
  const uint64_t length = get<uint64_t>(b + kAxlfHeader);
  const uint32_t count = get<uint32_t>(b + kAxlfHeader + 144);
  if (length > bytes.size()) throw bad("truncated (its header says " + std::to_string(length) + " bytes)");
  if (!fits(kSectionTable, Checked(count) * kSectionHeaderBytes, bytes.size()))
    throw bad("its section table runs past the end");
  XclbinInfo x;
  x.what = what;
  x.uuid = hex(b + kAxlfHeader + 112, 16);
  x.platform = get_str(b + kAxlfHeader + 48, 64);
  std::vector<Section> sections;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* h = b + kSectionTable + size_t(i) * kSectionHeaderBytes;
    Section s{get<uint32_t>(h), nullptr, get<uint64_t>(h + 32)};
    const uint64_t off = get<uint64_t>(h + 24);
    if (!fits(off, s.size, bytes.size()))
      throw bad("section " + std::to_string(i) + " lies outside the file");
    s.data = b + off;
    sections.push_back(s);
  }
  auto find = [&](uint32_t kind) -> const Section* {
    for (const auto& s : sections)
      if (s.kind == kind) return &s;
    return nullptr;
  };
  // Like XRT: the group sections, where present, are the ones kernel group ids index.
  const Section* mem = find(kGroupTopology) ? find(kGroupTopology) : find(kMemTopology);
  const Section* conn = find(kGroupConnectivity) ? find(kGroupConnectivity) : find(kConnectivity);
  const Section* ips = find(kIpLayout);
  const Section* xml = find(kEmbeddedMetadata);
  if (mem) {
    int32_t n = mem->size >= 8 ? get<int32_t>(mem->data) : -1;
    if (n < 0 || !fits(8, Checked(uint64_t(n)) * kMemDataBytes, mem->size))
      throw bad("MEM_TOPOLOGY is malformed");
    for (int32_t i = 0; i < n; ++i) {
      const uint8_t* m = mem->data + 8 + size_t(i) * kMemDataBytes;
      x.banks.push_back(XclbinBank{get_str(m + 24, 16), m[0], m[1] != 0,
                                   get<uint64_t>(m + 8) * 1024, get<uint64_t>(m + 16)});
    }
  }
  std::vector<std::string> ip_names;
  if (ips) {
    int32_t n = ips->size >= 8 ? get<int32_t>(ips->data) : -1;
    if (n < 0 || !fits(8, Checked(uint64_t(n)) * kIpDataBytes, ips->size))
      throw bad("IP_LAYOUT is malformed");
    for (int32_t i = 0; i < n; ++i) {
      const uint8_t* d = ips->data + 8 + size_t(i) * kIpDataBytes;
      ip_names.push_back(get<uint32_t>(d) == kIpKernel ? get_str(d + 16, 64) : std::string());
    }
  }
  if (xml) {
    std::string text(reinterpret_cast<const char*>(xml->data), size_t(xml->size));
    XclbinKernel* current = nullptr;
    for (const Tag& t : scan_tags(text)) {
      if (t.name == "kernel") {
        x.kernels.push_back(XclbinKernel{attr(t, "name"), {}, {}});
        current = &x.kernels.back();
      } else if (t.name == "/kernel") {
        current = nullptr;
      } else if (current && t.name == "arg") {
        XclbinArg a;
        a.name = attr(t, "name");
        std::string id = attr(t, "id");
        a.id = id.empty() ? -1 : int64_t(to_u64(id));
        a.global = to_u64(attr(t, "addressQualifier")) == 1;
        a.offset = to_u64(attr(t, "offset"));
        a.size = to_u64(attr(t, "size"));
        a.type = attr(t, "type");
        current->args.push_back(a);
      }
    }
    for (auto& k : x.kernels)
      std::stable_sort(k.args.begin(), k.args.end(),
                       [](const XclbinArg& l, const XclbinArg& r) { return l.id < r.id; });
  }
  // Compute units are IP_LAYOUT entries "kernel:instance"; connectivity ties an
  // argument of a compute unit to a bank. The first unit's connections are the
  // kernel's (hyperdex drives one unit).
  for (auto& k : x.kernels) {
    int32_t first_ip = -1;
    for (size_t i = 0; i < ip_names.size(); ++i) {
      const std::string& n = ip_names[i];
      if (n.size() > k.name.size() && n.compare(0, k.name.size() + 1, k.name + ":") == 0) {
        k.instances.push_back(n.substr(k.name.size() + 1));
        if (first_ip < 0) first_ip = int32_t(i);
      }
    }
    if (!conn || first_ip < 0) continue;
    int32_t n = conn->size >= 4 ? get<int32_t>(conn->data) : -1;
    if (n < 0 || !fits(4, Checked(uint64_t(n)) * kConnectionBytes, conn->size))
      throw bad("CONNECTIVITY is malformed");
    for (int32_t i = 0; i < n; ++i) {
      const uint8_t* c = conn->data + 4 + size_t(i) * kConnectionBytes;
      if (get<int32_t>(c + 4) != first_ip) continue;
      const int32_t arg = get<int32_t>(c), bank = get<int32_t>(c + 8);
      for (auto& a : k.args)
        if (a.id == arg) a.bank = bank;
    }
  }
  if (const Section* kv = find(kKeyValueMetadata))
    x.metadata = parse_key_values(std::string(reinterpret_cast<const char*>(kv->data), size_t(kv->size)));
  return x;
}

XclbinInfo read_xclbin(const std::string& path) {
  std::vector<uint8_t> bytes;
  try {
    bytes = read_file(path);
  } catch (const std::exception& e) {
    throw FormatError("cannot read the xclbin " + path + ": " + e.what());
  }
  return parse_xclbin(bytes, path);
}

void check_xclbin(const XclbinInfo& x, const DevicePreset& preset, const std::string& kernel,
                  const DeviceLayout* layout) {
  auto fail = [&](const std::string& why) {
    throw FormatError("the xclbin " + x.what + " does not fit the compiled model: " + why);
  };
  auto meta = [&](const char* key) -> std::string {
    auto it = x.metadata.find(key);
    return it == x.metadata.end() ? std::string() : it->second;
  };
  if (meta(meta::kAbi).empty())
    fail("it carries no hyperdex metadata (KEYVALUE_METADATA key " + std::string(meta::kAbi) +
         "), so it was not built for hyperdex; docs/xrt.md lists the keys to stamp with "
         "xclbinutil --add-key-value");
  auto expect = [&](const char* key, const std::string& want, const std::string& what) {
    const std::string got = meta(key);
    if (got != want)
      fail("it was built for " + what + " " + (got.empty() ? "(unknown)" : got) + ", the programs need " +
           want + " (" + key + "); use the xclbin built for this hyperdex and preset, or recompile "
           "the model for the board's preset");
  };
  expect(meta::kAbi, std::to_string(kKernelAbiVersion), "kernel interface");
  expect(meta::kIsa, std::to_string(isa::kIsaVersion), "ISA version");
  expect(meta::kProgramFormat, std::to_string(isa::kProgramFormatVersion), "program format version");
  expect(meta::kPreset, preset.name, "device preset");
  expect(meta::kChannels, std::to_string(preset.hbm_channels), "HBM pseudo-channel count");
  const XclbinKernel* k = x.kernel(kernel);
  if (!k) {
    std::string names;
    for (const auto& kk : x.kernels) names += (names.empty() ? "" : ", ") + kk.name;
    fail("it has no kernel '" + kernel + "' (it has: " + (names.empty() ? "none" : names) + ")");
  }
  if (k->instances.empty()) fail("kernel '" + kernel + "' has no compute unit in IP_LAYOUT");
  const KernelArgs abi{preset.hbm_channels};
  if (k->args.size() != abi.count())
    fail("kernel '" + kernel + "' has " + std::to_string(k->args.size()) + " arguments, interface v" +
         std::to_string(kKernelAbiVersion) + " has " + std::to_string(abi.count()));
  std::set<int32_t> banks;
  for (uint32_t i = 0; i < abi.count(); ++i) {
    const XclbinArg& a = k->args[i];
    if (a.id != int64_t(i) || a.name != abi.name(i))
      fail("argument " + std::to_string(i) + " is '" + a.name + "', expected '" + abi.name(i) + "'");
    if (a.global != abi.is_buffer(i))
      fail("argument '" + a.name + "' should be " + (abi.is_buffer(i) ? "a buffer" : "a scalar"));
    if (!abi.is_buffer(i)) continue;
    if (a.bank < 0 || size_t(a.bank) >= x.banks.size() || !x.banks[size_t(a.bank)].used)
      fail("argument '" + a.name + "' is connected to no memory bank");
    if (i >= preset.hbm_channels) continue;
    const XclbinBank& bank = x.banks[size_t(a.bank)];
    if (bank.type != kMemHbm) fail("argument '" + a.name + "' is connected to " + bank.tag + ", not HBM");
    if (!banks.insert(a.bank).second)
      fail("arguments share the bank " + bank.tag + "; each pseudo-channel needs its own");
    if (layout && i < layout->channel_bytes.size() && bank.bytes < layout->channel_bytes[i])
      fail(bank.tag + " holds " + std::to_string(bank.bytes) + " bytes, pseudo-channel " +
           std::to_string(i) + " needs " + std::to_string(layout->channel_bytes[i]));
  }
}

std::vector<uint8_t> make_stub_xclbin(const DevicePreset& preset, const std::string& kernel,
                                      const std::map<std::string, std::string>& metadata) {
  preset.validate();
  const uint32_t C = preset.hbm_channels;
  const KernelArgs abi{C};
  const std::string cu = kernel + "_1";
  constexpr uint64_t kCuBase = 0x1800000;  // where v++ usually places the first unit

  std::vector<uint8_t> mem(8 + size_t(C) * kMemDataBytes, 0);
  put<int32_t>(mem, 0, int32_t(C));
  for (uint32_t c = 0; c < C; ++c) {
    const size_t at = 8 + size_t(c) * kMemDataBytes;
    mem[at] = kMemHbm;
    mem[at + 1] = 1;
    put<uint64_t>(mem, at + 8, preset.hbm_channel_bytes / 1024);
    put<uint64_t>(mem, at + 16, uint64_t(c) * preset.hbm_channel_bytes);
    put_str(mem, at + 24, "HBM[" + std::to_string(c) + "]", 16);
  }
  // Channel c's argument on bank c; the program and status buffers share bank 0.
  const uint32_t buffers = abi.status() + 1;
  std::vector<uint8_t> conn(4 + size_t(buffers) * kConnectionBytes, 0);
  put<int32_t>(conn, 0, int32_t(buffers));
  for (uint32_t i = 0; i < buffers; ++i) {
    const size_t at = 4 + size_t(i) * kConnectionBytes;
    put<int32_t>(conn, at, int32_t(i));
    put<int32_t>(conn, at + 4, 0);
    put<int32_t>(conn, at + 8, int32_t(i < C ? i : 0));
  }
  std::vector<uint8_t> ips(8 + kIpDataBytes, 0);
  put<int32_t>(ips, 0, 1);
  put<uint32_t>(ips, 8, kIpKernel);
  put<uint32_t>(ips, 12, 1u);  // interrupt enabled, ap_ctrl_hs (control 0 in bits 8-15)
  put<uint64_t>(ips, 16, kCuBase);
  put_str(ips, 24, kernel + ":" + cu, 64);

  std::ostringstream xml;
  xml << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      << "<project name=\"hyperdex\"><platform vendor=\"hyperdex\" boardid=\"" << preset.name
      << "\" name=\"hyperdex_stub\"><version major=\"1\" minor=\"0\"/><device name=\"fpga0\" "
         "fpgaDevice=\"none\" addrWidth=\"0\"><core name=\"OCL_REGION_0\" target=\"hw\" "
         "type=\"clc_region\" numComputeUnits=\"1\">\n"
      << "<kernel name=\"" << kernel << "\" language=\"c\" vlnv=\"hyperdex:lpu:" << kernel
      << ":1.0\" preferredWorkGroupSizeMultiple=\"0\" workGroupSize=\"1\" interrupt=\"true\" "
         "hwControlProtocol=\"ap_ctrl_hs\">\n"
      << "<port name=\"S_AXI_CONTROL\" mode=\"slave\" range=\"0x1000\" dataWidth=\"32\" "
         "portType=\"addressable\" base=\"0x0\"/>\n";
  for (uint32_t i = 0; i < buffers; ++i)
    xml << "<port name=\"M_AXI_" << abi.name(i) << "\" mode=\"master\" range=\"0xFFFFFFFFFFFFFFFF\" "
        << "dataWidth=\"512\" portType=\"addressable\" base=\"0x0\"/>\n";
  uint64_t reg = 0x10;  // after ap_ctrl, GIE, IER and ISR
  for (uint32_t i = 0; i < abi.count(); ++i) {
    const bool buf = abi.is_buffer(i);
    const uint32_t size = buf ? 8 : abi.scalar_bytes(i);
    xml << "<arg name=\"" << abi.name(i) << "\" addressQualifier=\"" << (buf ? 1 : 0) << "\" id=\""
        << i << "\" port=\"" << (buf ? "M_AXI_" + abi.name(i) : std::string("S_AXI_CONTROL"))
        << "\" size=\"0x" << std::hex << size << "\" offset=\"0x" << reg << std::dec
        << "\" hostOffset=\"0x0\" hostSize=\"0x" << std::hex << size << std::dec << "\" type=\""
        << (buf ? "void*" : size == 8 ? "ulong" : "uint") << "\"/>\n";
    reg += 8;
  }
  xml << "<instance name=\"" << cu << "\"><addrRemap base=\"0x" << std::hex << kCuBase << std::dec
      << "\" port=\"S_AXI_CONTROL\"/></instance>\n</kernel>\n</core></device></platform></project>\n";
  const std::string xml_text = xml.str();

  std::map<std::string, std::string> kv = {
      {meta::kAbi, std::to_string(kKernelAbiVersion)},
      {meta::kIsa, std::to_string(isa::kIsaVersion)},
      {meta::kProgramFormat, std::to_string(isa::kProgramFormatVersion)},
      {meta::kPreset, preset.name},
      {meta::kChannels, std::to_string(C)},
  };
  for (const auto& [k, v] : metadata) kv[k] = v;
  std::string json = "{\"key_values\":{";
  bool first = true;
  for (const auto& [k, v] : kv) {
    json += std::string(first ? "" : ",") + "\"kv_data\":{\"key\":\"" + json_escape(k) +
            "\",\"value\":\"" + json_escape(v) + "\"}";
    first = false;
  }
  json += "}}";

  struct Part {
    uint32_t kind;
    const char* name;
    std::vector<uint8_t> data;
  };
  std::vector<Part> parts;
  parts.push_back({kEmbeddedMetadata, "metadata", {xml_text.begin(), xml_text.end()}});
  parts.push_back({kMemTopology, "mem_topology", mem});
  parts.push_back({kConnectivity, "connectivity", conn});
  parts.push_back({kIpLayout, "ip_layout", ips});
  parts.push_back({kKeyValueMetadata, "keyvalue", {json.begin(), json.end()}});

  auto align8 = [](uint64_t v) { return (v + 7) / 8 * 8; };
  uint64_t at = align8(kSectionTable + parts.size() * kSectionHeaderBytes);
  std::vector<uint64_t> offsets;
  for (const auto& p : parts) {
    offsets.push_back(at);
    at = align8(at + p.data.size());
  }
  std::vector<uint8_t> out(at, 0);
  std::memcpy(out.data(), "xclbin2", 8);
  put<int32_t>(out, 8, -1);                          // no signature
  std::memset(out.data() + 12, 0xFF, 28);            // reserved, as xclbinutil leaves it
  std::memset(out.data() + 40, 0xFF, 256);           // key block
  put<uint64_t>(out, kAxlfHeader, at);               // m_length
  out[kAxlfHeader + 26] = 2;                         // version 2.13.0 (the XRT tested)
  out[kAxlfHeader + 27] = 13;
  put_str(out, kAxlfHeader + 48, "hyperdex_stub_" + preset.name, 64);
  put<uint32_t>(out, kAxlfHeader + 144, uint32_t(parts.size()));
  for (size_t i = 0; i < parts.size(); ++i) {
    const size_t h = kSectionTable + i * kSectionHeaderBytes;
    put<uint32_t>(out, h, parts[i].kind);
    put_str(out, h + 4, parts[i].name, 16);
    put<uint64_t>(out, h + 24, offsets[i]);
    put<uint64_t>(out, h + 32, parts[i].data.size());
    std::memcpy(out.data() + offsets[i], parts[i].data.data(), parts[i].data.size());
  }
  // A uuid from the content, so equal stubs share one and different ones do not.
  uint8_t id[16];
  for (uint32_t w = 0; w < 4; ++w) {
    uint32_t crc = crc32(out.data() + kSectionTable, out.size() - kSectionTable, 0x9e3779b9u * (w + 1));
    std::memcpy(id + 4 * w, &crc, 4);
  }
  id[6] = uint8_t((id[6] & 0x0F) | 0x40);  // RFC 4122 version 4 and variant bits
  id[8] = uint8_t((id[8] & 0x3F) | 0x80);
  std::memcpy(out.data() + kAxlfHeader + 112, id, 16);
  return out;
}

void write_stub_xclbin(const std::string& path, const DevicePreset& preset, const std::string& kernel,
                       const std::map<std::string, std::string>& metadata) {
  auto bytes = make_stub_xclbin(preset, kernel, metadata);
  write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace hyperdex::board
