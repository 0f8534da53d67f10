// The runtime of the CUDA emulation (csrc/emu/cuda_emu.h): fibers for the threads of a block, barriers, warp
// exchanges, the shuffled multi-threaded block scheduler and the sticky error. Test-only (build-emu/).
#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace fastcka_emu {

__thread uint3 thread_idx, block_idx;
__thread dim3 block_dim, grid_dim;

// --- the sticky error -----------------------------------------------------------------------------------------------
namespace {
std::mutex g_error_mutex;
cudaError_t g_error = cudaSuccess;
std::string g_error_text;
thread_local std::string t_error_copy;
}  // namespace

void set_error(cudaError_t e, const char* what) {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  if (g_error != cudaSuccess) return;  // keep the first
  g_error = e;
  g_error_text = what;
}

cudaError_t get_last_error() {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  const cudaError_t e = g_error;
  t_error_copy = g_error_text;
  g_error = cudaSuccess;
  return e;
}

const char* error_string(cudaError_t e) {
  if (e == cudaSuccess) return "no error";
  if (!t_error_copy.empty()) return t_error_copy.c_str();
  return e == cudaErrorInvalidConfiguration ? "invalid configuration argument" : "emulated kernel fault";
}

// --- fibers ---------------------------------------------------------------------------------------------------------
// fastcka_emu_swap(&save, load): saves the callee-saved registers and the FP control words on the current stack,
// stores its pointer in *save, switches to `load` and restores from there. A new fiber's stack is laid out so that
// the first switch to it "returns" into fastcka_emu_entry, which calls r13(r12).
extern "C" void fastcka_emu_swap(void** save, void* load);
extern "C" void fastcka_emu_entry();
#if defined(__x86_64__)
asm(R"(
  .text
  .p2align 4
  .globl fastcka_emu_swap
  .hidden fastcka_emu_swap
  .type fastcka_emu_swap,@function
fastcka_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastcka_emu_swap, .-fastcka_emu_swap

  .p2align 4
  .globl fastcka_emu_entry
  .hidden fastcka_emu_entry
  .type fastcka_emu_entry,@function
fastcka_emu_entry:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size fastcka_emu_entry, .-fastcka_emu_entry
)");
#else
#error "the CUDA emulation's fiber switch is written for x86-64"
#endif

namespace {

constexpr size_t kStackBytes = 64 * 1024;  // per fiber; the lowest page is a guard page
constexpr unsigned kMaxThreads = 1024;

enum Wait : int { kRunning = 0, kBlockBarrier = 1, kWarpBarrier = 2 };

struct Fiber {
  void* sp = nullptr;
  uint3 idx{0, 0, 0};
  unsigned tid = 0;
  int wait = kRunning;
  unsigned wait_gen = 0;
  bool done = false;
};

struct Warp {
  unsigned present = 0, exited = 0;  // lanes that exist in this block / have returned
  unsigned arrived = 0, gen = 0;
  uint64_t slot[32] = {};
};

struct Block;

// Per OS thread: the fiber stacks (allocated once, reused by every block this thread runs) and the current block.
struct Pool {
  char* stacks = nullptr;
  size_t page = 4096;
  Fiber fibers[kMaxThreads];
  Warp warps[kMaxThreads / 32];
  ~Pool() {
    if (stacks) munmap(stacks, kStackBytes * kMaxThreads);
  }
  char* stack_top(unsigned t) {
    if (!stacks) {
      page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      void* m = mmap(nullptr, kStackBytes * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      if (m == MAP_FAILED) {
        std::fprintf(stderr, "fastcka_emu: cannot map fiber stacks\n");
        std::abort();
      }
      stacks = static_cast<char*>(m);
      for (unsigned i = 0; i < kMaxThreads; ++i) mprotect(stacks + i * kStackBytes, page, PROT_NONE);
    }
    return stacks + (t + 1) * kStackBytes;
  }
};

struct Block {
  Pool* pool = nullptr;
  unsigned nthreads = 0;
  unsigned arrived = 0, gen = 0, exited = 0;
  void* sched_sp = nullptr;
  Fiber* cur = nullptr;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  bool failed = false;
};

thread_local Block* t_block = nullptr;

void fault(const char* what) {
  if (t_block) t_block->failed = true;
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%s (block (%u,%u,%u), thread (%u,%u,%u))", what, block_idx.x, block_idx.y,
                block_idx.z, thread_idx.x, thread_idx.y, thread_idx.z);
  set_error(cudaErrorLaunchFailure, buf);
}

inline void yield_to_scheduler() {
  Block& b = *t_block;
  fastcka_emu_swap(&b.cur->sp, b.sched_sp);
}

void fiber_main(void* arg) {
  Fiber& f = *static_cast<Fiber*>(arg);
  Block& b = *t_block;
  b.body(b.ctx);
  f.done = true;
  ++b.exited;
  // exited threads no longer count at barriers (as on the hardware)
  if (b.arrived > 0 && b.arrived + b.exited >= b.nthreads) {
    b.arrived = 0;
    ++b.gen;
  }
  b.pool->warps[f.tid >> 5].exited |= 1u << (f.tid & 31);
  fastcka_emu_swap(&f.sp, b.sched_sp);
  std::abort();  // a finished fiber is never resumed
}

void init_fiber(Pool& pool, Fiber& f) {
  auto* sp = reinterpret_cast<uint64_t*>(pool.stack_top(f.tid));  // 16-byte aligned
  *--sp = reinterpret_cast<uint64_t>(&fastcka_emu_entry);          // "returned" into with rsp ≡ 0 (mod 16)
  *--sp = 0;                                                      // rbp
  *--sp = 0;                                                      // rbx
  *--sp = reinterpret_cast<uint64_t>(&f);                         // r12: the argument
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);                // r13: the function
  *--sp = 0;                                                      // r14
  *--sp = 0;                                                      // r15
  sp -= 2;                                                        // x87 control word at [0], mxcsr at [8]
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  std::memcpy(reinterpret_cast<char*>(sp), &fpucw, sizeof(fpucw));
  std::memcpy(reinterpret_cast<char*>(sp) + 8, &mxcsr, sizeof(mxcsr));
  f.sp = sp;
  f.wait = kRunning;
  f.done = false;
}

