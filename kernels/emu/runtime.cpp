// The emulator's runtime: runs one block of a kernel with every CUDA thread as a fiber.
//
// A block runs on the calling OS thread (the Rust side runs blocks in parallel on rayon).
// Fibers run greedily, each until it blocks at a barrier or ends, in an order the schedule
// picks; so a thread that reads shared memory before a missing `__syncthreads()` reads what
// its neighbours have not written yet. Barriers are counted exactly: a `__syncthreads()` that
// not every thread of the block reaches, or a warp function whose mask names a lane that does
// not arrive, is an error naming the kernel (a GPU would hang or compute garbage), found
// deterministically when no fiber can run. Warp-wide instructions follow the PTX ISA's
// definitions (shfl.sync, mma.sync.m16n8k16, ldmatrix.x4, cp.async + wait_group).
#include "shim.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define TF_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TF_EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define TF_EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TF_EMU_TSAN 1
#endif
#endif

#ifdef TF_EMU_ASAN
extern "C" void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
extern "C" void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
#endif
#ifdef TF_EMU_TSAN
extern "C" void* __tsan_get_current_fiber(void);
extern "C" void* __tsan_create_fiber(unsigned flags);
extern "C" void __tsan_destroy_fiber(void* fiber);
extern "C" void __tsan_switch_to_fiber(void* fiber, unsigned flags);
#endif

/// How a launch is scheduled (mirrors `EmuOptions` in src/backend/cuda/emu.rs).
struct TfEmuOptions {
    unsigned order;            // 0: threads in order, 1: reversed, 2: seeded random each pass
    unsigned cp_async_at_wait; // 0: cp.async copies when issued, 1: only at its wait_group
    unsigned long long seed;
    unsigned long long shared_bytes; // dynamic shared memory of each block
};

namespace {

// A fiber switch saves only what the ABI says a call preserves. On x86-64 that is a few
// registers, switched by hand: glibc's swapcontext also saves the signal mask, a system call
// per switch that made emulated kernels several times slower. Elsewhere, ucontext.
#if defined(__x86_64__)
struct Context {
    void* sp;
};
extern "C" void tf_emu_switch(void** save_sp, void* to_sp);
asm(R"(
    .text
    .globl tf_emu_switch
    .hidden tf_emu_switch
    .type tf_emu_switch,@function
tf_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size tf_emu_switch,.-tf_emu_switch
)");
void switch_context(Context* save, Context* to) { tf_emu_switch(&save->sp, to->sp); }
// A new fiber's stack looks as if it had switched away just before calling `start`: the
// control words, six saved registers, then `start` as the return address, 16-byte aligned.
void make_context(Context* c, char* stack, size_t size, void (*start)()) {
    unsigned long long* top = (unsigned long long*)(((unsigned long long)(stack + size)) & ~15ull);
    top[-2] = (unsigned long long)start;
    for (int i = 3; i <= 8; ++i) top[-i] = 0;
    unsigned ctl[2];
    asm volatile("stmxcsr %0" : "=m"(ctl[0]));
    asm volatile("fnstcw %0" : "=m"(ctl[1]));
    memcpy(&top[-9], ctl, 8);
    c->sp = &top[-9];
}
#else
struct Context {
    ucontext_t uc;
};
void switch_context(Context* save, Context* to) { swapcontext(&save->uc, &to->uc); }
void make_context(Context* c, char* stack, size_t size, void (*start)()) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, start, 0);
}
#endif

enum State { RUNNABLE, WAIT_BLOCK, WAIT_WARP, DONE };

struct CpOp {
    void* dst;
    const void* src;
    int full;
    long group;  // -1 until committed
};

struct Fiber {
    Context ctx;
    char* stack;
    size_t stack_size;
    tf_emu_uint3 tid;
    unsigned lane, warp;
    State state;
    unsigned wait_mask;
    std::vector<CpOp> cp;
    long committed;
#ifdef TF_EMU_TSAN
    void* tsan;
#endif
};

