// `liondg launch --nproc N -- train ...`: N local ranks of this tool, like
// `torchrun --standalone`. Each rank gets RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; its output lines are forwarded with
// a "[rank R] " prefix; the first rank to fail stops the others (SIGTERM, then
// SIGKILL after a grace period) and its exit status becomes the launcher's.

#include "cli/commands.h"

#include <liondg/errors.h>
#include <liondg/train/distributed.h>

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

namespace liondg::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kPollMillis = 100;

volatile sig_atomic_t g_forward_signal = 0;

void remember_signal(int sig) { g_forward_signal = sig; }

struct LaunchOptions {
  int64_t nproc = 1;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 0;  // 0 = a free port
  double grace_seconds = 5.0;
  std::vector<std::string> command;
};

std::string self_executable() {
  std::vector<char> buf(4096);
  const ssize_t n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) throw DataError("liondg launch: cannot find this executable (/proc/self/exe)");
  return std::string(buf.data(), static_cast<size_t>(n));
}

// One child process and the unfinished last line of each of its two streams.
struct Rank {
  int64_t index = 0;
  pid_t pid = -1;
  int fds[2] = {-1, -1};  // stdout, stderr (read ends)
  std::string partial[2];
  bool running = true;
  int exit_code = 0;  // 128 + signal when killed
  std::string how;    // "exited with status 3", "was killed by signal 9 (Killed)"
};

void forward_lines(Rank& r, int stream, const char* data, size_t n) {
  std::ostream& os = stream == 0 ? std::cout : std::cerr;
  r.partial[stream].append(data, n);
  size_t start = 0;
  for (size_t nl; (nl = r.partial[stream].find('\n', start)) != std::string::npos; start = nl + 1) {
    os << "[rank " << r.index << "] " << r.partial[stream].substr(start, nl - start) << '\n';
  }
  r.partial[stream].erase(0, start);
  os.flush();
}

void close_stream(Rank& r, int stream) {
  if (!r.partial[stream].empty()) forward_lines(r, stream, "\n", 1);
  ::close(r.fds[stream]);
  r.fds[stream] = -1;
}

