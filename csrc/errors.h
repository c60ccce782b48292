// Errors for tensor arguments of the wrong dtype or layout. In Python they are
// fused_linreg.TensorTypeError, a TypeError that is also a RuntimeError (what nn.Linear raises for
// the same input), and for a dtype the kernels do not implement fused_linreg.UnsupportedDtypeError
// (also a NotImplementedError, as ATen's "not implemented for 'Bool'"). This header includes no
// Python: the translation lives in errors.cpp.
#pragma once
#include <c10/macros/Macros.h>
#include <c10/util/StringUtil.h>

#include <string>

namespace fused_linreg {

enum class TypeErrorKind { kWrongType = 0, kUnsupportedDtype = 1 };

[[noreturn]] void throw_type_error(TypeErrorKind kind, std::string message);

}  // namespace fused_linreg

// As TORCH_CHECK_TYPE: the message is built only when the check fails.
#define FUSED_LINREG_CHECK_TYPE_KIND(kind, cond, ...)                                            \
  do {                                                                                           \
    if (C10_UNLIKELY(!(cond)))                                                                   \
      ::fused_linreg::throw_type_error(::fused_linreg::TypeErrorKind::kind,                      \
                                       ::c10::str(__VA_ARGS__));                                 \
  } while (0)
#define FUSED_LINREG_CHECK_TYPE(cond, ...) FUSED_LINREG_CHECK_TYPE_KIND(kWrongType, cond, __VA_ARGS__)
#define FUSED_LINREG_CHECK_DTYPE_SUPPORTED(cond, ...) \
  FUSED_LINREG_CHECK_TYPE_KIND(kUnsupportedDtype, cond, __VA_ARGS__)