// Runs one block to completion on this OS thread.
void run_block(Pool& pool, dim3 block, void (*body)(void*), void* ctx) {
  Block b;
  b.pool = &pool;
  b.nthreads = block.x * block.y * block.z;
  b.body = body;
  b.ctx = ctx;
  t_block = &b;
  const unsigned nwarps = (b.nthreads + 31) / 32;
  for (unsigned w = 0; w < nwarps; ++w) {
    Warp& wp = pool.warps[w];
    const unsigned lanes = std::min(32u, b.nthreads - 32 * w);
    wp.present = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    wp.exited = 0;
    wp.arrived = 0;
    wp.gen = 0;
  }
  for (unsigned t = 0; t < b.nthreads; ++t) {
    Fiber& f = pool.fibers[t];
    f.tid = t;
    f.idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    init_fiber(pool, f);
  }
  unsigned finished = 0;
  while (finished < b.nthreads && !b.failed) {
    bool progress = false;
    finished = 0;
    for (unsigned t = 0; t < b.nthreads; ++t) {
      Fiber& f = pool.fibers[t];
      if (f.done) {
        ++finished;
        continue;
      }
      if (f.wait == kBlockBarrier && f.wait_gen == b.gen) continue;
      if (f.wait == kWarpBarrier && f.wait_gen == pool.warps[t >> 5].gen) continue;
      f.wait = kRunning;
      b.cur = &f;
      thread_idx = f.idx;
      fastcka_emu_swap(&b.sched_sp, f.sp);
      progress = true;
      if (f.done) ++finished;
      if (b.failed) break;
    }
    if (!progress && finished < b.nthreads) {
      fault("deadlock: threads wait at a barrier or warp intrinsic that the others never reach");
      break;
    }
  }
  t_block = nullptr;
}

std::atomic<uint64_t> g_launches{0};

unsigned worker_count() {
  static const unsigned n = [] {
    if (const char* e = std::getenv("FASTCKA_EMU_WORKERS")) return std::max(1, std::atoi(e));
    return static_cast<int>(std::min(4u, std::max(2u, std::thread::hardware_concurrency())));
  }();
  return n;
}

uint64_t base_seed() {
  static const uint64_t s = [] {
    const char* e = std::getenv("FASTCKA_EMU_SEED");
    return e ? std::strtoull(e, nullptr, 10) : 0x243F6A8885A308D3ull;
  }();
  return s;
}

}  // namespace

// --- device-side entry points ---------------------------------------------------------------------------------------
void syncthreads() {
  Block& b = *t_block;
  if (++b.arrived + b.exited >= b.nthreads) {  // the last to arrive releases the others and carries on
    b.arrived = 0;
    ++b.gen;
    return;
  }
  b.cur->wait = kBlockBarrier;
  b.cur->wait_gen = b.gen;
  yield_to_scheduler();
}

