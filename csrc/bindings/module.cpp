// hyperdex._core: a thin pybind11 layer over the core library. Long calls
// (writing parameters, running programs) release the GIL; runs poll for Ctrl-C
// between instructions. Core exceptions become hyperdex.errors classes.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>

#include "common/crc32.h"
#include "common/error.h"
#include "common/fp16.h"
#include "emu/emulator.h"
#include "emu/kernels.h"
#include "instgen/instgen.h"
#include "isa/isa.h"
#include "mapper/memory_plan.h"
#include "mapper/param_writer.h"
#include "runtime/session.h"
#include "spec/model_spec.h"

namespace py = pybind11;
using namespace hyperdex;

namespace {

void raise_as(const char* cls, const char* what) {
  py::object type = py::module_::import("hyperdex.errors").attr(cls);
  PyErr_SetString(type.ptr(), what);
}

// Names HBM regions in listings.
class PlanNamer final : public isa::RegionNamer {
 public:
  explicit PlanNamer(std::map<uint64_t, std::string> names) : names_(std::move(names)) {}
  std::string name_of(uint64_t base) const override {
    auto it = names_.find(base);
    return it == names_.end() ? std::string() : it->second;
  }

 private:
  std::map<uint64_t, std::string> names_;
};

std::string listing(const isa::Program& p, const std::map<uint64_t, std::string>& names) {
  PlanNamer namer(names);
  return isa::disassemble(p, &namer);
}

// Keeps the arrays alive and hands the core plain views of them.
struct TensorTable {
  std::map<std::string, py::array> arrays;
  std::map<std::string, TensorView> views;

