// Whether this process is a child forked from one that loaded the CPU kernels (declared in dtype.h).
//
// GNU OpenMP's thread pool does not survive fork(): the child inherits the pool's bookkeeping but
// not its threads, and its first parallel region waits forever for them. PyTorch's own parallel ops
// hang there too (its DataLoader workers call torch.set_num_threads(1) first), but the CPU kernels
// split calls smaller than PyTorch does, so a forked child that only ran small PyTorch ops could
// still reach a region here. The handler, registered when the module loads, makes such a child run
// every kernel on its calling thread instead.
#include <pthread.h>

#include <atomic>

#include "dtype.h"

namespace fastvae::cpu {

namespace {

std::atomic<bool> forked{false};

void on_fork_in_child() { forked.store(true, std::memory_order_relaxed); }

[[maybe_unused]] const int fork_handler = pthread_atfork(nullptr, nullptr, on_fork_in_child);

}  // namespace

bool forked_child() noexcept { return forked.load(std::memory_order_relaxed); }

}  // namespace fastvae::cpu
