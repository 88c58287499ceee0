// 2-D convolution (NHWC maps, HWIO kernels: forward, input gradient, kernel gradient) and max-pool
// (NHWC: forward, forward keeping the argmax, gradient) through oneDNN's CPU primitives, as XLA
// FFI handlers (aprn_jax/models/onednn.py builds and binds them; docs/benchmarks.md, "PyTorch
// side by side", gives the measurements that made them the CPU forms).
//
// A batch of 8+ images per thread of XLA's intra-op pool is split over that pool, one part per
// thread, each part a oneDNN call with one OpenMP thread (InParts); smaller batches run on
// oneDNN's OpenMP team. Built with APRN_ONEDNN_THREADPOOL, against jaxlib's oneDNN
// (onednn_jaxlib.cc), no batch is split: every call runs on XLA's intra-op pool as oneDNN's
// thread pool (XlaThreadPool).
//
// Every handler takes the maps in the caller's NHWC layout and the kernel in HWIO, so no layout
// copy is made of the (large) maps; oneDNN may pick a blocked layout for the (small) kernel,
// which is then reordered in a buffer of the calling thread's. The kernel stays float32 with
// bfloat16 maps: the reorder rounds it (forward, input gradient) and the kernel gradient is
// summed in float32. Primitives are created once per shape and kept; each call passes its own
// thread's scratchpad, so concurrent calls (several devices) share nothing mutable.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

#ifdef APRN_ONEDNN_THREADPOOL
#include "oneapi/dnnl/dnnl_threadpool.hpp"
#else
// libgomp's, loaded with oneDNN: the OpenMP threads each oneDNN call runs with (see Run).
extern "C" void omp_set_num_threads(int);
extern "C" int omp_get_max_threads(void);
#endif

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

#ifdef APRN_ONEDNN_THREADPOOL
// oneDNN on XLA's intra-op pool: each parallel_for runs its chunks on the calling thread and on
// the pool's threads. The caller takes chunks too and waits only for chunks another thread has
// begun, so a pool thread busy with another operation delays nothing and no core runs two
// threads of one call.
class XlaThreadPool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  explicit XlaThreadPool(ffi::ThreadPool& pool) : pool_(pool) {}
  int get_num_threads() const override { return std::max<int64_t>(1, pool_.num_threads()); }
  bool get_in_parallel() const override { return in_parallel_; }
  uint64_t get_flags() const override { return 0; }
  void parallel_for(int n, const std::function<void(int, int)>& fn) override {
    int helpers = std::min(n, get_num_threads()) - 1;
    if (in_parallel_ || helpers <= 0) {
      for (int i = 0; i < n; ++i) fn(i, n);
      return;
    }
    auto work = std::make_shared<Chunks>(n, &fn);
    for (int i = 0; i < helpers; ++i) pool_.Schedule([work] { work->Drain(); });
    work->Drain();
    std::unique_lock<std::mutex> lock(work->mutex);
    work->finished.wait(lock, [&] { return work->done == work->claimed(); });
  }

 private:
  struct Chunks {
    Chunks(int n, const std::function<void(int, int)>* fn) : n(n), fn(fn) {}
    const int n;
    const std::function<void(int, int)>* fn;  // valid while a chunk is unfinished
    std::atomic<int> next{0};
    std::mutex mutex;
    std::condition_variable finished;
    int done = 0;
    int claimed() { return std::min(next.load(), n); }
    void Drain() {
      for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
        bool outer = in_parallel_;
        in_parallel_ = true;
        (*fn)(i, n);
        in_parallel_ = outer;
        std::lock_guard<std::mutex> lock(mutex);
        ++done;
        finished.notify_all();
      }
    }
  };
  static thread_local bool in_parallel_;
  ffi::ThreadPool& pool_;
};
thread_local bool XlaThreadPool::in_parallel_ = false;
thread_local XlaThreadPool* t_pool = nullptr;  // the calling handler's (see InParts)
#else
// OpenMP's thread count when the library loads (OMP_NUM_THREADS, else the cores).
const int kOpenMpThreads = omp_get_max_threads();
#endif
// A batch is split over XLA's threads only if each part gets at least this many images.
constexpr int64_t kMinPartImages = 8;
// Whether batches are split at all (benchmarks/step_ab.py --change=onednn_split compares the
// two).
std::atomic<bool> g_split_batches{true};

enum class Kind {
  kForward, kBackwardData, kBackwardWeights, kPoolInference, kPoolTraining, kPoolBackward
};