struct Warp {
    unsigned arrived;
    unsigned exists;  // lanes that exist (a partial last warp has fewer)
    alignas(16) unsigned char slot[32][32];
};

struct Block {
    tf_emu_entry entry;
    void** params;
    const char* kernel;
    const TfEmuOptions* opts;
    tf_emu_uint3 bidx, bdim, gdim;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    unsigned n, done, arrived;
    Context sched;
    bool failed;
    std::string error;
    // Dynamic shared memory, 16-byte aligned as on the GPU, poisoned like fresh allocations.
    std::vector<float4> dyn_shared;
#ifdef TF_EMU_ASAN
    void* sched_fake;
    const void* sched_bottom;
    size_t sched_size;
#endif
#ifdef TF_EMU_TSAN
    void* sched_tsan;
#endif
};

thread_local Block* cur_block = nullptr;
thread_local Fiber* cur_fiber = nullptr;

// Fiber stacks, kept per OS thread: 256 KiB each with a guard page below, so a kernel with a
// large local array faults instead of corrupting a neighbour.
constexpr size_t STACK = 256 * 1024;
constexpr size_t GUARD = 4096;
thread_local std::vector<char*> stacks;

char* stack_at(size_t i) {
    while (stacks.size() <= i) {
        void* m = mmap(nullptr, STACK + GUARD, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (m == MAP_FAILED) return nullptr;
        mprotect(m, GUARD, PROT_NONE);
        stacks.push_back((char*)m + GUARD);
    }
    return stacks[i];
}

void fail(Block* b, const char* fmt, ...) {
    if (b->failed) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    b->failed = true;
    b->error = buf;
}

// Switches from the running fiber back to the block's scheduler.
void to_sched() {
    Block* b = cur_block;
    Fiber* f = cur_fiber;
#ifdef TF_EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(f->state == DONE ? nullptr : &fake, b->sched_bottom, b->sched_size);
#endif
#ifdef TF_EMU_TSAN
    __tsan_switch_to_fiber(b->sched_tsan, 0);
#endif
    switch_context(&f->ctx, &b->sched);
#ifdef TF_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void run_fiber(Block* b, Fiber* f) {
    cur_fiber = f;
#ifdef TF_EMU_ASAN
    __sanitizer_start_switch_fiber(&b->sched_fake, f->stack, f->stack_size);
#endif
#ifdef TF_EMU_TSAN
    __tsan_switch_to_fiber(f->tsan, 0);
#endif
    switch_context(&b->sched, &f->ctx);
#ifdef TF_EMU_ASAN
    __sanitizer_finish_switch_fiber(b->sched_fake, &b->sched_bottom, &b->sched_size);
#endif
    cur_fiber = nullptr;
}

[[noreturn]] void fiber_main() {
#ifdef TF_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &cur_block->sched_bottom, &cur_block->sched_size);
#endif
    Block* b = cur_block;
    b->entry(b->params);
    // The fiber may have been resumed after its block changed (never: a block ends only when
    // every fiber is done), so `b` is still this fiber's block.
    cur_fiber->state = DONE;
    cur_fiber->cp.clear();
    b->done++;
    to_sched();
    abort();  // a finished fiber is never resumed
}

void complete_cp(CpOp& op) {
    if (op.full) memcpy(op.dst, op.src, 16);
    else memset(op.dst, 0, 16);
}

// Waits until every lane of `mask` in this warp arrived here; the last one releases them.
void warp_barrier(unsigned mask) {
    Block* b = cur_block;
    Fiber* f = cur_fiber;
    Warp& w = b->warps[f->warp];
    const unsigned bit = 1u << f->lane;
    if (!(mask & bit)) {
        fail(b, "kernel %s: lane %u calls a warp function with mask 0x%08x that excludes it", b->kernel, f->lane, mask);
        tf_emu_trap(nullptr);
    }
    if (mask & ~w.exists) {
        fail(b, "kernel %s: warp function with mask 0x%08x names lanes past the block's last thread", b->kernel, mask);
        tf_emu_trap(nullptr);
    }
    w.arrived |= bit;
    if ((w.arrived & mask) == mask) {
        w.arrived &= ~mask;
        for (unsigned l = 0; l < 32; ++l) {
            if (!((mask >> l) & 1u)) continue;
            Fiber& o = b->fibers[f->warp * 32 + l];
            if (o.state == WAIT_WARP) o.state = RUNNABLE;
        }
        return;
    }
    f->state = WAIT_WARP;
    f->wait_mask = mask;
    to_sched();
}

Warp& my_warp() { return cur_block->warps[cur_fiber->warp]; }

unsigned short ld16(const void* p) {
    unsigned short v;
    memcpy(&v, p, 2);
    return v;
}

float half_to_float(unsigned short h, bool bf16) {
    if (bf16) return __uint_as_float((unsigned)h << 16);
    _Float16 x;
    memcpy(&x, &h, 2);
    return (float)x;
}

}  // namespace

