// Framework-free error reporting for the core: the TF glue turns a failed
// Status into InvalidArgument (ResourceExhausted for out_of_memory) with the
// same message.
#ifndef SPARSE_OPS_KERNELS_CORE_STATUS_H_
#define SPARSE_OPS_KERNELS_CORE_STATUS_H_

#include <string>
#include <utility>

namespace sparse_ops {

class Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  // Bad input (InvalidArgument in TensorFlow).
  static Status Error(std::string message) {
    Status s;
    s.ok_ = false;
    s.message_ = std::move(message);
    return s;
  }
  // Memory the caller could not give (ResourceExhausted).
  static Status OutOfMemory(std::string message) {
    Status s = Error(std::move(message));
    s.out_of_memory_ = true;
    return s;
  }
  bool ok() const { return ok_; }
  bool out_of_memory() const { return out_of_memory_; }
  const std::string& message() const { return message_; }

 private:
  bool ok_ = true;
  bool out_of_memory_ = false;
  std::string message_;
};

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_STATUS_H_