struct Geometry {
  int64_t n, h, w, c;     // input map
  int64_t oh, ow, f;      // output map
  int64_t kh, kw;         // kernel window
  int64_t sh, sw;         // strides
  int64_t pt, pl, pb, pr; // pads; pb and pr are oneDNN's (taps past the last output unused)
  memory::data_type map_type, kernel_type;
  int threads = 1;         // OpenMP threads the primitive runs with

  auto key(Kind kind) const {
    return std::make_tuple(threads, static_cast<int>(kind), n, h, w, c, oh, ow, f, kh, kw, sh, sw,
                           pt, pl, pb, pr, static_cast<int>(map_type),
                           static_cast<int>(kernel_type));
  }
  memory::desc input(memory::data_type type) const { return {{n, c, h, w}, type, Tag::nhwc}; }
  // Bytes of one image of the input and of the output map.
  size_t input_image_bytes() const { return h * w * c * memory::data_type_size(map_type); }
  size_t output_image_bytes() const { return oh * ow * f * memory::data_type_size(map_type); }
  memory::desc output(memory::data_type type) const { return {{n, f, oh, ow}, type, Tag::nhwc}; }
  memory::desc kernel(memory::data_type type, Tag tag) const {
    return {{f, c, kh, kw}, type, tag};
  }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_lo() const { return {pt, pl}; }
  memory::dims pad_hi() const { return {pb, pr}; }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream Stream() {
#ifdef APRN_ONEDNN_THREADPOOL
  return dnnl::threadpool_interop::make_stream(Engine(), t_pool);
#else
  return dnnl::stream(Engine());
#endif
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          g.input(g.map_type), g.kernel(g.map_type, Tag::any), g.output(g.map_type),
          g.strides(), g.pad_lo(), g.pad_hi(), UserScratchpad()};
}

dnnl::pooling_forward::primitive_desc PoolDesc(const Geometry& g, dnnl::prop_kind prop) {
  return {Engine(), prop, dnnl::algorithm::pooling_max, g.input(g.map_type),
          g.output(g.map_type), g.strides(), {g.kh, g.kw}, {0, 0}, g.pad_lo(), g.pad_hi(),
          UserScratchpad()};
}

// One cached primitive: the primitive, the kernel layout (convolutions) or workspace layout
// (max-pool) it wants, and its scratchpad size.
struct Entry {
  dnnl::primitive primitive;
  memory::desc kernel_desc;
  size_t scratchpad_bytes;
};

std::shared_ptr<Entry> Lookup(const Geometry& g, Kind kind) {
  using Key = decltype(g.key(kind));
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[g.key(kind)];
  if (slot) return slot;
#ifdef APRN_ONEDNN_THREADPOOL
  dnnl_threadpool_interop_set_max_concurrency(g.threads);
#endif
  auto entry = std::make_shared<Entry>();
  if (kind == Kind::kForward) {
    auto pd = ForwardDesc(g);
    *entry = {dnnl::convolution_forward(pd), pd.weights_desc(), pd.scratchpad_desc().get_size()};
  } else if (kind == Kind::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.input(g.map_type),
        g.kernel(g.map_type, Tag::any), g.output(g.map_type), g.strides(), g.pad_lo(),
        g.pad_hi(), ForwardDesc(g), UserScratchpad());
    *entry = {dnnl::convolution_backward_data(pd), pd.weights_desc(),
              pd.scratchpad_desc().get_size()};
  } else if (kind == Kind::kPoolInference || kind == Kind::kPoolTraining) {
    auto pd = PoolDesc(g, kind == Kind::kPoolTraining ? dnnl::prop_kind::forward_training
                                                      : dnnl::prop_kind::forward_inference);
    *entry = {dnnl::pooling_forward(pd), pd.workspace_desc(), pd.scratchpad_desc().get_size()};
  } else if (kind == Kind::kPoolBackward) {
    auto hint = PoolDesc(g, dnnl::prop_kind::forward_training);
    dnnl::pooling_backward::primitive_desc pd(
        Engine(), dnnl::algorithm::pooling_max, g.input(g.map_type), g.output(g.map_type),
        g.strides(), {g.kh, g.kw}, {0, 0}, g.pad_lo(), g.pad_hi(), hint, UserScratchpad());
    *entry = {dnnl::pooling_backward(pd), pd.workspace_desc(), pd.scratchpad_desc().get_size()};
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.input(g.map_type),
        g.kernel(g.kernel_type, Tag::any), g.output(g.map_type), g.strides(), g.pad_lo(),
        g.pad_hi(), ForwardDesc(g), UserScratchpad());
    *entry = {dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(),
              pd.scratchpad_desc().get_size()};
  }
  slot = entry;
  return entry;
}

