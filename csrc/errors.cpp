// The Python types of the errors in errors.h. torch translates a torch::PyTorchError that reaches
// Python (through an op call, the autograd engine or pybind) into the exception type it names,
// so the kernels can raise a class that derives from both TypeError and RuntimeError, which no
// c10 error type maps to.
#include <torch/csrc/Exceptions.h>

#include "errors.h"

namespace fused_linreg {
namespace {

// Set once when the package is imported (fused_linreg/_ops.py), before any kernel runs; never
// released. Until then, a plain TypeError.
PyObject* python_types[2] = {nullptr, nullptr};

struct TensorTypeError : torch::PyTorchError {
  TensorTypeError(TypeErrorKind kind, std::string message)
      : torch::PyTorchError(std::move(message)), kind(kind) {}
  PyObject* python_type() override {
    PyObject* type = python_types[static_cast<int>(kind)];
    return type != nullptr ? type : PyExc_TypeError;
  }
  TypeErrorKind kind;
};

}  // namespace

void throw_type_error(TypeErrorKind kind, std::string message) {
  throw TensorTypeError(kind, std::move(message));
}

void register_error_types(PyObject* wrong_type, PyObject* unsupported_dtype) {
  Py_INCREF(wrong_type);
  Py_INCREF(unsupported_dtype);
  python_types[static_cast<int>(TypeErrorKind::kWrongType)] = wrong_type;
  python_types[static_cast<int>(TypeErrorKind::kUnsupportedDtype)] = unsupported_dtype;
}

}  // namespace fused_linreg
