// hyperdex._core: a thin pybind11 layer over the core library. Long calls
// (writing parameters, running programs) release the GIL; runs poll for Ctrl-C
// between instructions. Core exceptions become hyperdex.errors classes.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <thread>

#include "common/crc32.h"
#include "common/error.h"
#include "common/fp16.h"
#include "cost/cost_model.h"
#include "cost/profiler.h"
#include "emu/emulator.h"
#include "emu/kernels.h"
#include "graph/layer_graph.h"
#include "instgen/instgen.h"
#include "isa/isa.h"
#include "mapper/memory_plan.h"
#include "mapper/param_writer.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "spec/model_spec.h"
#include "spec/passes.h"
#include "xrt/board.h"
#include "xrt/sim_board.h"
#include "xrt/xclbin.h"
#include "xrt/xrt_backend.h"

namespace py = pybind11;
using namespace hyperdex;

// hyperdex._core.quant (quant_bindings.cpp).
void bind_quant(py::module_& m);

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
      // float16 (or its uint16 bits), or uint8: a quantized model's codes.
      const char kind = arr ? arr.dtype().kind() : '?';
      const bool u8 = kind == 'u' && arr.itemsize() == 1;
      if (!arr || (!u8 && (arr.itemsize() != 2 || (kind != 'f' && kind != 'u'))))
        throw py::type_error("tensor " + name +
                             " must be a C-contiguous float16 array (uint8 for quantized codes)");
      TensorView v;
      v.data = arr.data();
      v.dtype = u8 ? DType::U8 : DType::F16;
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

// The calibration hooks (run_range, on-chip memory) need device 0 to be an emulator.
emu::Emulator& emulator_of(Session& s, const char* what) {
  if (s.num_devices() != 1)
    throw DeviceError(std::string(what) + " needs a session on one device; this one is a ring of " +
                      std::to_string(s.num_devices()));
  auto* e = dynamic_cast<emu::Emulator*>(&s.device());
  if (!e)
    throw DeviceError(std::string(what) + " needs an emulator session (Session.emulator); this "
                      "session runs on " + s.device().describe());
  return *e;
}

ProgramSlot slot_of(const std::string& name) {
  if (name == "prefill") return ProgramSlot::Prefill;
  if (name == "decode") return ProgramSlot::Decode;
  throw SpecError("slot must be 'prefill' or 'decode', not '" + name + "'");
}

// Raw bytes of a C-contiguous array (any dtype), kept alive by the returned array.
py::array contiguous_bytes(const py::object& data, const char* what) {
  py::array arr = py::array::ensure(data, py::array::c_style);
  if (!arr) throw py::type_error(std::string(what) + " takes a numpy array");
  return arr;
}

py::dict instruction_dict(const isa::Instruction& in) {
  auto operand = [](const isa::Operand& o) {
    return py::make_tuple(o.space == isa::Space::Io ? "io" : "lmem", o.offset, o.stride);
  };
  auto region = [](const isa::HbmRegion& r) { return py::make_tuple(r.base, r.row_bytes, r.rows); };
  py::dict d;
  d["op"] = isa::opcode_name(in.op);
  d["flags"] = in.flags, d["flags2"] = in.flags2, d["sub"] = in.sub, d["n"] = in.n, d["k"] = in.k;
  d["i0"] = in.i0, d["i1"] = in.i1, d["i2"] = in.i2, d["f0"] = in.f0, d["f1"] = in.f1;
  d["dst"] = operand(in.dst), d["a"] = operand(in.a), d["b"] = operand(in.b);
  d["c"] = operand(in.c);
  d["w0"] = region(in.w0), d["w1"] = region(in.w1);
  return d;
}