// A 64-byte aligned buffer of this thread's, kept from call to call and grown as needed:
// freeing and reallocating the (multi-megabyte) scratchpads at every call cost page faults
// in this step and made later PyTorch steps in the same process 40% slower (system time).
void* ThreadBuffer(int slot, size_t bytes) {
  struct Slot {
    void* data = nullptr;
    size_t bytes = 0;
    ~Slot() { std::free(data); }
  };
  thread_local Slot slots[3];
  Slot& s = slots[slot];
  if (bytes > s.bytes) {
    std::free(s.data);
    s.bytes = (bytes + 63) / 64 * 64;
    s.data = std::aligned_alloc(64, s.bytes);
    if (!s.data) {
      s.bytes = 0;
      throw std::bad_alloc();
    }
  }
  return s.data;
}

// Whether some kernel offset reads no pixel of the map from any output position.
bool HasPaddingOnlyTaps(const Geometry& g) {
  auto dead = [](int64_t size, int64_t out, int64_t kernel, int64_t stride, int64_t pad) {
    for (int64_t offset = 0; offset < kernel; ++offset) {
      bool reads = false;
      for (int64_t o = 0; o < out && !reads; ++o) {
        int64_t at = o * stride + offset - pad;
        reads = at >= 0 && at < size;
      }
      if (!reads) return true;
    }
    return false;
  };
  return dead(g.h, g.oh, g.kh, g.sh, g.pt) || dead(g.w, g.ow, g.kw, g.sw, g.pl);
}

