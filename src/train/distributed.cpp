// Data-parallel training on c10d: environment, process group, gradient buckets.

#include <liondg/errors.h>
#include <liondg/train/distributed.h>

#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>

#if defined(LIONDG_WITH_GLOO)
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace liondg {
namespace {

using Clock = std::chrono::steady_clock;

// An integer environment variable, or `fallback` when unset.
int64_t env_int(const char* name, int64_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == std::string(text).size()) return v;
  } catch (const std::exception&) {
  }
  throw UsageError(std::string("environment variable ") + name + "='" + text + "' is not an integer");
}

std::string env_string(const char* name, const std::string& fallback) {
  const char* text = std::getenv(name);
  return text == nullptr || *text == '\0' ? fallback : std::string(text);
}

// A failed collective as the library's error type, naming the likely cause.
[[noreturn]] void rethrow_collective_error(const char* what, int64_t rank, const std::string& message) {
  throw DataError(std::string("distributed ") + what + " failed on rank " + std::to_string(rank) + ": " + message +
                  " (another rank has probably stopped; see its output)");
}

#if defined(LIONDG_WITH_GLOO)

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(const DistributedEnv& env, const CommunicatorOptions& options) : env_(env) {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(env.master_port);
    store_options.isServer = env.rank == 0;
    store_options.numWorkers = static_cast<size_t>(env.world_size);
    store_options.waitWorkers = true;
    store_options.timeout = options.timeout();
    try {
      store_ = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
    } catch (const std::exception& e) {
      throw DataError("rank " + std::to_string(env.rank) + " could not join the job at MASTER_ADDR=" +
                      env.master_addr + " MASTER_PORT=" + std::to_string(env.master_port) + " within " +
                      std::to_string(options.timeout().count() / 1000) + " s: " + short_message(e));
    }
    auto pg_options = c10d::ProcessGroupGloo::Options::create(options.timeout());
    const std::string iface = env_string("GLOO_SOCKET_IFNAME", "");
    if (!iface.empty()) {
      pg_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost") {
      pg_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      pg_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    pg_options->threads = 2;
    try {
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, static_cast<int>(env.rank),
                                                        static_cast<int>(env.world_size), pg_options);
    } catch (const std::exception& e) {
      throw DataError("rank " + std::to_string(env.rank) + " could not create the Gloo process group: " +
                      short_message(e));
    }
  }

  int64_t rank() const override { return env_.rank; }
  int64_t world_size() const override { return env_.world_size; }

  std::unique_ptr<Pending> all_reduce_sum_async(torch::Tensor tensor) override {
    TORCH_CHECK(tensor.is_contiguous(), "all_reduce_sum_async: tensor must be contiguous");
    std::vector<torch::Tensor> list{tensor};
    try {
      return std::make_unique<GlooPending>(pg_->allreduce(list), this);
    } catch (const std::exception& e) {
      rethrow_collective_error("all-reduce", env_.rank, short_message(e));
    }
  }

  void broadcast_(torch::Tensor tensor, int64_t root) override {
    TORCH_CHECK(tensor.is_contiguous(), "broadcast_: tensor must be contiguous");
    std::vector<torch::Tensor> list{tensor};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    const auto t0 = Clock::now();
    try {
      pg_->broadcast(list, o)->wait();
    } catch (const std::exception& e) {
      rethrow_collective_error("broadcast", env_.rank, short_message(e));
    }
    blocked_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
  }

  void barrier() override {
    const auto t0 = Clock::now();
    try {
      pg_->barrier()->wait();
    } catch (const std::exception& e) {
      rethrow_collective_error("barrier", env_.rank, short_message(e));
    }
    blocked_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
  }

 private:
  class GlooPending final : public Pending {
   public:
    GlooPending(c10::intrusive_ptr<c10d::Work> work, GlooCommunicator* owner) : work_(std::move(work)), owner_(owner) {}
    void wait() override {
      const auto t0 = Clock::now();
      try {
        work_->wait();
      } catch (const std::exception& e) {
        rethrow_collective_error("all-reduce", owner_->env_.rank, short_message(e));
      }
      owner_->blocked_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
    }

   private:
    c10::intrusive_ptr<c10d::Work> work_;
    GlooCommunicator* owner_;
  };

  static std::string short_message(const std::exception& e) {
    if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
    return e.what();
  }

  DistributedEnv env_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

#endif  // LIONDG_WITH_GLOO

// Contiguous groups of same-dtype tensors, flattened into one buffer each.
std::map<c10::ScalarType, std::vector<torch::Tensor>> by_dtype(const std::vector<torch::Tensor>& tensors) {
  std::map<c10::ScalarType, std::vector<torch::Tensor>> groups;
  for (const auto& t : tensors) {
    if (t.defined() && t.numel() > 0) groups[t.scalar_type()].push_back(t);
  }
  return groups;
}

}  // namespace