namespace {
// Waits until every lane in `mask` of this thread's warp has arrived. Checks the mask the way the hardware
// requires it to be: it names this lane, and only lanes that exist and have not exited.
void warp_barrier(unsigned mask) {
  Block& b = *t_block;
  const unsigned tid = b.cur->tid, lane = tid & 31;
  Warp& w = b.pool->warps[tid >> 5];
  if (!((mask >> lane) & 1u)) fault("warp intrinsic called by a lane outside its mask");
  if (mask & ~w.present) fault("warp intrinsic's mask names lanes that do not exist (a partial warp)");
  if (mask & w.exited) fault("warp intrinsic's mask names lanes that have exited");
  if (++w.arrived >= static_cast<unsigned>(__builtin_popcount(mask))) {
    w.arrived = 0;
    ++w.gen;
    return;
  }
  b.cur->wait = kWarpBarrier;
  b.cur->wait_gen = w.gen;
  yield_to_scheduler();
}
}  // namespace

void warp_sync(unsigned mask) { warp_barrier(mask); }

uint64_t warp_exchange(unsigned mask, uint64_t bits, int src) {
  Block& b = *t_block;
  const unsigned tid = b.cur->tid;
  Warp& w = b.pool->warps[tid >> 5];
  w.slot[tid & 31] = bits;
  warp_barrier(mask);
  // a source lane outside the mask gives an undefined value on the hardware: here a NaN pattern (as a double and,
  // in its low half, as a float) that a reduction using it cannot hide
  const uint64_t out = (src < 0 || src > 31 || !((mask >> src) & 1u)) ? 0xFFF4DEAD7FA0DEADull : w.slot[src];
  warp_barrier(mask);
  return out;
}

unsigned warp_ballot(unsigned mask, bool pred) {
  Block& b = *t_block;
  const unsigned tid = b.cur->tid;
  Warp& w = b.pool->warps[tid >> 5];
  w.slot[tid & 31] = pred ? 1 : 0;
  warp_barrier(mask);
  unsigned out = 0;
  for (int l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && w.slot[l]) out |= 1u << l;
  warp_barrier(mask);
  return out;
}

// --- the grid -------------------------------------------------------------------------------------------------------
namespace {
void trace(const char* name) {
  static const char* path = std::getenv("FASTCKA_EMU_TRACE");
  if (!path) return;
  static std::mutex m;
  static std::set<std::string> seen;
  std::lock_guard<std::mutex> lock(m);
  if (!seen.insert(name).second) return;
  if (FILE* f = std::fopen(path, "a")) {
    std::fprintf(f, "%s\n", name);
    std::fclose(f);
  }
}
}  // namespace

void run_grid(const char* name, dim3 grid, dim3 block, size_t shmem, void (*body)(void*), void* ctx) {
  trace(name);
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 ||
      threads == 0 || threads > kMaxThreads || block.z > 64 || shmem > 48 * 1024) {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "invalid configuration argument: grid (%u,%u,%u), block (%u,%u,%u), shmem %zu",
                  grid.x, grid.y, grid.z, block.x, block.y, block.z, shmem);
    set_error(cudaErrorInvalidConfiguration, buf);
    return;
  }
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  if (nblocks > (uint64_t(1) << 24)) {
    set_error(cudaErrorLaunchFailure, "fastcka_emu: grid too large to emulate (> 2^24 blocks)");
    return;
  }
  // a shuffled block order, different for every launch (reproducible from FASTCKA_EMU_SEED)
  std::vector<uint32_t> order(nblocks);
  std::iota(order.begin(), order.end(), 0u);
  std::mt19937_64 rng(base_seed() ^ (0x9E3779B97F4A7C15ull * ++g_launches));
  std::shuffle(order.begin(), order.end(), rng);
  std::atomic<uint64_t> next{0};
  auto work = [&]() {
    static thread_local std::unique_ptr<Pool> pool(new Pool());  // per OS thread: stacks reused by its blocks
    grid_dim = grid;
    block_dim = block;
    for (uint64_t i = next++; i < nblocks; i = next++) {
      const uint32_t id = order[i];
      block_idx = uint3{id % grid.x, (id / grid.x) % grid.y, id / (grid.x * grid.y)};
      run_block(*pool, block, body, ctx);
    }
  };
  const unsigned workers = static_cast<unsigned>(std::min<uint64_t>(worker_count(), nblocks));
  std::vector<std::thread> helpers;
  for (unsigned w = 1; w < workers; ++w) helpers.emplace_back(work);
  work();
  for (auto& h : helpers) h.join();
}

}  // namespace fastcka_emu