  explicit TensorTable(const py::dict& tensors) {
    for (auto item : tensors) {
      auto name = item.first.cast<std::string>();
      py::array arr = py::array::ensure(item.second, py::array::c_style);
      if (!arr || arr.itemsize() != 2 || (arr.dtype().kind() != 'f' && arr.dtype().kind() != 'u'))
        throw py::type_error("tensor " + name + " must be a C-contiguous float16 array");
      TensorView v;
      v.data = static_cast<const uint16_t*>(arr.data());
      for (py::ssize_t d = 0; d < arr.ndim(); ++d) v.shape.push_back(int64_t(arr.shape(d)));
      views[name] = v;
      arrays[name] = arr;
    }
  }
  TensorView get(const std::string& name) const {
    auto it = views.find(name);
    if (it == views.end()) throw SpecError("the converted model has no tensor '" + name + "'");
    return it->second;
  }
};

std::function<bool()> python_interrupt_check() {
  return [] {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
      PyErr_Clear();
      return true;
    }
    return false;
  };
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "hyperdex C++ core: memory planning, instruction generation, the LPU emulator";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FormatError& e) {
      raise_as("FormatError", e.what());
    } catch (const CapacityError& e) {
      raise_as("CapacityError", e.what());
    } catch (const SpecError& e) {
      raise_as("ConfigError", e.what());
    } catch (const DeviceError& e) {
      raise_as("DeviceError", e.what());
    } catch (const Interrupted&) {
      PyErr_SetString(PyExc_KeyboardInterrupt, "");
    }
  });

  m.attr("ISA_VERSION") = isa::kIsaVersion;
  m.attr("PROGRAM_FORMAT_VERSION") = isa::kProgramFormatVersion;
  m.attr("PLAN_FORMAT_VERSION") = kPlanFormatVersion;

  py::enum_<NormKind>(m, "NormKind").value("LayerNorm", NormKind::LayerNorm).value("RmsNorm", NormKind::RmsNorm);
  py::enum_<ActKind>(m, "ActKind")
      .value("None_", ActKind::None)
      .value("Relu", ActKind::Relu)
      .value("Gelu", ActKind::Gelu)
      .value("GeluTanh", ActKind::GeluTanh)
      .value("Silu", ActKind::Silu);
  py::enum_<PositionKind>(m, "PositionKind")
      .value("None_", PositionKind::None)
      .value("Learned", PositionKind::Learned)
      .value("Rope", PositionKind::Rope);
  py::enum_<RopeStyle>(m, "RopeStyle").value("Neox", RopeStyle::Neox).value("Gptj", RopeStyle::Gptj);

  py::class_<ModelSpec>(m, "ModelSpec")
      .def(py::init<>())
      .def_readwrite("architecture", &ModelSpec::architecture)
      .def_readwrite("vocab_size", &ModelSpec::vocab_size)
      .def_readwrite("hidden_size", &ModelSpec::hidden_size)
      .def_readwrite("num_layers", &ModelSpec::num_layers)
      .def_readwrite("num_heads", &ModelSpec::num_heads)
      .def_readwrite("num_kv_heads", &ModelSpec::num_kv_heads)
      .def_readwrite("head_dim", &ModelSpec::head_dim)
      .def_readwrite("intermediate_size", &ModelSpec::intermediate_size)
      .def_readwrite("norm", &ModelSpec::norm)
      .def_readwrite("norm_eps", &ModelSpec::norm_eps)
      .def_readwrite("norm_bias", &ModelSpec::norm_bias)
      .def_readwrite("pre_norm", &ModelSpec::pre_norm)
      .def_readwrite("final_norm", &ModelSpec::final_norm)
      .def_readwrite("act", &ModelSpec::act)
      .def_readwrite("gated_mlp", &ModelSpec::gated_mlp)
      .def_readwrite("qkv_bias", &ModelSpec::qkv_bias)
      .def_readwrite("attn_out_bias", &ModelSpec::attn_out_bias)
      .def_readwrite("mlp_bias", &ModelSpec::mlp_bias)
      .def_readwrite("lm_head_bias", &ModelSpec::lm_head_bias)
      .def_readwrite("positions", &ModelSpec::positions)
      .def_readwrite("learned_pos_rows", &ModelSpec::learned_pos_rows)
      .def_readwrite("learned_pos_offset", &ModelSpec::learned_pos_offset)
      .def_readwrite("rope_style", &ModelSpec::rope_style)
      .def_readwrite("rope_dim", &ModelSpec::rope_dim)
      .def_readwrite("rope_inv_freq", &ModelSpec::rope_inv_freq)
      .def_readwrite("rope_attention_factor", &ModelSpec::rope_attention_factor)
      .def_readwrite("attn_scale", &ModelSpec::attn_scale)
      .def_readwrite("sliding_window", &ModelSpec::sliding_window)
      .def_readwrite("embed_scale", &ModelSpec::embed_scale)
      .def_readwrite("tie_word_embeddings", &ModelSpec::tie_word_embeddings)
      .def_readwrite("embed_dim", &ModelSpec::embed_dim)
      .def("validate", &ModelSpec::validate);

  py::class_<DevicePreset>(m, "DevicePreset")
      .def(py::init<>())
      .def_readwrite("name", &DevicePreset::name)
      .def_readwrite("hbm_channels", &DevicePreset::hbm_channels)
      .def_readwrite("hbm_channel_bytes", &DevicePreset::hbm_channel_bytes)
      .def_readwrite("hbm_bandwidth_gbps", &DevicePreset::hbm_bandwidth_gbps)
      .def_readwrite("clock_mhz", &DevicePreset::clock_mhz)
      .def_readwrite("lmem_bytes", &DevicePreset::lmem_bytes)
      .def_readwrite("mac_trees", &DevicePreset::mac_trees)
      .def_readwrite("mac_lanes", &DevicePreset::mac_lanes)
      .def_readwrite("vector_lanes", &DevicePreset::vector_lanes)
      .def("validate", &DevicePreset::validate);

  py::enum_<RegionKind>(m, "RegionKind")
      .value("Matrix", RegionKind::Matrix)
      .value("Vector", RegionKind::Vector)
      .value("RopeTable", RegionKind::RopeTable)
      .value("KvCache", RegionKind::KvCache);
  py::class_<Region>(m, "Region")
      .def_readonly("name", &Region::name)
      .def_readonly("kind", &Region::kind)
      .def_readonly("base", &Region::base)
      .def_readonly("row_bytes", &Region::row_bytes)
      .def_readonly("rows", &Region::rows)
      .def_readonly("cols", &Region::cols)
      .def_readonly("sources", &Region::sources)
      .def("bytes_per_channel", &Region::bytes_per_channel);
  py::class_<IoLayout>(m, "IoLayout")
      .def_readonly("base", &IoLayout::base)
      .def_readonly("ids_offset", &IoLayout::ids_offset)
      .def_readonly("argmax_offset", &IoLayout::argmax_offset)
      .def_readonly("logits_offset", &IoLayout::logits_offset)
      .def_readonly("bytes", &IoLayout::bytes);
  py::class_<MemoryPlan>(m, "MemoryPlan")
      .def_readonly("num_channels", &MemoryPlan::num_channels)
      .def_readonly("channel_capacity", &MemoryPlan::channel_capacity)
      .def_readonly("max_length", &MemoryPlan::max_length)
      .def_readonly("max_tokens", &MemoryPlan::max_tokens)
      .def_readonly("vocab_size", &MemoryPlan::vocab_size)
      .def_readonly("regions", &MemoryPlan::regions)
      .def_readonly("weights_bytes", &MemoryPlan::weights_bytes)
      .def_readonly("kv_base", &MemoryPlan::kv_base)
      .def_readonly("kv_bytes", &MemoryPlan::kv_bytes)
      .def_readonly("io", &MemoryPlan::io)
      .def_readonly("channel_bytes", &MemoryPlan::channel_bytes)
      .def("fingerprint", &MemoryPlan::fingerprint)
      .def("total_bytes", &MemoryPlan::total_bytes);

  m.def("plan_memory", &plan_memory, py::arg("spec"), py::arg("preset"), py::arg("max_length"),
        py::arg("max_tokens"));
  m.def("choose_max_tokens", &choose_max_tokens, py::arg("spec"), py::arg("preset"),
        py::arg("max_length"), py::arg("limit") = 128);
  m.def("lmem_bytes_per_token", &lmem_bytes_per_token);

  py::class_<ParamFile>(m, "ParamFile")
      .def(py::init<>())
      .def(py::init([](std::string path, uint64_t bytes, uint32_t crc) {
             return ParamFile{std::move(path), bytes, crc};
           }),
           py::arg("path"), py::arg("bytes"), py::arg("crc32"))
      .def_readwrite("path", &ParamFile::path)
      .def_readwrite("bytes", &ParamFile::bytes)
      .def_readwrite("crc32", &ParamFile::crc32);
  m.def("param_file_name", &param_file_name);
  m.def(
      "write_params",
      [](const ModelSpec& spec, const MemoryPlan& plan, const py::dict& tensors,
         const std::string& out_dir, py::object on_channel_done) {
        TensorTable table(tensors);
        std::function<void(uint32_t)> progress;
        if (!on_channel_done.is_none())
          progress = [on_channel_done](uint32_t c) {
            py::gil_scoped_acquire gil;
            on_channel_done(c);
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
          };
        py::gil_scoped_release release;
        return write_params(spec, plan, [&](const std::string& n) { return table.get(n); }, out_dir,
                            progress);
      },
      py::arg("spec"), py::arg("plan"), py::arg("tensors"), py::arg("out_dir"),
      py::arg("on_channel_done") = py::none(),
      "Writes param/hbm_chNN.bin (one per pseudo-channel); returns [ParamFile].");

  py::enum_<isa::ProgramKind>(m, "ProgramKind")
      .value("Prefill", isa::ProgramKind::Prefill)
      .value("Decode", isa::ProgramKind::Decode);
  py::class_<isa::Program>(m, "Program")
      .def_readonly("kind", &isa::Program::kind)
      .def_readonly("max_tokens", &isa::Program::max_tokens)
      .def_readonly("lmem_bytes", &isa::Program::lmem_bytes)
      .def_readonly("plan_fingerprint", &isa::Program::plan_fingerprint)
      .def("__len__", [](const isa::Program& p) { return p.code.size(); })
      .def("opcodes", [](const isa::Program& p) {
        std::vector<std::string> ops;
        for (const auto& in : p.code) ops.push_back(isa::opcode_name(in.op));
        return ops;
      })
      .def("save", &isa::save_program, py::arg("path"))
      .def("to_bytes", [](const isa::Program& p) {
        auto b = isa::serialize(p);
        return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
      })
      .def("disassemble", &listing, py::arg("region_names") = std::map<uint64_t, std::string>{});
  m.def("load_program", &isa::load_program, py::arg("path"));
  m.def("program_from_bytes", [](const py::bytes& data) {
    std::string s = data;
    return isa::deserialize(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "program bytes");
  });
  m.def("generate_programs", [](const ModelSpec& spec, const MemoryPlan& plan) {
    Programs p = generate_programs(spec, plan);
    return py::make_tuple(p.prefill, p.decode);
  });

  py::class_<DeviceLayout>(m, "DeviceLayout")
      .def(py::init<>())
      .def_readwrite("channel_bytes", &DeviceLayout::channel_bytes)
      .def_readwrite("io_base", &DeviceLayout::io_base)
      .def_readwrite("io_bytes", &DeviceLayout::io_bytes);
  py::class_<SessionConfig>(m, "SessionConfig")
      .def(py::init<>())
      .def_readwrite("layout", &SessionConfig::layout)
      .def_readwrite("vocab_size", &SessionConfig::vocab_size)
      .def_readwrite("max_length", &SessionConfig::max_length)
      .def_readwrite("plan_fingerprint", &SessionConfig::plan_fingerprint)
      .def_readwrite("weights_bytes", &SessionConfig::weights_bytes)
      .def_readwrite("params", &SessionConfig::params)
      .def_readwrite("prefill_path", &SessionConfig::prefill_path)
      .def_readwrite("decode_path", &SessionConfig::decode_path)
      .def("set_io", [](SessionConfig& c, uint64_t base, uint32_t ids, uint32_t argmax,
                        uint32_t logits, uint32_t bytes) {
        c.io = IoLayout{base, ids, argmax, logits, bytes};
      });

  py::class_<Session>(m, "Session")
      .def_static(
          "emulator",
          [](const DevicePreset& preset, SessionConfig config, size_t num_threads) {
            auto dev = std::make_unique<emu::Emulator>(preset, num_threads);
            dev->set_interrupt_check(python_interrupt_check());
            py::gil_scoped_release release;
            return std::make_unique<Session>(std::move(dev), std::move(config));
          },
          py::arg("preset"), py::arg("config"), py::arg("num_threads") = 0,
          "Loads a compiled model onto a new emulated device.")
      .def_property_readonly("position", &Session::position)
      .def_property_readonly("max_length", &Session::max_length)
      .def_property_readonly("vocab_size", &Session::vocab_size)
      .def_property_readonly("prefill_chunk", &Session::prefill_chunk)
      .def_property_readonly("device", [](Session& s) { return s.device().describe(); })
      .def("reset", &Session::reset)
      .def("truncate", &Session::truncate)
      .def(
          "prefill",
          [](Session& s, py::array_t<int32_t, py::array::c_style | py::array::forcecast> ids,
             bool logits_all) {
            const uint32_t n = uint32_t(ids.size());
            const size_t rows = logits_all ? n : 1;
            py::array_t<float> out({rows, size_t(s.vocab_size())});
            float* dst = out.mutable_data();
            const int32_t* src = ids.data();
            int32_t argmax;
            {
              py::gil_scoped_release release;
              argmax = s.prefill(src, n, logits_all, dst);
            }
            return py::make_tuple(argmax, out);
          },
          py::arg("ids"), py::arg("logits_all") = false,
          "Appends tokens; returns (argmax of the last row, fp32 logits [rows, vocab]).")
      .def(
          "decode",
          [](Session& s, int32_t id, bool want_logits) -> py::tuple {
            if (!want_logits) {
              int32_t argmax;
              {
                py::gil_scoped_release release;
                argmax = s.decode(id, nullptr);
              }
              return py::make_tuple(argmax, py::none());
            }
            py::array_t<float> out(size_t(s.vocab_size()));
            float* dst = out.mutable_data();
            int32_t argmax;
            {
              py::gil_scoped_release release;
              argmax = s.decode(id, dst);
            }
            return py::make_tuple(argmax, out);
          },
          py::arg("id"), py::arg("want_logits") = true,
          "Appends one token; returns (argmax, fp32 logits [vocab] or None).");

  // Small utilities the Python side and the tests share with the core.
  m.def("crc32", [](const py::buffer& b, uint32_t crc) {
    py::buffer_info info = b.request();
    return hyperdex::crc32(info.ptr, size_t(info.size * info.itemsize), crc);
  }, py::arg("data"), py::arg("crc") = 0);
  m.def("kernel_level", [] { return std::string(emu::best_kernels().name); });
  m.def("rope_table_row", &rope_table_row);
}