void Communicator::all_reduce_sum_(const torch::Tensor& tensor) { all_reduce_sum_async(tensor)->wait(); }

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw DataError(std::string("cannot open a socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw DataError("cannot find a free loopback port: " + why);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool distributed_available() {
#if defined(LIONDG_WITH_GLOO)
  return true;
#else
  return false;
#endif
}

DistributedEnv DistributedEnv::from_environment() {
  DistributedEnv env;
  env.world_size = env_int("WORLD_SIZE", 1);
  if (env.world_size < 1) {
    throw UsageError("environment variable WORLD_SIZE=" + std::to_string(env.world_size) + " must be >= 1");
  }
  env.rank = env_int("RANK", 0);
  if (env.rank < 0 || env.rank >= env.world_size) {
    throw UsageError("environment variable RANK=" + std::to_string(env.rank) + " must be in [0, WORLD_SIZE=" +
                     std::to_string(env.world_size) + ")");
  }
  env.local_world_size = env_int("LOCAL_WORLD_SIZE", env.world_size);
  if (env.local_world_size < 1 || env.local_world_size > env.world_size) {
    throw UsageError("environment variable LOCAL_WORLD_SIZE=" + std::to_string(env.local_world_size) +
                     " must be in [1, WORLD_SIZE=" + std::to_string(env.world_size) + "]");
  }
  env.local_rank = env_int("LOCAL_RANK", env.rank % env.local_world_size);
  if (env.local_rank < 0 || env.local_rank >= env.local_world_size) {
    throw UsageError("environment variable LOCAL_RANK=" + std::to_string(env.local_rank) +
                     " must be in [0, LOCAL_WORLD_SIZE=" + std::to_string(env.local_world_size) + ")");
  }
  env.master_addr = env_string("MASTER_ADDR", "127.0.0.1");
  env.master_port = env_int("MASTER_PORT", 29500);
  if (env.master_port < 1 || env.master_port > 65535) {
    throw UsageError("environment variable MASTER_PORT=" + std::to_string(env.master_port) +
                     " must be a TCP port in [1, 65535]");
  }
  if (env.world_size > 1 && std::getenv("MASTER_ADDR") == nullptr && std::getenv("MASTER_PORT") == nullptr &&
      std::getenv("RANK") == nullptr) {
    throw UsageError("WORLD_SIZE=" + std::to_string(env.world_size) +
                     " is set but RANK, MASTER_ADDR and MASTER_PORT are not; start ranks with `liondg launch` or "
                     "torchrun-style variables");
  }
  return env;
}

std::shared_ptr<Communicator> connect(const DistributedEnv& env, const CommunicatorOptions& options) {
  TORCH_CHECK_VALUE(env.world_size >= 1 && env.rank >= 0 && env.rank < env.world_size, "connect: rank ", env.rank,
                    " is not in [0, ", env.world_size, ")");
  TORCH_CHECK_VALUE(options.timeout().count() > 0, "distributed timeout must be > 0 ms, got ",
                    options.timeout().count());
  if (options.backend() == "nccl") {
    throw UsageError("distributed backend 'nccl' needs a CUDA build of liondg and libtorch; this build is CPU-only "
                     "(use 'gloo')");
  }
  if (options.backend() != "gloo") {
    throw UsageError("unknown distributed backend '" + options.backend() + "'; expected gloo or nccl");
  }
#if defined(LIONDG_WITH_GLOO)
  return std::make_shared<GlooCommunicator>(env, options);
#else
  throw DataError("this liondg was built without c10d Gloo (install libgloo-dev and rebuild), so WORLD_SIZE=" +
                  std::to_string(env.world_size) + " cannot be used");
#endif
}

void broadcast_tensors_(Communicator& comm, const std::vector<torch::Tensor>& tensors, int64_t root) {
  torch::NoGradGuard no_grad;
  for (auto& [dtype, group] : by_dtype(tensors)) {
    std::vector<torch::Tensor> flat_parts;
    flat_parts.reserve(group.size());
    for (const auto& t : group) flat_parts.push_back(t.reshape(-1));
    torch::Tensor flat = torch::cat(flat_parts);
    comm.broadcast_(flat, root);
    int64_t offset = 0;
    for (auto& t : group) {
      t.copy_(flat.narrow(/*dim=*/0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

void sum_values_(Communicator& comm, std::vector<double>& values) {
  if (values.empty()) return;
  torch::Tensor t = torch::from_blob(values.data(), {static_cast<int64_t>(values.size())}, torch::kFloat64).clone();
  comm.all_reduce_sum_(t);
  const double* p = t.data_ptr<double>();
  for (size_t i = 0; i < values.size(); ++i) values[i] = p[i];
}

void average_values_(Communicator& comm, std::vector<double>& values) {
  sum_values_(comm, values);
  for (double& v : values) v /= static_cast<double>(comm.world_size());
}

GradientReducer::GradientReducer(std::vector<torch::Tensor> parameters, std::shared_ptr<Communicator> comm,
                                 int64_t bucket_bytes)
    : params_(std::move(parameters)), comm_(std::move(comm)) {
  TORCH_CHECK_VALUE(comm_ != nullptr, "GradientReducer needs a communicator");
  TORCH_CHECK_VALUE(bucket_bytes > 0, "bucket size must be > 0 bytes, got ", bucket_bytes);
  bucket_of_.resize(params_.size());
  offset_of_.resize(params_.size());
  seen_.assign(params_.size(), false);
  // Reverse registration order: the last layers' gradients are produced first.
  std::vector<std::vector<size_t>> groups;
  int64_t bytes = bucket_bytes;  // forces a new bucket at the start
  for (size_t i = params_.size(); i-- > 0;) {
    const auto& p = params_[i];
    TORCH_CHECK_VALUE(p.scalar_type() == torch::kFloat32, "GradientReducer: float32 parameters only, got ",
                      p.scalar_type());
    if (bytes >= bucket_bytes) {
      groups.emplace_back();
      bytes = 0;
    }
    groups.back().push_back(i);
    bytes += p.numel() * static_cast<int64_t>(sizeof(float));
  }
  buckets_.resize(groups.size());
  for (size_t b = 0; b < groups.size(); ++b) {
    int64_t offset = 0;
    for (size_t i : groups[b]) {
      bucket_of_[i] = b;
      offset_of_[i] = offset;
      offset += params_[i].numel();
    }
    buckets_[b].members = groups[b];
    buckets_[b].flat = torch::zeros({offset}, torch::kFloat32);
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].requires_grad()) continue;
    hooks_.push_back(params_[i].register_hook([this, i](const torch::Tensor& grad) { on_gradient(i, grad); }));
  }
}

GradientReducer::~GradientReducer() {
  // Collectives still in flight (an exception mid-step) must end before their buffers go.
  for (auto& b : buckets_) {
    if (b.pending) {
      try {
        b.pending->wait();
      } catch (...) {
      }
    }
  }
  size_t h = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].requires_grad()) params_[i].remove_hook(hooks_[h++]);
  }
}

void GradientReducer::arm() {
  for (auto& b : buckets_) {
    b.flat.zero_();
    b.ready = 0;
    b.pending.reset();
  }
  seen_.assign(params_.size(), false);
  armed_ = true;
}

void GradientReducer::on_gradient(size_t index, const torch::Tensor& grad) {
  if (!armed_ || !grad.defined()) return;
  torch::NoGradGuard no_grad;
  Bucket& bucket = buckets_[bucket_of_[index]];
  // The engine sums every use of a leaf before its hook runs: one call per parameter.
  TORCH_CHECK(!seen_[index], "GradientReducer: parameter ", index, " received two gradients in one backward");
  seen_[index] = true;
  bucket.flat.narrow(/*dim=*/0, offset_of_[index], grad.numel()).view(grad.sizes()).copy_(grad);
  if (++bucket.ready == static_cast<int64_t>(bucket.members.size())) launch(bucket);
}

void GradientReducer::launch(Bucket& bucket) { bucket.pending = comm_->all_reduce_sum_async(bucket.flat); }

void GradientReducer::finish() {
  TORCH_CHECK(armed_, "GradientReducer::finish without arm");
  armed_ = false;
  torch::NoGradGuard no_grad;
  // Buckets with parameters that got no gradient (unused in this graph) go now, in
  // bucket order, which is the same on every rank.
  for (auto& b : buckets_) {
    if (!b.pending) launch(b);
  }
  const double scale = 1.0 / static_cast<double>(comm_->world_size());
  for (auto& b : buckets_) {
    b.pending->wait();
    b.pending.reset();
    b.flat.mul_(scale);
    for (size_t i : b.members) {
      if (!seen_[i]) continue;
      torch::Tensor& p = params_[i];
      torch::Tensor avg = b.flat.narrow(/*dim=*/0, offset_of_[i], p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(avg);
      } else {
        p.mutable_grad() = avg.clone().contiguous(p.suggest_memory_format());
      }
    }
  }
}

}  // namespace liondg