extern "C" {

const tf_emu_uint3* tf_emu_thread_idx(void) { return &cur_fiber->tid; }
const tf_emu_uint3* tf_emu_block_idx(void) { return &cur_block->bidx; }
const tf_emu_uint3* tf_emu_block_dim(void) { return &cur_block->bdim; }
const tf_emu_uint3* tf_emu_grid_dim(void) { return &cur_block->gdim; }
unsigned tf_emu_lane(void) { return cur_fiber->lane; }

void* tf_emu_dynamic_shared(void) {
    // On a GPU a launch without dynamic shared memory faults at the first access; here the
    // declaration itself is the error, so the message names the kernel.
    if (cur_block->dyn_shared.empty()) tf_emu_trap("TF_DYNAMIC_SHARED in a launch with no dynamic shared memory");
    return cur_block->dyn_shared.data();
}

void tf_emu_trap(const char* why) {
    Block* b = cur_block;
    Fiber* f = cur_fiber;
    if (why)
        fail(b, "kernel %s trapped (%s) in block (%u,%u,%u) thread (%u,%u,%u)", b->kernel, why, b->bidx.x, b->bidx.y,
             b->bidx.z, f->tid.x, f->tid.y, f->tid.z);
    f->state = DONE;
    b->done++;
    to_sched();
    abort();
}

void tf_emu_syncthreads(void) {
    Block* b = cur_block;
    if (++b->arrived == b->n) {
        b->arrived = 0;
        for (Fiber& o : b->fibers)
            if (o.state == WAIT_BLOCK) o.state = RUNNABLE;
        return;
    }
    cur_fiber->state = WAIT_BLOCK;
    to_sched();
}

void tf_emu_syncwarp(unsigned mask) { warp_barrier(mask); }

void tf_emu_warp_exchange(unsigned mask, const void* value, unsigned bytes, int src, void* out) {
    Warp& w = my_warp();
    memcpy(w.slot[cur_fiber->lane], value, bytes);
    warp_barrier(mask);
    if (src >= 0) {
        if (src > 31 || !((mask >> src) & 1u)) {
            // PTX: reading a lane outside the mask is undefined; make it loud.
            fail(cur_block, "kernel %s: lane %u shuffles from lane %d, which is not in mask 0x%08x", cur_block->kernel,
                 cur_fiber->lane, src, mask);
            tf_emu_trap(nullptr);
        }
        memcpy(out, w.slot[src], bytes);
    }
    warp_barrier(mask);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, full warp. With
// g = lane / 4 and t = lane % 4 (PTX ISA, "Matrix Fragments for mma.m16n8k16"):
//   A: a[0] = (row g, k 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B: b0 = (k 2t..2t+1, col g), b1 = (k 2t+8..2t+9, col g)
//   C/D: d[i] = (row g + 8 (i / 2), col 2t + i % 2)
// each register's lower half holding the lower k.
void tf_emu_mma16816(float* d, const unsigned* a, unsigned b0, unsigned b1, int bf16) {
    Warp& w = my_warp();
    unsigned mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
    memcpy(w.slot[cur_fiber->lane], mine, sizeof mine);
    warp_barrier(0xffffffffu);
    auto elem = [&](unsigned lane, int reg, int half) {
        unsigned r;
        memcpy(&r, &w.slot[lane][reg * 4], 4);
        return half_to_float((unsigned short)(half ? r >> 16 : r & 0xffff), bf16 != 0);
    };
    const unsigned g = cur_fiber->lane >> 2, t = cur_fiber->lane & 3;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
        float acc = d[i];
        for (unsigned k = 0; k < 16; ++k) {
            const float av = elem(4 * (row & 7) + ((k & 7) >> 1), (int)((row >> 3) + 2 * (k >> 3)), (int)(k & 1));
            const float bv = elem(4 * col + ((k & 7) >> 1), (int)(4 + (k >> 3)), (int)(k & 1));
            acc = fmaf(av, bv, acc);
        }
        out[i] = acc;
    }
    warp_barrier(0xffffffffu);
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16, full warp: lanes 8i..8i+7 give the row
// addresses of matrix i; lane l receives in r[i] matrix i's elements (row l/4, cols 2(l%4),
// 2(l%4)+1), or with .trans (rows 2(l%4), 2(l%4)+1 of col l/4).
void tf_emu_ldmatrix_x4(unsigned* r, const void* row, int trans) {
    Warp& w = my_warp();
    if (((unsigned long long)row & 15) != 0) {
        fail(cur_block, "kernel %s: ldmatrix row address %p is not 16-byte aligned", cur_block->kernel, row);
        tf_emu_trap(nullptr);
    }
    memcpy(w.slot[cur_fiber->lane], &row, sizeof row);
    warp_barrier(0xffffffffu);
    const unsigned l = cur_fiber->lane;
    unsigned out[4];
    for (unsigned i = 0; i < 4; ++i) {
        auto at = [&](unsigned rr, unsigned cc) {
            const unsigned char* p;
            memcpy(&p, w.slot[8 * i + rr], sizeof p);
            return (unsigned)ld16(p + 2 * cc);
        };
        if (!trans) out[i] = at(l / 4, 2 * (l % 4)) | (at(l / 4, 2 * (l % 4) + 1) << 16);
        else out[i] = at(2 * (l % 4), l / 4) | (at(2 * (l % 4) + 1, l / 4) << 16);
    }
    warp_barrier(0xffffffffu);
    for (int i = 0; i < 4; ++i) r[i] = out[i];
}

// cp.async.cg.shared.global [dst], [src], 16, src-size (16 or 0: zero fill).
void tf_emu_cp_async16(void* dst, const void* src, int full) {
    if (((unsigned long long)dst & 15) || (full && ((unsigned long long)src & 15))) {
        fail(cur_block, "kernel %s: cp.async of 16 bytes between unaligned addresses %p <- %p", cur_block->kernel, dst,
             src);
        tf_emu_trap(nullptr);
    }
    CpOp op = {dst, src, full, -1};
    if (!cur_block->opts->cp_async_at_wait) complete_cp(op);
    else cur_fiber->cp.push_back(op);
}

void tf_emu_cp_async_commit(void) {
    Fiber* f = cur_fiber;
    ++f->committed;
    for (CpOp& op : f->cp)
        if (op.group < 0) op.group = f->committed;
}

// cp.async.wait_group N: every committed group but the newest N has landed.
void tf_emu_cp_async_wait(int pending) {
    Fiber* f = cur_fiber;
    std::vector<CpOp> keep;
    for (CpOp& op : f->cp) {
        if (op.group >= 0 && op.group <= f->committed - pending) complete_cp(op);
        else keep.push_back(op);
    }
    f->cp.swap(keep);
}

// Runs block `linear` (x fastest) of a launch to its end. Returns 0, or 1 with a message in
// `err` (a trap, a barrier not every thread reaches, a bad warp-function call).
int tf_emu_run_block(tf_emu_entry entry, void** params, const char* kernel, const unsigned* grid,
                     const unsigned* block, unsigned long long linear, const TfEmuOptions* opts, char* err,
                     size_t errlen) {
    Block b;
    b.entry = entry;
    b.params = params;
    b.kernel = kernel;
    b.opts = opts;
    b.gdim = {grid[0], grid[1], grid[2]};
    b.bdim = {block[0], block[1], block[2]};
    b.bidx = {(unsigned)(linear % grid[0]), (unsigned)(linear / grid[0] % grid[1]),
              (unsigned)(linear / grid[0] / grid[1])};
    b.n = block[0] * block[1] * block[2];
    b.done = 0;
    b.arrived = 0;
    b.failed = false;
    b.dyn_shared.assign((opts->shared_bytes + 15) / 16, float4{});
    if (!b.dyn_shared.empty()) memset(b.dyn_shared.data(), 0xFF, b.dyn_shared.size() * sizeof(float4));
    b.fibers.resize(b.n);
    b.warps.assign((b.n + 31) / 32, Warp{});
#ifdef TF_EMU_ASAN
    b.sched_fake = nullptr;
    b.sched_bottom = nullptr;
    b.sched_size = 0;
#endif
#ifdef TF_EMU_TSAN
    b.sched_tsan = __tsan_get_current_fiber();
#endif
    Block* outer_block = cur_block;
    cur_block = &b;
    for (unsigned i = 0; i < b.n; ++i) {
        Fiber& f = b.fibers[i];
        f.tid = {i % block[0], i / block[0] % block[1], i / block[0] / block[1]};
        f.lane = i % 32;
        f.warp = i / 32;
        f.state = RUNNABLE;
        f.committed = 0;
        b.warps[f.warp].exists |= 1u << f.lane;
        f.stack = stack_at(i);
        f.stack_size = STACK;
        if (!f.stack) {
            snprintf(err, errlen, "kernel %s: no memory for %u fiber stacks", kernel, b.n);
            cur_block = outer_block;
            return 1;
        }
        make_context(&f.ctx, f.stack, STACK, fiber_main);
#ifdef TF_EMU_TSAN
        f.tsan = __tsan_create_fiber(0);
#endif
    }
    std::vector<unsigned> order(b.n);
    for (unsigned i = 0; i < b.n; ++i) order[i] = opts->order == 1 ? b.n - 1 - i : i;
    unsigned long long rng = opts->seed ^ (linear * 0x9E3779B97F4A7C15ull) ^ 0xD1B54A32D192ED03ull;
    auto next = [&]() {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        return rng * 0x2545F4914F6CDD1Dull;
    };
    while (b.done < b.n && !b.failed) {
        if (opts->order == 2)
            for (unsigned i = b.n; i > 1; --i) std::swap(order[i - 1], order[next() % i]);
        bool ran = false;
        for (unsigned i : order) {
            Fiber& f = b.fibers[i];
            if (f.state != RUNNABLE) continue;
            run_fiber(&b, &f);
            ran = true;
            if (b.failed) break;
        }
        if (!ran && !b.failed) {
            unsigned at_block = 0, at_warp = 0;
            for (Fiber& f : b.fibers) {
                at_block += f.state == WAIT_BLOCK;
                at_warp += f.state == WAIT_WARP;
            }
            if (at_block)
                fail(&b,
                     "kernel %s block (%u,%u,%u): __syncthreads() reached by %u of %u threads (%u exited, %u wait in a "
                     "warp function); a GPU would hang here",
                     kernel, b.bidx.x, b.bidx.y, b.bidx.z, at_block, b.n, b.done, at_warp);
            else
                fail(&b,
                     "kernel %s block (%u,%u,%u): %u threads wait in a warp function for lanes that exited or wait "
                     "elsewhere",
                     kernel, b.bidx.x, b.bidx.y, b.bidx.z, at_warp);
        }
    }
#ifdef TF_EMU_TSAN
    for (Fiber& f : b.fibers) __tsan_destroy_fiber(f.tsan);
#endif
    cur_block = outer_block;
    if (b.failed) {
        snprintf(err, errlen, "%s", b.error.c_str());
        return 1;
    }
    return 0;
}

}  // extern "C"