std::chrono::milliseconds run_timeout(double seconds) {
  if (!(seconds >= 0)) throw py::value_error("timeout must be a number of seconds >= 0");
  // Rounded up, so a small positive timeout never becomes 0 (no limit).
  return std::chrono::milliseconds(int64_t(std::ceil(seconds * 1000.0)));
}

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
    } catch (const InvalidLogits& e) {
      // as the host pipeline reports broken logits (LogitsPipeline)
      PyErr_SetString(PyExc_FloatingPointError, e.what());
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
      .value("Silu", ActKind::Silu)
      .value("Clip", ActKind::Clip);
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
      .def_readwrite("num_experts", &ModelSpec::num_experts)
      .def_readwrite("experts_per_token", &ModelSpec::experts_per_token)
      .def_readwrite("router_renormalize", &ModelSpec::router_renormalize)
      .def_readwrite("parallel_block", &ModelSpec::parallel_block)
      .def_readwrite("shared_norm", &ModelSpec::shared_norm)
      .def_readwrite("qk_norm", &ModelSpec::qk_norm)
      .def_readwrite("qk_norm_bias", &ModelSpec::qk_norm_bias)
      .def_readwrite("qk_norm_whole", &ModelSpec::qk_norm_whole)
      .def_readwrite("q_norm_count", &ModelSpec::q_norm_count)
      .def_readwrite("k_norm_count", &ModelSpec::k_norm_count)
      .def_readwrite("clip_qkv", &ModelSpec::clip_qkv)
      .def_readwrite("branch_input_norm", &ModelSpec::branch_input_norm)
      .def_readwrite("branch_output_norm", &ModelSpec::branch_output_norm)
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
      .def_readwrite("layer_windows", &ModelSpec::layer_windows)
      .def_readwrite("logit_scale", &ModelSpec::logit_scale)
      .def_readwrite("attn_softcap", &ModelSpec::attn_softcap)
      .def_readwrite("final_logit_softcap", &ModelSpec::final_logit_softcap)
      .def_readwrite("layer_rope", &ModelSpec::layer_rope)
      .def_readwrite("rope_local_inv_freq", &ModelSpec::rope_local_inv_freq)
      .def_readwrite("embed_scale", &ModelSpec::embed_scale)
      .def_readwrite("tie_word_embeddings", &ModelSpec::tie_word_embeddings)
      .def_readwrite("lm_head_rows", &ModelSpec::lm_head_rows)
      .def_readwrite("embed_dim", &ModelSpec::embed_dim)
      .def_readwrite("weight_bits", &ModelSpec::weight_bits)
      .def_readwrite("group_size", &ModelSpec::group_size)
      .def_readwrite("quantize_lm_head", &ModelSpec::quantize_lm_head)
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
      .def_readwrite("hbm_efficiency", &DevicePreset::hbm_efficiency)
      .def_readwrite("hbm_latency_ns", &DevicePreset::hbm_latency_ns)
      .def_readwrite("weight_buffer_bytes", &DevicePreset::weight_buffer_bytes)
      .def_readwrite("issue_cycles", &DevicePreset::issue_cycles)
      .def_readwrite("chain_cycles", &DevicePreset::chain_cycles)
      .def_readwrite("mac_pipeline_cycles", &DevicePreset::mac_pipeline_cycles)
      .def_readwrite("vector_pipeline_cycles", &DevicePreset::vector_pipeline_cycles)
      .def_readwrite("ring_bandwidth_gbps", &DevicePreset::ring_bandwidth_gbps)
      .def_readwrite("ring_latency_ns", &DevicePreset::ring_latency_ns)
      .def_readwrite("run_overhead_us", &DevicePreset::run_overhead_us)
      .def("validate", &DevicePreset::validate);

  py::enum_<RegionKind>(m, "RegionKind")
      .value("Matrix", RegionKind::Matrix)
      .value("Vector", RegionKind::Vector)
      .value("RopeTable", RegionKind::RopeTable)
      .value("KvCache", RegionKind::KvCache)
      .value("QMatrix", RegionKind::QMatrix);
  py::class_<Region>(m, "Region")
      .def_readonly("name", &Region::name)
      .def_readonly("kind", &Region::kind)
      .def_readonly("base", &Region::base)
      .def_readonly("row_bytes", &Region::row_bytes)
      .def_readonly("rows", &Region::rows)
      .def_readonly("cols", &Region::cols)
      .def_readonly("sources", &Region::sources)
      .def_readonly("bits", &Region::bits)
      .def_readonly("group_size", &Region::group)
      .def_readonly("experts", &Region::experts)
      .def_readonly("expert_rows", &Region::expert_rows)
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

  py::class_<PassOptions>(m, "PassOptions")
      .def(py::init<>())
      .def_readwrite("fuse_epilogue", &PassOptions::fuse_epilogue)
      .def_readwrite("fuse_qkv", &PassOptions::fuse_qkv)
      .def_readwrite("fuse_gate_up", &PassOptions::fuse_gate_up)
      .def_readwrite("reorder", &PassOptions::reorder)
      .def_readwrite("fuse_argmax", &PassOptions::fuse_argmax)
      .def_readwrite("chunk_ring", &PassOptions::chunk_ring)
      .def("__eq__", &PassOptions::operator==);
  py::class_<graph::Tensor>(m, "GraphTensor")
      .def_readonly("name", &graph::Tensor::name)
      .def_readonly("shape", &graph::Tensor::shape)
      .def_property_readonly("split", [](const graph::Tensor& t) { return graph::split_name(t.split); })
      .def_readonly("quantize", &graph::Tensor::quantize);
  m.def("model_tensors", &graph::model_tensors, py::arg("spec"),
        "The canonical tensors of a model (the layer graph's, unfused), in stream order.");
  m.def("plan_memory", &plan_memory, py::arg("spec"), py::arg("preset"), py::arg("max_length"),
        py::arg("max_tokens"), py::arg_v("passes", PassOptions{}, "PassOptions()"));
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
      .def(
          "instructions",
          [](const isa::Program& p) {
            py::list out;
            for (const auto& in : p.code) out.append(instruction_dict(in));
            return out;
          },
          "[{op, flags, sub, n, k, i0, i1, f0, f1, dst/a/b: (space, offset, stride), "
          "w0/w1: (base, row_bytes, rows)}], one per instruction.")
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
  m.def(
      "generate_programs",
      [](const ModelSpec& spec, const MemoryPlan& plan, const PassOptions& passes,
         uint32_t devices) {
        Programs p = generate_programs(spec, plan, passes, devices);
        return py::make_tuple(p.prefill, p.decode);
      },
      py::arg("spec"), py::arg("plan"), py::arg_v("passes", PassOptions{}, "PassOptions()"), py::arg("devices") = 1);
  m.def("shard_spec", &shard_spec, py::arg("spec"), py::arg("devices"),
        "One device's share of the model on a ring of `devices` (tensor parallelism).");

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
      })
      .def("add_kv_region",
           [](SessionConfig& c, uint64_t base, uint32_t row_bytes, uint32_t rows, uint32_t cols,
              const std::string& name) {
             c.kv_regions.push_back(KvRegion{base, row_bytes, rows, cols, name});
           },
           py::arg("base"), py::arg("row_bytes"), py::arg("rows"), py::arg("cols"),
           py::arg("name") = "",
           "A KV cache region of the memory map; `name` (optional) is for error messages.");

  py::class_<Session>(m, "Session")
      .def_static(
          "emulator",
          [](const DevicePreset& preset, SessionConfig config, size_t num_threads, double timeout_s) {
            auto dev = std::make_unique<emu::Emulator>(preset, num_threads);
            dev->set_interrupt_check(python_interrupt_check());
            dev->set_run_timeout(run_timeout(timeout_s));
            py::gil_scoped_release release;
            return std::make_unique<Session>(std::move(dev), std::move(config));
          },
          py::arg("preset"), py::arg("config"), py::arg("num_threads") = 0, py::arg("timeout_s") = 0.0,
          "Loads a compiled model onto a new emulated device (timeout_s 0: runs are not timed).")
      .def_static(
          "emulator_ring",
          [](const DevicePreset& preset, std::vector<SessionConfig> configs, uint32_t vocab_size,
             size_t num_threads, double timeout_s) {
            const uint32_t n = uint32_t(configs.size());
            if (n == 0) throw SpecError("a ring needs at least one device");
            // The devices share the host's cores; each gets its part of them.
            size_t threads = num_threads ? num_threads : std::thread::hardware_concurrency();
            threads = std::max<size_t>(1, threads / n);
            auto link = std::make_shared<emu::RingLink>(n);
            std::vector<std::unique_ptr<Device>> devices;
            for (uint32_t d = 0; d < n; ++d) {
              auto dev = std::make_unique<emu::Emulator>(preset, threads);
              dev->attach_ring(link, d);
              dev->set_interrupt_check(python_interrupt_check());
              dev->set_run_timeout(run_timeout(timeout_s));
              devices.push_back(std::move(dev));
            }
            py::gil_scoped_release release;
            return std::make_unique<Session>(std::move(devices), std::move(configs), vocab_size);
          },
          py::arg("preset"), py::arg("configs"), py::arg("vocab_size"), py::arg("num_threads") = 0,
          py::arg("timeout_s") = 0.0,
          "Loads a tensor-parallel model onto a ring of emulated devices, one config per device.")
      .def_static(
          "xrt",
          [](const DevicePreset& preset, SessionConfig config, const std::string& xclbin,
             const std::string& kernel, uint32_t device_index, double timeout_s) {
            const auto timeout = run_timeout(timeout_s);
            py::gil_scoped_release release;
            // A missing or wrong xclbin is reported even where no board is present.
            board::check_board_options(preset, board::BoardOptions{xclbin, kernel});
            auto dev = std::make_unique<board::BoardDevice>(preset, board::open_xrt_board(device_index),
                                                            board::BoardOptions{xclbin, kernel});
            dev->set_run_timeout(timeout);
            dev->set_interrupt_check(python_interrupt_check());  // takes the GIL only when called
            return std::make_unique<Session>(std::move(dev), std::move(config));
          },
          py::arg("preset"), py::arg("config"), py::arg("xclbin"), py::arg("kernel") = "lpu",
          py::arg("device_index") = 0, py::arg("timeout_s") = 60.0,
          "Loads a compiled model onto board `device_index` through XRT (docs/xrt.md).")
      .def_static(
          "simulated_board",
          [](const DevicePreset& preset, SessionConfig config, const std::string& xclbin,
             const std::string& kernel, double timeout_s) {
            auto dev = std::make_unique<board::BoardDevice>(
                preset, std::make_unique<board::SimBoard>(preset, 1), board::BoardOptions{xclbin, kernel});
            dev->set_run_timeout(run_timeout(timeout_s));
            dev->set_interrupt_check(python_interrupt_check());
            py::gil_scoped_release release;
            return std::make_unique<Session>(std::move(dev), std::move(config));
          },
          py::arg("preset"), py::arg("config"), py::arg("xclbin"), py::arg("kernel") = "lpu",
          py::arg("timeout_s") = 0.0,
          "For tests: the XRT backend's logic over a simulated board whose kernel is the emulator.")
      .def_property_readonly("position", &Session::position)
      .def_property_readonly("max_length", &Session::max_length)
      .def_property_readonly("vocab_size", &Session::vocab_size)
      .def_property_readonly("prefill_chunk", &Session::prefill_chunk)
      .def_property_readonly("device",
                             [](Session& s) {
                               const std::string one = s.device().describe();
                               if (s.num_devices() == 1) return one;
                               return "a ring of " + std::to_string(s.num_devices()) + " x " + one;
                             })
      .def_property_readonly("num_devices", &Session::num_devices)
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
          "Appends one token; returns (argmax, fp32 logits [vocab] or None).")
      .def(
          "decode_sample",
          [](Session& s, int32_t id, double temperature, int32_t top_k, double top_p, double min_p,
             bool min_p_first, double u) {
            const SamplingParams params{temperature, top_k, top_p, min_p, min_p_first};
            check_sampling(params, u);  // before the run: bad knobs leave the sequence alone
            py::gil_scoped_release release;
            // the logits stay here; one buffer per thread, reused step after step
            thread_local std::vector<float> logits;
            logits.resize(s.vocab_size());
            s.decode(id, logits.data());
            return sample_logits(logits.data(), uint32_t(logits.size()), params, u);
          },
          py::arg("id"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"),
          py::arg("min_p"), py::arg("min_p_first"), py::arg("u"),
          "Appends one token and samples the next from the logits in C++ (sample_logits), "
          "which never reach Python; returns the token.")
      .def_property_readonly("kv_shape", [](Session& s) {
        return py::make_tuple(s.kv_region_count(), s.kv_cols());
      }, "(KV regions, fp16 values per position): read_kv gives [regions, n, cols].")
      .def(
          "read_kv",
          [](Session& s, uint32_t start, uint32_t n) {
            py::array_t<uint16_t> out({size_t(s.kv_region_count()), size_t(n), size_t(s.kv_cols())});
            uint16_t* dst = out.mutable_data();
            {
              py::gil_scoped_release release;
              s.read_kv(start, n, dst);
            }
            return out.attr("view")("float16");
          },
          py::arg("start"), py::arg("n"),
          "KV cache positions [start, start + n) as float16 [regions, n, cols] (a copy).")
      .def(
          "write_kv",
          [](Session& s, uint32_t start, py::array data) {
            py::array_t<uint16_t, py::array::c_style | py::array::forcecast> bits;
            if (data.dtype().kind() != 'f' || data.itemsize() != 2)
              throw py::type_error("write_kv takes a float16 array [regions, n, cols]");
            bits = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>(
                data.attr("view")("uint16"));
            if (bits.ndim() != 3 || size_t(bits.shape(0)) != s.kv_region_count() ||
                size_t(bits.shape(2)) != s.kv_cols())
              throw py::value_error("write_kv takes [" + std::to_string(s.kv_region_count()) + ", n, " +
                                    std::to_string(s.kv_cols()) + "] float16 values");
            const uint32_t n = uint32_t(bits.shape(1));
            const uint16_t* src = bits.data();
            py::gil_scoped_release release;
            s.write_kv(start, n, src);
          },
          py::arg("start"), py::arg("data"),
          "Writes KV positions [start, start + n) from float16 [regions, n, cols]; the sequence "
          "then holds start + n positions.")
      // Calibration hooks (device 0 of a one-device emulator session).
      .def(
          "run_range",
          [](Session& s, const std::string& slot, uint32_t start_pos, uint32_t n_tokens,
             size_t begin, size_t end, bool want_logits, bool logits_all) {
            emu::Emulator& e = emulator_of(s, "run_range");
            const ProgramSlot ps = slot_of(slot);
            if (uint64_t(start_pos) + n_tokens > s.max_length())
              throw SpecError("a run at start_pos " + std::to_string(start_pos) + " with " +
                              std::to_string(n_tokens) + " tokens reaches past the max_length of " +
                              std::to_string(s.max_length()));
            py::gil_scoped_release release;
            e.run_range(ps, RunArgs{start_pos, n_tokens, logits_all, want_logits}, begin, end);
          },
          py::arg("slot"), py::arg("start_pos"), py::arg("n_tokens"), py::arg("begin"),
          py::arg("end"), py::arg("want_logits") = false, py::arg("logits_all") = false,
          "Executes instructions [begin, end) of the 'prefill' or 'decode' program; the token "
          "ids are what the I/O region holds. Does not move the session's position.")
      .def_property_readonly(
          "weight_bytes_read",
          [](Session& s) {
            std::vector<uint64_t> out;
            for (uint32_t d = 0; d < s.num_devices(); ++d) {
              auto* e = dynamic_cast<emu::Emulator*>(&s.device(d));
              if (!e)
                throw DeviceError("weight_bytes_read counts on the emulator; this session runs on " +
                                  s.device(d).describe());
              out.push_back(e->weight_bytes_read());
            }
            return out;
          },
          "Per device, the HBM bytes of weight rows the MATMULs of the last run read (an expert "
          "MATMUL: its picked experts' rows only).")
      .def(
          "program",
          [](Session& s, const std::string& slot) {
            return emulator_of(s, "program").program(slot_of(slot));
          },
          py::arg("slot"), "A copy of the program loaded in slot 'prefill' or 'decode'.")
      .def(
          "read_lmem",
          [](Session& s, uint64_t offset, size_t nbytes) {
            emu::Emulator& e = emulator_of(s, "read_lmem");
            py::array_t<uint8_t> out(nbytes);
            uint8_t* dst = out.mutable_data();
            py::gil_scoped_release release;
            e.read_lmem(offset, dst, nbytes);
            return out;
          },
          py::arg("offset"), py::arg("nbytes"), "On-chip memory bytes [offset, offset + nbytes).")
      .def(
          "write_lmem",
          [](Session& s, uint64_t offset, const py::object& data) {
            emu::Emulator& e = emulator_of(s, "write_lmem");
            py::array arr = contiguous_bytes(data, "write_lmem");
            const void* src = arr.data();
            const size_t n = size_t(arr.nbytes());
            py::gil_scoped_release release;
            e.write_lmem(offset, src, n);
          },
          py::arg("offset"), py::arg("data"), "Writes an array's bytes into on-chip memory.")
      .def(
          "read_hbm",
          [](Session& s, uint32_t channel, uint64_t offset, size_t nbytes) {
            py::array_t<uint8_t> out(nbytes);
            uint8_t* dst = out.mutable_data();
            py::gil_scoped_release release;
            s.device().read(channel, offset, dst, nbytes);
            return out;
          },
          py::arg("channel"), py::arg("offset"), py::arg("nbytes"),
          "Device 0's HBM pseudo-channel `channel`, bytes [offset, offset + nbytes).")
      .def(
          "write_hbm",
          [](Session& s, uint32_t channel, uint64_t offset, const py::object& data) {
            py::array arr = contiguous_bytes(data, "write_hbm");
            const void* src = arr.data();
            const size_t n = size_t(arr.nbytes());
            py::gil_scoped_release release;
            s.device().write(channel, offset, src, n);
          },
          py::arg("channel"), py::arg("offset"), py::arg("data"),
          "Writes an array's bytes into device 0's HBM pseudo-channel `channel` at `offset`.");

  // Small utilities the Python side and the tests share with the core.
  m.def("crc32", [](const py::buffer& b, uint32_t crc) {
    py::buffer_info info = b.request();
    return hyperdex::crc32(info.ptr, size_t(info.size * info.itemsize), crc);
  }, py::arg("data"), py::arg("crc") = 0);
  m.def("kernel_level", [] { return std::string(emu::best_kernels().name); });
  m.def(
      "sample_logits",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> logits, double temperature,
         int32_t top_k, double top_p, double min_p, bool min_p_first, double u) {
        if (logits.ndim() != 1)
          throw py::value_error("logits must have shape [vocab], got " + std::to_string(logits.ndim()) +
                                " dimensions");
        const SamplingParams params{temperature, top_k, top_p, min_p, min_p_first};
        const float* data = logits.data();
        const uint32_t vocab = uint32_t(logits.size());
        py::gil_scoped_release release;
        return sample_logits(data, vocab, params, u);
      },
      py::arg("logits"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
      py::arg("min_p_first"), py::arg("u"),
      "The token Session.decode_sample draws from fp32 logits [vocab] with the uniform draw u in "
      "[0, 1): the sampling pipeline (temperature, min-p, top-k, top-p; min_p_first is vLLM's "
      "order) and sample_token of hyperdex.transformers.generation, in C++.");

  // The XRT board backend (docs/xrt.md).
  m.attr("HAS_XRT") = board::xrt_built();
  m.attr("XRT_KERNEL_ABI_VERSION") = board::kKernelAbiVersion;
  m.def("xrt_version", &board::xrt_version);
  m.def("xrt_library_dir", &board::xrt_library_dir);
  m.def("xrt_missing_message", &board::xrt_missing_message);
  m.def("xrt_boards", [] {
    std::vector<board::BoardInfo> boards;
    {
      py::gil_scoped_release release;
      boards = board::list_xrt_boards();
    }
    py::list out;
    for (const auto& b : boards) {
      py::dict d;
      d["index"] = b.index, d["name"] = b.name, d["bdf"] = b.bdf, d["offline"] = b.offline;
      d["memory"] = b.memory, d["error"] = b.error;
      out.append(d);
    }
    return out;
  }, "The boards XRT enumerates: [{index, name, bdf, offline, memory (XRT's JSON), error}].");
  m.def("write_stub_xclbin", &board::write_stub_xclbin, py::arg("path"), py::arg("preset"),
        py::arg("kernel") = "lpu", py::arg("metadata") = std::map<std::string, std::string>{},
        "Writes an xclbin with the LPU kernel's interface for `preset` and no bitstream.");
  m.def("check_xclbin", [](const std::string& path, const DevicePreset& preset, const std::string& kernel) {
    board::check_xclbin(board::read_xclbin(path), preset, kernel);
  }, py::arg("path"), py::arg("preset"), py::arg("kernel") = "lpu");
  m.def("xclbin_info", [](const std::string& path) {
    const board::XclbinInfo x = board::read_xclbin(path);
    py::list kernels;
    for (const auto& k : x.kernels) {
      py::list args;
      for (const auto& a : k.args) args.append(py::make_tuple(a.name, a.global, a.bank));
      py::dict kd;
      kd["name"] = k.name, kd["instances"] = k.instances, kd["args"] = args;
      kernels.append(kd);
    }
    py::list banks;
    for (const auto& b : x.banks) banks.append(py::make_tuple(b.tag, b.bytes, b.used));
    py::dict d;
    d["uuid"] = x.uuid, d["platform"] = x.platform, d["banks"] = banks, d["kernels"] = kernels;
    d["metadata"] = x.metadata;
    return d;
  }, py::arg("path"));
  m.def("rope_table_row", &rope_table_row, py::arg("spec"), py::arg("position"),
        py::arg("table") = 1);

  // The cost model and profiler (docs/cost-model.md).
  auto cost_mod = m.def_submodule("cost", "How long a device built to a preset takes to run a program");
  // Engine names in the order of the busy_ns lists.
  cost_mod.attr("ENGINE_NAMES") =
      py::make_tuple(cost::engine_name(cost::Engine::Memory), cost::engine_name(cost::Engine::Matrix),
                     cost::engine_name(cost::Engine::Vector), cost::engine_name(cost::Engine::Ring));
  py::class_<cost::InstructionCost>(cost_mod, "InstructionCost")
      .def_readonly("index", &cost::InstructionCost::index)
      .def_property_readonly("opcode",
                             [](const cost::InstructionCost& c) { return isa::opcode_name(c.op); })
      .def_readonly("issue_ns", &cost::InstructionCost::issue_ns)
      .def_readonly("start_ns", &cost::InstructionCost::start_ns)
      .def_readonly("end_ns", &cost::InstructionCost::end_ns)
      .def_property_readonly("duration_ns", &cost::InstructionCost::duration_ns)
      .def_property_readonly("wait_ns", &cost::InstructionCost::wait_ns)
      .def_readonly("hbm_bytes", &cost::InstructionCost::hbm_bytes)
      .def_readonly("weight_bytes", &cost::InstructionCost::weight_bytes)
      .def_readonly("macs", &cost::InstructionCost::macs)
      .def_readonly("vector_ops", &cost::InstructionCost::vector_ops)
      .def_readonly("ring_bytes", &cost::InstructionCost::ring_bytes)
      .def_property_readonly("bound",
                             [](const cost::InstructionCost& c) { return cost::bound_name(c.bound); })
      .def_property_readonly(
          "engines",
          [](const cost::InstructionCost& c) {
            py::dict d;
            for (size_t e = 0; e < cost::kEngines; ++e)
              if (c.engines[e].used())
                d[cost::engine_name(cost::Engine(e))] =
                    py::make_tuple(c.engines[e].begin_ns, c.engines[e].end_ns);
            return d;
          },
          "{engine name: (begin_ns, end_ns)} for the engines it occupies");
  py::class_<cost::RunCost>(cost_mod, "RunCost")
      .def_readonly("time_ns", &cost::RunCost::time_ns)
      .def_readonly("hbm_bytes", &cost::RunCost::hbm_bytes)
      .def_readonly("weight_bytes", &cost::RunCost::weight_bytes)
      .def_readonly("macs", &cost::RunCost::macs)
      .def_readonly("ring_bytes", &cost::RunCost::ring_bytes)
      .def_property_readonly("busy_ns",
                             [](const cost::RunCost& r) {
                               return std::vector<double>(r.busy_ns.begin(), r.busy_ns.end());
                             })
      .def_readonly("instructions", &cost::RunCost::instructions)
      .def("bandwidth_gbps", &cost::RunCost::bandwidth_gbps);
  py::class_<cost::Floors>(cost_mod, "Floors")
      .def_readonly("weight_bytes", &cost::Floors::weight_bytes)
      .def_readonly("macs", &cost::Floors::macs)
      .def_readonly("bandwidth_ns", &cost::Floors::bandwidth_ns)
      .def_readonly("compute_ns", &cost::Floors::compute_ns);
  py::class_<cost::CostModel>(cost_mod, "CostModel")
      .def(py::init<isa::Program, DevicePreset>(), py::arg("program"), py::arg("preset"))
      .def(
          "run",
          [](const cost::CostModel& m, uint32_t start_pos, uint32_t n_tokens, bool logits_all,
             bool want_logits) {
            py::gil_scoped_release release;
            return m.run(RunArgs{start_pos, n_tokens, logits_all, want_logits});
          },
          py::arg("start_pos") = 0, py::arg("n_tokens") = 1, py::arg("logits_all") = false,
          py::arg("want_logits") = true)
      .def_property_readonly("dependencies", &cost::CostModel::dependencies);
  cost_mod.def(
      "floors",
      [](const isa::Program& p, const DevicePreset& preset, uint32_t start_pos, uint32_t n_tokens,
         bool logits_all, bool want_logits) {
        return cost::floors(p, preset, RunArgs{start_pos, n_tokens, logits_all, want_logits});
      },
      py::arg("program"), py::arg("preset"), py::arg("start_pos") = 0, py::arg("n_tokens") = 1,
      py::arg("logits_all") = false, py::arg("want_logits") = true);
  py::class_<cost::Totals>(cost_mod, "Totals")
      .def_readonly("prefill_ns", &cost::Totals::prefill_ns)
      .def_readonly("decode_ns", &cost::Totals::decode_ns)
      .def_readonly("overhead_ns", &cost::Totals::overhead_ns)
      .def_readonly("prefill_runs", &cost::Totals::prefill_runs)
      .def_readonly("prefill_tokens", &cost::Totals::prefill_tokens)
      .def_readonly("decode_runs", &cost::Totals::decode_runs)
      .def_readonly("hbm_bytes", &cost::Totals::hbm_bytes)
      .def_readonly("decode_hbm_bytes", &cost::Totals::decode_hbm_bytes)
      .def_readonly("weight_bytes", &cost::Totals::weight_bytes)
      .def_readonly("macs", &cost::Totals::macs)
      .def_readonly("ring_bytes", &cost::Totals::ring_bytes)
      .def_property_readonly("busy_ns", [](const cost::Totals& t) {
        return std::vector<double>(t.busy_ns.begin(), t.busy_ns.end());
      });
  py::class_<cost::Profiler>(cost_mod, "Profiler")
      .def(py::init<const isa::Program&, const isa::Program&, const DevicePreset&, uint32_t>(),
           py::arg("prefill"), py::arg("decode"), py::arg("preset"), py::arg("devices") = 1)
      .def("set_region_names", &cost::Profiler::set_region_names, py::arg("names"))
      .def_property("keep_timeline", &cost::Profiler::keep_timeline,
                    &cost::Profiler::set_keep_timeline)
      .def(
          "prefill",
          [](cost::Profiler& p, uint32_t start_pos, uint32_t n, bool logits_all) {
            py::gil_scoped_release release;
            return p.prefill(start_pos, n, logits_all);
          },
          py::arg("start_pos"), py::arg("n"), py::arg("logits_all") = false,
          "Prices a prompt of n tokens in prefill chunks, as the runtime runs it.")
      .def(
          "decode",
          [](cost::Profiler& p, uint32_t position) {
            py::gil_scoped_release release;
            return p.decode(position);
          },
          py::arg("position"))
      .def(
          "decode_range",
          [](cost::Profiler& p, uint32_t first, uint32_t count) {
            py::gil_scoped_release release;
            for (uint32_t i = 0; i < count; ++i) p.decode(first + i);
          },
          py::arg("first"), py::arg("count"),
          "One decode run per position in [first, first + count).")
      .def("reset", &cost::Profiler::reset)
      .def_property_readonly("totals", &cost::Profiler::totals)
      .def_property_readonly("prefill_chunk", &cost::Profiler::prefill_chunk)
      .def_property_readonly("devices", &cost::Profiler::devices)
      .def("chrome_trace",
           [](const cost::Profiler& p) {
             std::string s;
             {
               py::gil_scoped_release release;
               s = p.chrome_trace();
             }
             return s;
           })
      .def(
          "write_chrome_trace",
          [](const cost::Profiler& p, const std::string& path) {
            py::gil_scoped_release release;
            p.write_chrome_trace(path);
          },
          py::arg("path"));

  bind_quant(m);
}
