// hyperdex._core.quant: GPTQ / RTN weight quantization and the exact
// dequantization (csrc/quant). NumPy in and out; inputs in the documented dtype
// and C order are read in place, results are handed over without a copy. Long
// calls release the GIL and stop on Ctrl-C (KeyboardInterrupt). Errors in the
// arguments are hyperdex.errors.ConfigError (SpecError in the core).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/thread_pool.h"
#include "quant/gptq.h"
#include "quant/hessian.h"

namespace py = pybind11;
using namespace hyperdex;

namespace {

// A NumPy array viewing a vector that it now owns.
template <class T>
py::array adopt(std::vector<T>&& v, std::vector<py::ssize_t> shape, const py::dtype& dtype) {
  auto owned = std::make_unique<std::vector<T>>(std::move(v));
  T* data = owned->data();
  py::capsule base(owned.get(), [](void* p) { delete static_cast<std::vector<T>*>(p); });
  owned.release();  // the capsule deletes it
  return py::array(dtype, std::move(shape), data, base);
}

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

std::string shape_str(const py::array& a) {
  std::string s = "[";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + "]";
}

std::string who(const std::string& name) {
  return name.empty() ? std::string("quantization: ") : "layer '" + name + "': ";
}

F32Array weights_arg(const py::object& w, const std::string& name) {
  F32Array arr = F32Array::ensure(w);
  if (!arr) throw py::type_error(who(name) + "W must be a NumPy array of floats [out, in]");
  if (arr.ndim() != 2)
    throw SpecError(who(name) + "W must be 2-D [out_features, in_features], got shape " +
                    shape_str(arr));
  return arr;
}

py::dict result_dict(quant::QuantResult&& r) {
  py::dict d;
  d["codes"] = adopt(std::move(r.codes), {py::ssize_t(r.rows), py::ssize_t(r.cols)},
                     py::dtype::of<uint8_t>());
  d["scales"] = adopt(std::move(r.scales), {py::ssize_t(r.rows), py::ssize_t(r.groups)},
                      py::dtype("float16"));
  d["loss"] = r.loss;
  d["damp"] = r.damp;
  d["retries"] = r.retries;
  return d;
}

// Runs on the calling thread with the GIL released (the core only calls it there).
bool python_interrupted() {
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) {
    PyErr_Clear();
    return true;
  }
  return false;
}

quant::QuantOptions options(int bits, int64_t group_size, bool sym) {
  quant::QuantOptions o;
  o.bits = bits;
  o.group_size = group_size;
  o.sym = sym;
  return o;
}

}  // namespace