// One oneDNN convolution on the maps and kernel given (a part of the batch; see Run).
void ConvPart(Kind kind, const Geometry& g, void* input, void* kernel, void* output) {
  auto entry = Lookup(g, kind);
  auto& engine = Engine();
  dnnl::stream stream = Stream();
  // The caller's kernel (or kernel gradient) in its own type: a float32 kernel for
  // bfloat16 maps is rounded to bfloat16 by the reorder into the primitive's layout.
  memory::desc user_kernel_desc = g.kernel(g.kernel_type, Tag::hwio);
  memory user_kernel(user_kernel_desc, engine, kernel);
  bool reorder = entry->kernel_desc != user_kernel_desc;
  memory op_kernel =
      reorder ? memory(entry->kernel_desc, engine,
                       ThreadBuffer(0, entry->kernel_desc.get_size()))
              : user_kernel;
  memory scratchpad({{static_cast<int64_t>(entry->scratchpad_bytes)}, memory::data_type::u8,
                     Tag::a}, engine, ThreadBuffer(1, entry->scratchpad_bytes));
  memory in(g.input(g.map_type), engine, input);
  memory out(g.output(g.map_type), engine, output);
  if (kind == Kind::kForward) {
    if (reorder) dnnl::reorder(user_kernel, op_kernel).execute(stream, user_kernel, op_kernel);
    entry->primitive.execute(stream, {{DNNL_ARG_SRC, in}, {DNNL_ARG_WEIGHTS, op_kernel},
                                      {DNNL_ARG_DST, out}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else if (kind == Kind::kBackwardData) {
    if (reorder) dnnl::reorder(user_kernel, op_kernel).execute(stream, user_kernel, op_kernel);
    entry->primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, in}, {DNNL_ARG_WEIGHTS, op_kernel},
                                      {DNNL_ARG_DIFF_DST, out},
                                      {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else {
    // Where some kernel taps land on padding alone (a stride-2 window on a 1x1 map), oneDNN
    // 3.2's kernel gradient leaves their entries as it found them, in the output or in its
    // scratchpad: start both from zeros.
    if (HasPaddingOnlyTaps(g)) {
      std::memset(op_kernel.get_data_handle(), 0, entry->kernel_desc.get_size());
      std::memset(scratchpad.get_data_handle(), 0, entry->scratchpad_bytes);
    }
    entry->primitive.execute(stream, {{DNNL_ARG_SRC, in}, {DNNL_ARG_DIFF_WEIGHTS, op_kernel},
                                      {DNNL_ARG_DIFF_DST, out},
                                      {DNNL_ARG_SCRATCHPAD, scratchpad}});
    if (reorder) dnnl::reorder(op_kernel, user_kernel).execute(stream, op_kernel, user_kernel);
  }
  stream.wait();
}

// How many parts a batch of n images is split into: one per thread of XLA's pool, each of
// kMinPartImages or more; else 1 (oneDNN's OpenMP team).
int Parts(ffi::ThreadPool& pool, int64_t n) {
#ifdef APRN_ONEDNN_THREADPOOL
  return 1;
#endif
  if (!g_split_batches) return 1;
  int64_t parts = std::min<int64_t>(pool.num_threads(), n / kMinPartImages);
  return parts > 1 ? static_cast<int>(parts) : 1;
}

// Calls part(i, geometry of part i, its first image) for i in [0, parts), splitting g's batch:
// on the calling thread and on XLA's own thread pool, each part on one OpenMP thread (one
// part: oneDNN's OpenMP team). With oneDNN's OpenMP team started from XLA's threads (one team
// per calling thread, its workers spinning between calls while XLA's threads run the
// fusions), the default config's step took 1.16x (baseline) to 1.22x (APRN) as long as with
// this split (benchmarks/step_ab.py --change=onednn_split). The caller takes parts too, and
// waits only for parts another thread has begun, so a busy pool delays nothing. Returns the
// first part's error, or "".
using PartFn = std::function<void(int, const Geometry&, int64_t)>;

struct Work {
  Work(const Geometry& g, int parts, PartFn part) : g(g), parts(parts), part(std::move(part)) {}
  const Geometry g;
  const int parts;
  const PartFn part;
  std::atomic<int> next{0};
  std::mutex mutex;  // guards done and error
  std::condition_variable finished;
  int done = 0;
  std::string error;
};

void Drain(Work& work) {
  for (int i = work.next.fetch_add(1); i < work.parts; i = work.next.fetch_add(1)) {
    int64_t begin = work.g.n * i / work.parts, end = work.g.n * (i + 1) / work.parts;
    Geometry part = work.g;
    part.n = end - begin;
    std::string error;
    try {
#ifdef APRN_ONEDNN_THREADPOOL
      part.threads = t_pool->get_num_threads();
#else
      part.threads = work.parts > 1 ? 1 : kOpenMpThreads;
      omp_set_num_threads(part.threads);
#endif
      work.part(i, part, begin);
    } catch (const dnnl::error& e) {
      error = e.what();
    } catch (const std::bad_alloc&) {
      error = "out of memory for a temporary buffer";
    } catch (const std::runtime_error& e) {
      error = e.what();
    }
    std::lock_guard<std::mutex> lock(work.mutex);
    if (work.error.empty()) work.error = error;
    if (++work.done == work.parts) work.finished.notify_all();
  }
}

std::string InParts(ffi::ThreadPool& pool, const Geometry& g, int parts, PartFn part) {
  auto work = std::make_shared<Work>(g, parts, std::move(part));
  for (int i = 1; i < parts; ++i) pool.Schedule([work] { Drain(*work); });
#ifdef APRN_ONEDNN_THREADPOOL
  XlaThreadPool threads(pool);
  XlaThreadPool* outer = t_pool;
  t_pool = &threads;
  Drain(*work);
  t_pool = outer;
#else
  Drain(*work);
#endif
  std::unique_lock<std::mutex> lock(work->mutex);
  work->finished.wait(lock, [&] { return work->done == work->parts; });
  return work->error;
}

ffi::Error Run(ffi::ThreadPool& pool, Kind kind, const Geometry& g, void* input, void* kernel,
               void* output) {
  int parts = Parts(pool, g.n);
  // The kernel gradient is summed over the parts in float32.
  if (kind == Kind::kBackwardWeights && g.kernel_type != memory::data_type::f32) parts = 1;
  size_t weights = g.kh * g.kw * g.c * g.f;
  float* partial = nullptr;
  try {
    if (kind == Kind::kBackwardWeights && parts > 1)
      partial = static_cast<float*>(ThreadBuffer(2, (parts - 1) * weights * sizeof(float)));
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("oneDNN convolution: out of memory for a temporary buffer");
  }
  std::string error = InParts(pool, g, parts, [&](int i, const Geometry& part, int64_t begin) {
    void* part_kernel = partial && i > 0 ? partial + (i - 1) * weights : kernel;
    ConvPart(kind, part, static_cast<char*>(input) + begin * g.input_image_bytes(), part_kernel,
             static_cast<char*>(output) + begin * g.output_image_bytes());
  });
  if (!error.empty()) return ffi::Error::Internal("oneDNN convolution: " + error);
  if (partial) {
    float* sum = static_cast<float*>(kernel);
    for (int i = 1; i < parts; ++i)
      for (size_t j = 0; j < weights; ++j) sum[j] += partial[(i - 1) * weights + j];
  }
  return ffi::Error::Success();
}

// Max-pool: `input` is the map (forward) or its gradient (backward), `output` the pooled map
// or its gradient; `workspace` (training forward and backward) holds each output's argmax.
void PoolPart(Kind kind, const Geometry& g, void* input, void* output, void* workspace,
              size_t workspace_bytes) {
  auto entry = Lookup(g, kind);
  auto& engine = Engine();
  dnnl::stream stream = Stream();
  if (kind != Kind::kPoolInference && entry->kernel_desc.get_size() != workspace_bytes)
    throw std::runtime_error(
        "workspace of " + std::to_string(entry->kernel_desc.get_size()) +
        " bytes, not one byte per output (" + std::to_string(workspace_bytes) + ")");
  memory scratchpad({{static_cast<int64_t>(entry->scratchpad_bytes)}, memory::data_type::u8,
                     Tag::a}, engine, ThreadBuffer(1, entry->scratchpad_bytes));
  memory in(g.input(g.map_type), engine, input);
  memory out(g.output(g.map_type), engine, output);
  std::unordered_map<int, memory> args{{DNNL_ARG_SCRATCHPAD, scratchpad}};
  if (kind != Kind::kPoolInference)
    args[DNNL_ARG_WORKSPACE] = memory(entry->kernel_desc, engine, workspace);
  if (kind == Kind::kPoolBackward) {
    args[DNNL_ARG_DIFF_SRC] = in;
    args[DNNL_ARG_DIFF_DST] = out;
  } else {
    args[DNNL_ARG_SRC] = in;
    args[DNNL_ARG_DST] = out;
  }
  entry->primitive.execute(stream, args);
  stream.wait();
}

ffi::Error RunPool(ffi::ThreadPool& pool, Kind kind, const Geometry& g, void* input,
                   void* output, void* workspace, size_t workspace_bytes) {
  size_t workspace_image = workspace_bytes / g.n;
  auto run_part = [&](int, const Geometry& part, int64_t begin) {
    PoolPart(kind, part, static_cast<char*>(input) + begin * g.input_image_bytes(),
             static_cast<char*>(output) + begin * g.output_image_bytes(),
             workspace ? static_cast<char*>(workspace) + begin * workspace_image : nullptr,
             part.n * workspace_image);
  };
  std::string error = InParts(pool, g, Parts(pool, g.n), run_part);
  if (!error.empty()) return ffi::Error::Internal("oneDNN max-pool: " + error);
  return ffi::Error::Success();
}

memory::data_type DnnlType(ffi::DataType type) {
  return type == ffi::DataType::BF16 ? memory::data_type::bf16 : memory::data_type::f32;
}

bool Supported(ffi::DataType type) {
  return type == ffi::DataType::F32 || type == ffi::DataType::BF16;
}

// The geometry from the input map's, output map's and kernel's dimensions and the attributes.
ffi::ErrorOr<Geometry> MakeGeometry(ffi::Span<const int64_t> in, ffi::Span<const int64_t> out,
                                    ffi::Span<const int64_t> k, ffi::DataType map_type,
                                    ffi::DataType kernel_type, int64_t sh, int64_t sw,
                                    int64_t pt, int64_t pl) {
  if (in.size() != 4 || out.size() != 4 || k.size() != 4)
    return ffi::Unexpected(ffi::Error::InvalidArgument("oneDNN convolution: maps and kernel must be 4-D"));
  if (!Supported(map_type) || !Supported(kernel_type))
    return ffi::Unexpected(ffi::Error::InvalidArgument("oneDNN convolution: float32 or bfloat16 only"));
  Geometry g{in[0], in[1], in[2], in[3], out[1], out[2], out[3], k[0], k[1], sh, sw, pt, pl,
             (out[1] - 1) * sh + k[0] - in[1] - pt, (out[2] - 1) * sw + k[1] - in[2] - pl,
             DnnlType(map_type), DnnlType(kernel_type)};
  if (out[0] != in[0] || k[2] != in[3] || k[3] != out[3] || g.pb < 0 || g.pr < 0)
    return ffi::Unexpected(ffi::Error::InvalidArgument("oneDNN convolution: inconsistent shapes"));
  return g;
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> y,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto g = MakeGeometry(x.dimensions(), y->dimensions(), kernel.dimensions(), x.element_type(),
                        kernel.element_type(), sh, sw, pt, pl);
  if (g.has_error()) return g.error();
  return Run(pool, Kind::kForward, *g, x.untyped_data(), kernel.untyped_data(), y->untyped_data());
}

ffi::Error BackwardData(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer kernel,
                        ffi::Result<ffi::AnyBuffer> dx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pl) {
  auto g = MakeGeometry(dx->dimensions(), dy.dimensions(), kernel.dimensions(),
                        dy.element_type(), kernel.element_type(), sh, sw, pt, pl);
  if (g.has_error()) return g.error();
  return Run(pool, Kind::kBackwardData, *g, dx->untyped_data(), kernel.untyped_data(),
             dy.untyped_data());
}

ffi::Error BackwardKernel(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                          ffi::Result<ffi::AnyBuffer> dkernel, int64_t sh, int64_t sw,
                          int64_t pt, int64_t pl) {
  auto g = MakeGeometry(x.dimensions(), dy.dimensions(), dkernel->dimensions(),
                        x.element_type(), dkernel->element_type(), sh, sw, pt, pl);
  if (g.has_error()) return g.error();
  return Run(pool, Kind::kBackwardWeights, *g, x.untyped_data(), dkernel->untyped_data(),
             dy.untyped_data());
}

// The pool's geometry: the window as the kernel's first two dimensions, channels kept.
ffi::ErrorOr<Geometry> PoolGeometry(ffi::Span<const int64_t> in, ffi::Span<const int64_t> out,
                                    ffi::DataType type, int64_t wh, int64_t ww, int64_t sh,
                                    int64_t sw, int64_t pt, int64_t pl) {
  if (in.size() != 4 || out.size() != 4 || in[3] != out[3])
    return ffi::Unexpected(ffi::Error::InvalidArgument("oneDNN max-pool: inconsistent shapes"));
  int64_t window[4] = {wh, ww, in[3], in[3]};
  return MakeGeometry(in, out, ffi::Span<const int64_t>(window, 4), type, type, sh, sw, pt, pl);
}

ffi::Error Pool(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t wh, int64_t ww,
                int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto g = PoolGeometry(x.dimensions(), y->dimensions(), x.element_type(), wh, ww, sh, sw, pt,
                        pl);
  if (g.has_error()) return g.error();
  return RunPool(pool, Kind::kPoolInference, *g, x.untyped_data(), y->untyped_data(), nullptr, 0);
}

ffi::Error PoolTraining(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                        ffi::Result<ffi::AnyBuffer> argmax, int64_t wh, int64_t ww,
                        int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto g = PoolGeometry(x.dimensions(), y->dimensions(), x.element_type(), wh, ww, sh, sw, pt,
                        pl);
  if (g.has_error()) return g.error();
  return RunPool(pool, Kind::kPoolTraining, *g, x.untyped_data(), y->untyped_data(),
                 argmax->untyped_data(), argmax->size_bytes());
}

ffi::Error PoolBackward(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer argmax,
                        ffi::Result<ffi::AnyBuffer> dx, int64_t wh, int64_t ww, int64_t sh,
                        int64_t sw, int64_t pt, int64_t pl) {
  auto g = PoolGeometry(dx->dimensions(), dy.dimensions(), dy.element_type(), wh, ww, sh, sw,
                        pt, pl);
  if (g.has_error()) return g.error();
  return RunPool(pool, Kind::kPoolBackward, *g, dx->untyped_data(), dy.untyped_data(),
                 argmax.untyped_data(), argmax.size_bytes());
}

}  // namespace

// benchmarks/step_ab.py: 1 splits large batches over XLA's threads (the default), 0 runs
// every call on oneDNN's OpenMP team.
extern "C" void AprnSplitBatches(int split) { g_split_batches = split != 0; }

#define APRN_POOL_ATTRS                                                             \
  .Attr<int64_t>("window_h").Attr<int64_t>("window_w") APRN_CONV_ATTRS

#define APRN_CONV_ATTRS                                                             \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")     \
      .Attr<int64_t>("pad_left")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AprnConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() APRN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AprnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() APRN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AprnConvBackwardKernel, BackwardKernel,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() APRN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AprnMaxPool, Pool,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() APRN_POOL_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AprnMaxPoolTraining, PoolTraining,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() APRN_POOL_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(AprnMaxPoolBackward, PoolBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() APRN_POOL_ATTRS);
