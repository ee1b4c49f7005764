// Framework-free error reporting for the core: the TF glue turns a failed
// Status into InvalidArgument with the same message.
#ifndef SPARSE_OPS_KERNELS_CORE_STATUS_H_
#define SPARSE_OPS_KERNELS_CORE_STATUS_H_

#include <string>
#include <utility>

namespace sparse_ops {

class Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status Error(std::string message) {
    Status s;
    s.ok_ = false;
    s.message_ = std::move(message);
    return s;
  }
  bool ok() const { return ok_; }
  const std::string& message() const { return message_; }

 private:
  bool ok_ = true;
  std::string message_;
};

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_STATUS_H_
