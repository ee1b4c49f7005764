// Framework-free error reporting for the core: the TF glue turns a failed
// Status into InvalidArgument (bad input), ResourceExhausted (no memory) or
// Internal (a failure of the device or of the library itself), with the
// same message.
#ifndef SPARSE_OPS_KERNELS_CORE_STATUS_H_
#define SPARSE_OPS_KERNELS_CORE_STATUS_H_

#include <string>
#include <utility>

namespace sparse_ops {

class Status {
 public:
  enum class Kind { kOk, kBadInput, kOutOfMemory, kInternal };

  Status() = default;
  static Status Ok() { return Status(); }
  // Bad input (InvalidArgument in TensorFlow).
  static Status Error(std::string message) {
    return Status(Kind::kBadInput, std::move(message));
  }
  // Memory the caller could not give (ResourceExhausted).
  static Status OutOfMemory(std::string message) {
    return Status(Kind::kOutOfMemory, std::move(message));
  }
  // A CUDA error or a broken internal contract (Internal).
  static Status Internal(std::string message) {
    return Status(Kind::kInternal, std::move(message));
  }
  bool ok() const { return kind_ == Kind::kOk; }
  bool out_of_memory() const { return kind_ == Kind::kOutOfMemory; }
  Kind kind() const { return kind_; }
  const std::string& message() const { return message_; }

 private:
  Status(Kind kind, std::string message)
      : kind_(kind), message_(std::move(message)) {}

  Kind kind_ = Kind::kOk;
  std::string message_;
};

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_STATUS_H_