void bind_quant(py::module_& m) {
  auto q = m.def_submodule(
      "quant",
      "GPTQ / RTN quantization of linear weights to the LPU's int4 / int8 format: symmetric, "
      "zero point 2^(bits-1), one fp16 scale per group of consecutive input columns");

  py::class_<quant::HessianAccumulator>(q, "HessianAccumulator",
                                        "H = 2/n sum x x^T over a layer's n input rows, "
                                        "accumulated in fp64 (order-independent of batching)")
      .def(py::init<size_t, size_t>(), py::arg("cols"), py::arg("num_threads") = 0)
      .def(
          "add",
          [](quant::HessianAccumulator& acc, const py::array& x_in) {
            py::array x = py::array::ensure(x_in, py::array::c_style);
            if (!x || x.ndim() < 1 || x.shape(x.ndim() - 1) != py::ssize_t(acc.cols()))
              throw SpecError("HessianAccumulator.add: x must be an array [..., " +
                              std::to_string(acc.cols()) + "] (rows of the layer's " +
                              std::to_string(acc.cols()) + " inputs), got shape " +
                              (x ? shape_str(x) : std::string("?")));
            const size_t n = acc.cols() ? size_t(x.size()) / acc.cols() : 0;
            const char kind = x.dtype().kind();
            const auto size = x.itemsize();
            if (kind == 'f' && size == 2) {
              const auto* p = static_cast<const uint16_t*>(x.data());
              py::gil_scoped_release release;
              acc.add_f16(p, n, acc.cols());
            } else if (kind == 'f' && size == 8) {
              const auto* p = static_cast<const double*>(x.data());
              py::gil_scoped_release release;
              acc.add(p, n, acc.cols());
            } else {
              F32Array xf = F32Array::ensure(x);  // float32 as is; anything else converted
              if (!xf) throw py::type_error("HessianAccumulator.add: x must be a float array");
              const float* p = xf.data();
              py::gil_scoped_release release;
              acc.add(p, n, acc.cols());
            }
          },
          py::arg("x"), "Adds rows x [..., cols] (float16, float32 or float64).")
      .def(
          "hessian",
          [](const quant::HessianAccumulator& acc) {
            std::vector<double> h;
            {
              py::gil_scoped_release release;
              h = acc.hessian();
            }
            const auto c = py::ssize_t(acc.cols());
            return adopt(std::move(h), {c, c}, py::dtype::of<double>());
          },
          "2 / count * sum x x^T as a float64 array [cols, cols].")
      .def_property_readonly("count", &quant::HessianAccumulator::count, "Rows added so far.")
      .def_property_readonly("cols", &quant::HessianAccumulator::cols);

  q.def(
      "gptq",
      [](const py::object& w_in, const py::object& h_in, int bits, int64_t group_size, bool sym,
         bool desc_act, bool static_groups, double damp_percent, int64_t block_size,
         double mse, bool act_group_aware, const std::string& name, size_t num_threads) {
        F32Array w = weights_arg(w_in, name);
        F64Array h = F64Array::ensure(h_in);
        if (!h) throw py::type_error(who(name) + "H must be a NumPy array of floats [in, in]");
        const size_t rows = size_t(w.shape(0)), cols = size_t(w.shape(1));
        if (h.ndim() != 2 || size_t(h.shape(0)) != cols || size_t(h.shape(1)) != cols)
          throw SpecError(who(name) + "H has shape " + shape_str(h) + " but W " + shape_str(w) +
                          " has " + std::to_string(cols) + " input columns; pass the Hessian [" +
                          std::to_string(cols) + ", " + std::to_string(cols) +
                          "] of this layer's inputs");
        quant::QuantOptions o = options(bits, group_size, sym);
        o.desc_act = desc_act;
        o.static_groups = static_groups;
        o.damp_percent = damp_percent;
        o.block_size = block_size;
        o.mse = mse;
        o.act_group_aware = act_group_aware;
        quant::QuantResult r;
        {
          py::gil_scoped_release release;
          ThreadPool pool(num_threads);
          r = quant::gptq_quantize(w.data(), rows, cols, h.data(), o, name, pool,
                                   python_interrupted);
        }
        return result_dict(std::move(r));
      },
      py::arg("W"), py::arg("H"), py::arg("bits") = 4, py::arg("group_size") = 128,
      py::arg("sym") = true, py::arg("desc_act") = false, py::arg("static_groups") = false,
      py::arg("damp_percent") = 0.01, py::arg("block_size") = 128, py::arg("mse") = 0.0,
      py::arg("act_group_aware") = false, py::arg("name") = "", py::arg("num_threads") = 0,
      "GPTQ of W (float32 [out, in]) with the Hessian H (float64 [in, in], lower triangle read).\n"
      "Returns {'codes': uint8 [out, in] (original column order), 'scales': float16 [out, groups],"
      " 'loss': float, 'damp': float (damping used), 'retries': int (damping x10 steps)}.");

  q.def(
      "rtn",
      [](const py::object& w_in, int bits, int64_t group_size, bool sym, double mse,
         const std::string& name, size_t num_threads) {
        F32Array w = weights_arg(w_in, name);
        quant::QuantOptions o = options(bits, group_size, sym);
        o.mse = mse;
        quant::QuantResult r;
        {
          py::gil_scoped_release release;
          ThreadPool pool(num_threads);
          r = quant::rtn_quantize(w.data(), size_t(w.shape(0)), size_t(w.shape(1)), o, name, pool);
        }
        return result_dict(std::move(r));
      },
      py::arg("W"), py::arg("bits") = 4, py::arg("group_size") = 128, py::arg("sym") = true,
      py::arg("mse") = 0.0, py::arg("name") = "", py::arg("num_threads") = 0,
      "Round to nearest; same result dict as gptq ('loss' = sum of squared weight errors, "
      "'damp' = 0, 'retries' = 0).");

  q.def(
      "dequantize",
      [](const py::object& codes_in, const py::object& scales_in, int bits, int64_t group_size,
         size_t num_threads) {
        U8Array codes = U8Array::ensure(codes_in);
        py::array scales = py::array::ensure(scales_in, py::array::c_style);
        if (!codes || codes.ndim() != 2)
          throw SpecError("dequantize: codes must be a uint8 array [out, in]");
        if (!scales || scales.dtype().kind() != 'f' || scales.itemsize() != 2)
          throw SpecError("dequantize: scales must be a float16 array [out, groups]");
        const size_t rows = size_t(codes.shape(0)), cols = size_t(codes.shape(1));
        const size_t gc = quant::checked_group_cols(options(bits, group_size, true), cols, "");
        if (scales.ndim() != 2 || size_t(scales.shape(0)) != rows ||
            size_t(scales.shape(1)) != (cols + gc - 1) / gc)
          throw SpecError("dequantize: scales have shape " + shape_str(scales) + " but codes " +
                          shape_str(codes) + " with group_size " + std::to_string(group_size) +
                          " need [" + std::to_string(rows) + ", " + std::to_string((cols + gc - 1) / gc) +
                          "]");
        const auto* sp = static_cast<const uint16_t*>(scales.data());
        std::vector<uint16_t> out;
        {
          py::gil_scoped_release release;
          ThreadPool pool(num_threads);
          out = quant::dequantize(codes.data(), sp, rows, cols, bits, group_size, pool);
        }
        return adopt(std::move(out), {py::ssize_t(rows), py::ssize_t(cols)}, py::dtype("float16"));
      },
      py::arg("codes"), py::arg("scales"), py::arg("bits"), py::arg("group_size"),
      py::arg("num_threads") = 0,
      "The exact dequantized weights fp16((q - 2^(bits-1)) * scale) as float16 [out, in].");
}
