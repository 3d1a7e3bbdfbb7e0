// Data parallelism on c10d Gloo: two ranks (threads of this process, on loopback)
// against one process with the whole batch.

#include "expect.h"
#include "fixtures.h"

#include <liondg/errors.h>
#include <liondg/init/init.h>
#include <liondg/models/batch_norm.h>
#include <liondg/train/distributed.h>
#include <liondg/train/trainer.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <iostream>
#include <thread>

namespace liondg {
namespace {

// Runs fn(rank, communicator) on `world` threads joined into one job. Joining is
// retried on a fresh port (another test process may have taken the free port between
// free_loopback_port() and the store's bind, e.g. under `ctest -j`).
void run_ranks(int64_t world, const std::function<void(int64_t, std::shared_ptr<Communicator>)>& fn) {
  constexpr int kAttempts = 3;
  for (int attempt = 1;; ++attempt) {
    const int port = free_loopback_port();
    std::vector<std::shared_ptr<Communicator>> comms(static_cast<size_t>(world));
    std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
    std::vector<std::thread> threads;
    for (int64_t r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        try {
          DistributedEnv env;
          env.rank = r;
          env.world_size = world;
          env.local_world_size = world;
          env.local_rank = r;
          env.master_port = port;
          comms[static_cast<size_t>(r)] = connect(env, CommunicatorOptions().timeout(std::chrono::milliseconds(60'000)));
        } catch (...) {
          errors[static_cast<size_t>(r)] = std::current_exception();
        }
      });
    }
    for (auto& t : threads) t.join();
    bool joined = true;
    for (auto& e : errors) joined = joined && !e;
    if (!joined) {
      if (attempt < kAttempts) continue;
      for (auto& e : errors) {
        if (e) std::rethrow_exception(e);
      }
    }
    threads.clear();
    for (int64_t r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        try {
          fn(r, comms[static_cast<size_t>(r)]);
        } catch (...) {
          errors[static_cast<size_t>(r)] = std::current_exception();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (auto& e : errors) {
      if (e) std::rethrow_exception(e);
    }
    return;
  }
}

struct ScopedEnv {
  std::vector<std::string> names;
  void set(const std::string& name, const std::string& value) {
    ::setenv(name.c_str(), value.c_str(), 1);
    names.push_back(name);
  }
  ~ScopedEnv() {
    for (const auto& n : names) ::unsetenv(n.c_str());
  }
};

std::shared_ptr<DSModelImpl> make_model(bool batch_norm, uint64_t seed) {
  torch::manual_seed(seed);
  auto model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet().batch_norm(batch_norm));
  init_model_(*model, "lion-dg");
  return model;
}

// Largest |a - b| / (1 + |a|) over all parameters.
double max_relative_difference(DSModelImpl& a, DSModelImpl& b) {
  torch::NoGradGuard no_grad;
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  double worst = 0;
  for (const auto& item : pa) {
    const torch::Tensor x = item.value().to(torch::kFloat64), y = pb[item.key()].to(torch::kFloat64);
    worst = std::max(worst, ((x - y).abs() / (1 + x.abs())).max().item<double>());
  }
  return worst;
}

// Two ranks with B/2 images each against one process with B: same parameters.
// Measured differences are about 5e-8 (float summation order); tolerance 1e-6.
// `sync_bn`: the model has BatchNorm, synchronized across ranks; else no BatchNorm.
void expect_two_ranks_match_one(bool sync_bn, const std::string& optimizer, double tolerance) {
  torch::set_num_threads(1);
  const DataSource data = testing::tiny_data(/*seed=*/5);
  TrainOptions o = TrainOptions()
                       .steps(6)
                       .batch_size(32)
                       .grad_every(2)
                       .eval_every(3)
                       .optimizer(optimizer)
                       .lr(optimizer == "sgd" ? 0.05 : 1e-3)
                       .momentum(optimizer == "sgd" ? 0.9 : 0.0)
                       .fused(false)
                       .prefetch(false)
                       .channels_last(false);
  std::shared_ptr<DSModelImpl> single = make_model(sync_bn, /*seed=*/7);
  const TrainSummary one = train(*single, data, o);

  // Rank 1 starts from a different initialization: the broadcast must replace it.
  std::vector<std::shared_ptr<DSModelImpl>> models{make_model(sync_bn, 7), make_model(sync_bn, 99)};
  std::vector<TrainSummary> summaries(2);
  run_ranks(2, [&](int64_t rank, std::shared_ptr<Communicator> comm) {
    TrainOptions ro = o;
    ro.communicator(comm).sync_batch_norm(sync_bn).bucket_bytes(4096);  // several buckets
    summaries[static_cast<size_t>(rank)] = train(*models[static_cast<size_t>(rank)], data, ro);
  });
  EXPECT_EQ(summaries[0].status, "completed");
  EXPECT_EQ(summaries[0].world_size, 2);
  // The ranks hold one model, bit for bit.
  EXPECT_EQ(max_relative_difference(*models[0], *models[1]), 0.0);
  // And it is the single process's model within float rounding.
  const double difference = max_relative_difference(*single, *models[0]);
  std::cout << "[ measured ] " << optimizer << (sync_bn ? ", sync BN" : ", no BN")
            << ": max |p2 - p1| / (1 + |p1|) = " << difference << " (tolerance " << tolerance << ")\n";
  EXPECT_LE(difference, tolerance) << optimizer << " sync_bn=" << sync_bn;
  // Validation of the whole split, reduced over ranks.
  EXPECT_NEAR(summaries[0].final_eval.main_acc, one.final_eval.main_acc, 1.0 / 128 + 1e-9);
  EXPECT_EQ(summaries[0].final_eval.main_acc, summaries[1].final_eval.main_acc);
  if (sync_bn) {
    // Running statistics from global batch statistics.
    const auto bs = single->named_buffers(), bd = models[0]->named_buffers();
    for (const auto& item : bs) {
      const torch::Tensor d = (item.value().to(torch::kFloat64) - bd[item.key()].to(torch::kFloat64)).abs();
      EXPECT_LE(d.max().item<double>(), 1e-4 * (1 + item.value().abs().max().item<double>())) << item.key();
    }
  }
}

TEST(Distributed, EnvironmentIsReadLikeTorchrun) {
  {
    ScopedEnv env;
    env.set("WORLD_SIZE", "4");
    env.set("RANK", "3");
    env.set("LOCAL_WORLD_SIZE", "2");
    env.set("MASTER_ADDR", "10.0.0.1");
    env.set("MASTER_PORT", "1234");
    const DistributedEnv e = DistributedEnv::from_environment();
    EXPECT_TRUE(e.enabled());
    EXPECT_EQ(e.rank, 3);
    EXPECT_EQ(e.local_rank, 1);  // RANK % LOCAL_WORLD_SIZE without LOCAL_RANK
    EXPECT_EQ(e.master_addr, "10.0.0.1");
    EXPECT_EQ(e.master_port, 1234);
  }
  EXPECT_FALSE(DistributedEnv::from_environment().enabled());  // nothing set: one process
  struct Bad {
    std::vector<std::pair<std::string, std::string>> vars;
    std::string message;
  };
  const std::vector<Bad> bad{
      {{{"WORLD_SIZE", "two"}}, "WORLD_SIZE='two' is not an integer"},
      {{{"WORLD_SIZE", "0"}}, "WORLD_SIZE=0 must be >= 1"},
      {{{"WORLD_SIZE", "2"}, {"RANK", "2"}}, "RANK=2 must be in [0, WORLD_SIZE=2)"},
      {{{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_PORT", "70000"}}, "MASTER_PORT=70000 must be a TCP port"},
      {{{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"LOCAL_RANK", "5"}}, "LOCAL_RANK=5 must be in [0, LOCAL_WORLD_SIZE=2)"},
      {{{"WORLD_SIZE", "2"}}, "RANK, MASTER_ADDR and MASTER_PORT are not"},
  };
  for (const auto& b : bad) {
    ScopedEnv env;
    for (const auto& [k, v] : b.vars) env.set(k, v);
    try {
      DistributedEnv::from_environment();
      ADD_FAILURE() << "no error for " << b.message;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(b.message), std::string::npos) << e.what();
    }
  }
}

TEST(Distributed, CollectivesSumBroadcastAndAverage) {
  ASSERT_TRUE(distributed_available());
  run_ranks(2, [](int64_t rank, std::shared_ptr<Communicator> comm) {
    EXPECT_EQ(comm->world_size(), 2);
    torch::Tensor t = torch::full({5}, static_cast<float>(rank + 1));
    comm->all_reduce_sum_(t);
    EXPECT_TRUE(t.equal(torch::full({5}, 3.0f)));
    // Mixed dtypes and a channels-last tensor, rank 0's values everywhere.
    std::vector<torch::Tensor> state{torch::full({2, 3, 4, 4}, static_cast<float>(rank))
                                         .contiguous(torch::MemoryFormat::ChannelsLast),
                                     torch::full({1}, rank + 10, torch::kInt64)};
    broadcast_tensors_(*comm, state, /*root=*/0);
    EXPECT_TRUE(state[0].equal(torch::zeros({2, 3, 4, 4})));
    EXPECT_EQ(state[1].item<int64_t>(), 10);
    std::vector<double> v{static_cast<double>(rank), 2.0 * static_cast<double>(rank)};
    average_values_(*comm, v);
    EXPECT_DOUBLE_EQ(v[0], 0.5);
    EXPECT_DOUBLE_EQ(v[1], 1.0);
    comm->barrier();
  });
}

TEST(Distributed, TwoRanksMatchOneProcessWithoutBatchNorm) {
  expect_two_ranks_match_one(/*sync_bn=*/false, "adamw", 1e-6);
}

TEST(Distributed, TwoRanksWithSyncBatchNormMatchOneProcess) {
  expect_two_ranks_match_one(/*sync_bn=*/true, "sgd", 1e-6);
  expect_two_ranks_match_one(/*sync_bn=*/true, "adamw", 1e-6);
}

TEST(Distributed, SyncBatchNormMatchesBatchNormOnOneRank) {
  // One rank: synchronized BatchNorm is plain BatchNorm (forward, backward, running stats).
  torch::manual_seed(1);
  torch::nn::BatchNorm2d plain(6), synced(6);
  {
    torch::NoGradGuard no_grad;
    plain->weight.uniform_(0.5, 1.5);
    plain->bias.uniform_(-0.5, 0.5);
    synced->weight.copy_(plain->weight);
    synced->bias.copy_(plain->bias);
  }
  const torch::Tensor x = torch::randn({8, 6, 5, 5}) * 3 + 1;
  const torch::Tensor w = torch::randn({8, 6, 5, 5});
  torch::Tensor x0 = x.clone().requires_grad_(true), x1 = x.clone().requires_grad_(true);
  (plain->forward(x0) * w).sum().backward();
  run_ranks(1, [&](int64_t, std::shared_ptr<Communicator> comm) {
    struct Sync : BatchNormSync {
      Communicator& c;
      explicit Sync(Communicator& comm) : c(comm) {}
      void all_reduce_sum_(const torch::Tensor& t) override { c.all_reduce_sum_(t); }
    } sync(*comm);
    SyncBatchNormGuard guard(&sync);
    (batch_norm(synced, x1) * w).sum().backward();
  });
  EXPECT_TRUE(torch::allclose(x0.grad(), x1.grad(), /*rtol=*/1e-4, /*atol=*/1e-5));
  EXPECT_TRUE(torch::allclose(plain->weight.grad(), synced->weight.grad(), 1e-4, 1e-4));
  EXPECT_TRUE(torch::allclose(plain->bias.grad(), synced->bias.grad(), 1e-4, 1e-4));
  EXPECT_TRUE(torch::allclose(plain->running_mean, synced->running_mean, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(plain->running_var, synced->running_var, 1e-5, 1e-6));
  EXPECT_EQ(plain->num_batches_tracked.item<int64_t>(), synced->num_batches_tracked.item<int64_t>());
}

TEST(Distributed, BatchMustSplitEvenlyAndTheStoreMustBeReachable) {
  const DataSource data = testing::tiny_data(/*seed=*/5);
  run_ranks(2, [&](int64_t rank, std::shared_ptr<Communicator> comm) {
    auto model = make_model(false, 1);
    try {
      train(*model, data, TrainOptions().steps(1).batch_size(31).communicator(comm));
      ADD_FAILURE() << "rank " << rank << ": batch 31 over 2 ranks accepted";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find("batch size 31 must be divisible by WORLD_SIZE=2"), std::string::npos);
    }
  });
  // Nobody listens on this port: a bounded wait, then a message naming the address.
  DistributedEnv env;
  env.rank = 1;
  env.world_size = 2;
  env.master_port = free_loopback_port();
  testing::expect_data_error([&] { connect(env, CommunicatorOptions().timeout(std::chrono::milliseconds(1500))); },
                             {"could not join the job at MASTER_ADDR=127.0.0.1"});
}

}  // namespace
}  // namespace liondg
