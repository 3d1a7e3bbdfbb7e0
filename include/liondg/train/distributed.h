#pragma once
// Data-parallel training on PyTorch's c10d process groups (Gloo on CPU).
//
// Ranks find each other the way torchrun's do: RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in the environment; rank 0 hosts the
// c10d TCPStore. `liondg launch --nproc N -- train ...` sets them for N local ranks.
//
// What a data-parallel run does (see docs/distributed.md):
//   - every rank builds and initializes the model, then rank 0's parameters and
//     buffers are broadcast, so every init policy (LSUV and GradInit included) yields
//     one model;
//   - each global batch of B images is cut into W equal shards (B % W == 0), rank r
//     taking rows [r B/W, (r+1) B/W) of the batch a single process would draw;
//   - gradients are averaged over ranks by a GradientReducer: bucketed all-reduces
//     launched from autograd hooks while the backward pass is still running;
//   - logged losses and accuracies, the gradient diagnostics and validation are
//     reduced over ranks, so rank 0 records what one process with batch B would;
//   - BatchNorm uses per-rank batch statistics (as DDP does) unless synchronized
//     BatchNorm is asked for; running statistics are taken from rank 0 before every
//     evaluation (DDP's broadcast_buffers).

#include <torch/arg.h>
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace liondg {

/// torchrun-style process placement, read from the environment.
struct DistributedEnv {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  int64_t local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;

  bool enabled() const { return world_size > 1; }

  /// Reads RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
  /// Without WORLD_SIZE (or with WORLD_SIZE=1) the result is a single process. Throws
  /// UsageError naming the variable for malformed or inconsistent values.
  static DistributedEnv from_environment();
};

struct CommunicatorOptions {
  /// "gloo" (CPU). "nccl" needs a CUDA build and is refused by this one.
  TORCH_ARG(std::string, backend) = "gloo";
  /// Bound on connecting to the store and on every collective: a rank that dies or
  /// stops answering ends the job with an error instead of a hang.
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::milliseconds(300'000);
};

/// Collectives over the ranks of one job. Tensors are dense CPU tensors.
class Communicator {
 public:
  /// An asynchronous collective in flight.
  class Pending {
   public:
    virtual ~Pending() = default;
    /// Blocks until done; throws if the collective failed (e.g. a peer died).
    virtual void wait() = 0;
  };

  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  /// Starts an in-place sum over ranks of `tensor` (contiguous).
  virtual std::unique_ptr<Pending> all_reduce_sum_async(torch::Tensor tensor) = 0;
  /// Overwrites `tensor` (contiguous) on every rank with rank `root`'s.
  virtual void broadcast_(torch::Tensor tensor, int64_t root) = 0;
  virtual void barrier() = 0;

  /// In-place sum over ranks, blocking.
  void all_reduce_sum_(const torch::Tensor& tensor);
  /// Seconds spent blocked in collectives (waits and blocking calls) so far: the
  /// communication time not hidden behind computation.
  double blocked_seconds() const { return blocked_seconds_; }

 protected:
  double blocked_seconds_ = 0;
};

/// Whether this build has c10d Gloo (the headers of libgloo-dev were found).
bool distributed_available();

/// A free TCP port on the loopback interface (the kernel's choice for an ephemeral
/// bind); throws DataError when no socket can be opened or bound. Another process may
/// take it before it is used: callers that bind it retry on failure.
int free_loopback_port();

/// Joins the job described by `env`: rank 0 starts the c10d TCPStore on
/// MASTER_PORT, every rank creates a process group of `options.backend()`.
/// Throws DataError when the store cannot be reached in time or the backend is
/// unavailable.
std::shared_ptr<Communicator> connect(const DistributedEnv& env, const CommunicatorOptions& options = {});

/// Overwrites `tensors` on every rank with rank `root`'s values (one flat buffer
/// per dtype; any memory format).
void broadcast_tensors_(Communicator& comm, const std::vector<torch::Tensor>& tensors, int64_t root = 0);

/// Replaces each of `values` by its sum over ranks (one all-reduce in double).
void sum_values_(Communicator& comm, std::vector<double>& values);
/// Replaces each of `values` by its mean over ranks (one all-reduce in double).
void average_values_(Communicator& comm, std::vector<double>& values);

/// Averages gradients over ranks while the backward pass runs: parameters are
/// grouped, in reverse registration order (roughly the order backward produces
/// them), into buckets of about `bucket_bytes`; a hook on each parameter copies its
/// gradient into its bucket, and a full bucket is all-reduced asynchronously. After
/// backward, finish() reduces what is left, waits, and writes the averages into
/// `.grad`. Hooks only act between arm() and finish() (diagnostic autograd::grad
/// calls are not reduced). Every rank must use the same parameters in the same
/// way, as data parallelism implies.
class GradientReducer {
 public:
  static constexpr int64_t kDefaultBucketBytes = 256 * 1024;

  GradientReducer(std::vector<torch::Tensor> parameters, std::shared_ptr<Communicator> comm,
                  int64_t bucket_bytes = kDefaultBucketBytes);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  /// Call right before backward().
  void arm();
  /// Call right after backward(): every parameter's .grad is then the mean over ranks.
  void finish();
  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }

 private:
  struct Bucket {
    std::vector<size_t> members;  // indices into params_
    torch::Tensor flat;           // float, all members' gradients back to back
    int64_t ready = 0;
    std::unique_ptr<Communicator::Pending> pending;
  };
  void on_gradient(size_t index, const torch::Tensor& grad);
  void launch(Bucket& bucket);

  std::vector<torch::Tensor> params_;
  std::shared_ptr<Communicator> comm_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;   // param index -> bucket
  std::vector<int64_t> offset_of_;  // param index -> offset in its bucket
  std::vector<bool> seen_;
  std::vector<unsigned> hooks_;
  bool armed_ = false;
};

}  // namespace liondg