Rank start_rank(const LaunchOptions& o, const std::string& exe, int64_t index, int port) {
  int out[2], err[2];
  if (::pipe(out) != 0 || ::pipe(err) != 0) {
    throw DataError(std::string("liondg launch: cannot create pipes: ") + std::strerror(errno));
  }
  std::vector<std::string> env{"RANK=" + std::to_string(index),
                               "LOCAL_RANK=" + std::to_string(index),
                               "WORLD_SIZE=" + std::to_string(o.nproc),
                               "LOCAL_WORLD_SIZE=" + std::to_string(o.nproc),
                               "MASTER_ADDR=" + o.master_addr,
                               "MASTER_PORT=" + std::to_string(port)};
  std::vector<std::string> args{exe};
  args.insert(args.end(), o.command.begin(), o.command.end());
  const pid_t pid = ::fork();
  if (pid < 0) throw DataError(std::string("liondg launch: fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    // Child: die with the launcher, write into the pipes, become `liondg ARGS...`.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(err[1], STDERR_FILENO);
    for (int fd : {out[0], out[1], err[0], err[1]}) ::close(fd);
    for (auto& e : env) ::putenv(e.data());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(exe.c_str(), argv.data());
    std::fprintf(stderr, "liondg launch: cannot run %s: %s\n", exe.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  ::close(out[1]);
  ::close(err[1]);
  Rank r;
  r.index = index;
  r.pid = pid;
  r.fds[0] = out[0];
  r.fds[1] = err[0];
  return r;
}

void signal_running(std::vector<Rank>& ranks, int sig) {
  for (auto& r : ranks) {
    if (r.running) ::kill(r.pid, sig);
  }
}

int run_ranks(const LaunchOptions& o) {
  TORCH_CHECK_VALUE(!o.command.empty(), "liondg launch: no command given; usage: liondg launch --nproc N -- train ...");
  TORCH_CHECK_VALUE(o.command.front() != "launch", "liondg launch: the command cannot be 'launch' itself");
  const std::string exe = self_executable();
  const int port = o.master_port > 0 ? static_cast<int>(o.master_port) : free_loopback_port();
  struct sigaction sa {};
  sa.sa_handler = remember_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  std::cerr << "liondg launch: " << o.nproc << " ranks, MASTER_ADDR=" << o.master_addr << " MASTER_PORT=" << port
            << "\n";

  std::vector<Rank> ranks;
  for (int64_t i = 0; i < o.nproc; ++i) ranks.push_back(start_rank(o, exe, i, port));

  int first_failure = -1;  // index of the first rank that failed
  bool stopping = false;
  Clock::time_point kill_at{};
  char buf[65536];
  for (;;) {
    // Output of every rank, as it comes.
    std::vector<pollfd> pfds;
    std::vector<std::pair<size_t, int>> owner;
    for (size_t i = 0; i < ranks.size(); ++i) {
      for (int s = 0; s < 2; ++s) {
        if (ranks[i].fds[s] >= 0) {
          pfds.push_back({ranks[i].fds[s], POLLIN, 0});
          owner.emplace_back(i, s);
        }
      }
    }
    if (!pfds.empty() && ::poll(pfds.data(), pfds.size(), kPollMillis) > 0) {
      for (size_t k = 0; k < pfds.size(); ++k) {
        if ((pfds[k].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        Rank& r = ranks[owner[k].first];
        const ssize_t n = ::read(pfds[k].fd, buf, sizeof(buf));
        if (n > 0) {
          forward_lines(r, owner[k].second, buf, static_cast<size_t>(n));
        } else if (n == 0 || errno != EINTR) {
          close_stream(r, owner[k].second);
        }
      }
    } else if (pfds.empty()) {
      ::usleep(kPollMillis * 1000);
    }
    // Exits.
    for (auto& r : ranks) {
      if (!r.running) continue;
      int wstatus = 0;
      if (::waitpid(r.pid, &wstatus, WNOHANG) != r.pid) continue;
      r.running = false;
      if (WIFEXITED(wstatus)) {
        r.exit_code = WEXITSTATUS(wstatus);
        r.how = "exited with status " + std::to_string(r.exit_code);
      } else if (WIFSIGNALED(wstatus)) {
        r.exit_code = 128 + WTERMSIG(wstatus);
        r.how = "was killed by signal " + std::to_string(WTERMSIG(wstatus)) + " (" + strsignal(WTERMSIG(wstatus)) + ")";
      }
      if (r.exit_code != 0 && first_failure < 0 && !stopping) {
        first_failure = static_cast<int>(r.index);
        std::cerr << "liondg launch: rank " << r.index << " (pid " << r.pid << ") " << r.how
                  << "; stopping the other ranks\n";
        stopping = true;
        signal_running(ranks, SIGTERM);
        kill_at = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o.grace_seconds * 1000));
      }
    }
    if (g_forward_signal != 0 && !stopping) {
      std::cerr << "liondg launch: received signal " << g_forward_signal << "; stopping the ranks\n";
      stopping = true;
      signal_running(ranks, g_forward_signal);
      kill_at = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o.grace_seconds * 1000));
    }
    if (stopping && Clock::now() >= kill_at) signal_running(ranks, SIGKILL);
    bool done = true;
    for (const auto& r : ranks) done = done && !r.running && r.fds[0] < 0 && r.fds[1] < 0;
    if (done) break;
  }

  if (first_failure >= 0) {
    const Rank& r = ranks[static_cast<size_t>(first_failure)];
    std::cerr << "liondg launch: failed: rank " << r.index << " " << r.how << " first\n";
    return r.exit_code;
  }
  for (const auto& r : ranks) {
    if (r.exit_code != 0) return r.exit_code;  // stopped by a forwarded signal
  }
  return g_forward_signal != 0 ? 128 + g_forward_signal : kExitOk;
}

}  // namespace

void add_launch_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "launch",
      "Start N local ranks of a data-parallel command, like torchrun --standalone: liondg launch --nproc 2 -- train ...");
  auto o = std::make_shared<LaunchOptions>();
  cmd->add_option("--nproc", o->nproc, "Ranks to start on this machine")
      ->required()
      ->check(CLI::Range(int64_t{1}, int64_t{1024}));
  cmd->add_option("--master-addr", o->master_addr, "Address of rank 0's store")->capture_default_str();
  cmd->add_option("--master-port", o->master_port, "Port of rank 0's store (0 = a free port)")
      ->check(CLI::Range(int64_t{0}, int64_t{65535}))
      ->capture_default_str();
  cmd->add_option("--grace", o->grace_seconds, "Seconds between SIGTERM and SIGKILL when stopping ranks")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  cmd->add_option("command", o->command, "The liondg command each rank runs, after --");
  cmd->callback([o, &status]() { status = run_ranks(*o); });
}

}  // namespace liondg::cli
