// shim.cpp -- the C face of LibTorch (see shim.h). The only C++ file of
// the project; every entry point catches everything, so no exception crosses
// into C.
#include "shim.h"

#include <dlfcn.h>
#include <malloc.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

struct shim_model {
    torch::jit::Module mod;
    c10::Device device{c10::kCPU};
    bool dict_form = false;
    bool has_forward_to = false;
    std::vector<torch::jit::Module> leaves;  // form 2: leaf modules in order
    std::vector<std::string> names;
    std::vector<shim_layer> layers;          // name pointers into names
    std::vector<int64_t> input_shape;
    int64_t input_numel = 0;
    int layout = SHIM_CONTIGUOUS;
};

namespace {

void set_err(char *err, size_t errlen, const std::string &msg)
{
    if (err && errlen) snprintf(err, errlen, "%s", msg.c_str());
}

// Torch messages carry backtraces and interpreter tracebacks; keep the line
// that says what went wrong.
std::string short_message(const std::string &what)
{
    size_t p = what.rfind("RuntimeError: ");
    std::string s = p != std::string::npos ? what.substr(p + 14) : what;
    size_t nl = s.find('\n');
    if (nl != std::string::npos) s.resize(nl);
    if (s.size() > 400) {
        s.resize(400);
        s += "...";
    }
    return s;
}

std::string error_text(const std::exception &e)
{
    if (auto *ce = dynamic_cast<const c10::Error *>(&e)) return short_message(ce->what_without_backtrace());
    return short_message(e.what());
}

// Parses "input_shape":[a,b,c] out of deepeverest.json without a JSON
// library (the shim knows nothing of the rest of the project).
bool parse_input_shape(const std::string &json, std::vector<int64_t> &out)
{
    size_t k = json.find("\"input_shape\"");
    if (k == std::string::npos) return false;
    size_t b = json.find('[', k), e = json.find(']', k);
    if (b == std::string::npos || e == std::string::npos || e < b) return false;
    std::vector<int64_t> dims;
    const char *p = json.c_str() + b + 1, *end = json.c_str() + e;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == ',' || *p == '\n' || *p == '\t')) p++;
        if (p >= end) break;
        char *q;
        long long v = strtoll(p, &q, 10);
        if (q == p || v <= 0) return false;
        dims.push_back(v);
        p = q;
    }
    if (dims.empty() || dims.size() > SHIM_MAX_DIMS) return false;
    out = dims;
    return true;
}

void flatten_children(const torch::jit::Module &m, const std::string &prefix, shim_model *sm)
{
    for (const auto &child : m.named_children()) {
        std::string name = prefix.empty() ? child.name : prefix + "." + child.name;
        if (child.value.children().size() > 0)
            flatten_children(child.value, name, sm);
        else {
            sm->leaves.push_back(child.value);
            sm->names.push_back(name);
        }
    }
}

void add_layer(shim_model *m, const at::Tensor &t)
{
    shim_layer l{};
    l.ndim = (int)t.dim() - 1;
    if (l.ndim < 0 || l.ndim > SHIM_MAX_DIMS) throw std::runtime_error("a layer output has an unsupported rank");
    l.neurons = 1;
    for (int i = 0; i < l.ndim; i++) {
        l.shape[i] = t.size(i + 1);
        l.neurons *= l.shape[i];
    }
    m->layers.push_back(l);
}

at::Tensor as_float_cpu(const at::Tensor &t)
{
    return t.to(c10::kCPU, c10::kFloat).contiguous();
}

}  // namespace

extern "C" int shim_init(int threads, char *err, size_t errlen)
{
    try {
        // glibc serves each large tensor by a fresh mmap and unmaps it after
        // the forward unless these thresholds are raised, and a thread's own
        // arena (heaps of 64 MiB at most, deleted when they empty) faults a
        // wide layer's tensors in again every forward: one arena (README.md).
        mallopt(M_MMAP_THRESHOLD, 64 << 20);
        mallopt(M_TRIM_THRESHOLD, 128 << 20);
        mallopt(M_ARENA_MAX, 1);
        int n = threads > 0 ? threads : (int)std::max(1u, std::thread::hardware_concurrency());
        at::set_num_threads(n);  // 1 by default on these machines
        try {
            at::set_num_interop_threads(1);
        } catch (...) {
            // already set (a second init): harmless
        }
        // OpenBLAS threads fight OpenMP's on few cores: pin them to one.
        using setter = void (*)(int);
        if (auto fn = (setter)dlsym(RTLD_DEFAULT, "openblas_set_num_threads")) fn(1);
        // Plain execution of the TorchScript graph: the optimizing executor
        // rewrites the graph after a few runs, and a recomputed activation
        // must equal the one an index was built from, bit for bit.
        torch::jit::setGraphExecutorOptimize(false);
        return 0;
    } catch (const std::exception &e) {
        set_err(err, errlen, error_text(e));
    } catch (...) {
        set_err(err, errlen, "unknown error initializing torch");
    }
    return -1;
}

extern "C" int shim_cuda_available(void)
{
    try {
        return at::hasCUDA() ? 1 : 0;
    } catch (...) {
        return 0;
    }
}

extern "C" int shim_load(const char *path, const char *device, const int64_t *input_shape, int input_ndim,
                         shim_model **out, char *err, size_t errlen)
{
    shim_model *m = nullptr;
    try {
        std::string dev = device ? device : "auto";
        c10::Device d(c10::kCPU);
        if (dev == "cuda" || (dev == "auto" && at::hasCUDA())) {
            if (!at::hasCUDA()) {
                set_err(err, errlen, "device cuda asked for, but this LibTorch build sees no CUDA device");
                return -1;
            }
            d = c10::Device(c10::kCUDA, 0);
        } else if (dev != "cpu" && dev != "auto") {
            set_err(err, errlen, "device must be auto, cpu or cuda");
            return -1;
        }
        m = new shim_model();
        m->device = d;
        torch::jit::ExtraFilesMap extra{{"deepeverest.json", ""}};
        try {
            m->mod = torch::jit::load(path, d, extra);
        } catch (const std::exception &e) {
            set_err(err, errlen, "not a TorchScript archive: " + error_text(e));
            delete m;
            return -1;
        }
        m->mod.eval();
        if (!parse_input_shape(extra["deepeverest.json"], m->input_shape)) {
            if (!input_shape || input_ndim <= 0) {
                set_err(err, errlen,
                        "the model has no input shape: put deepeverest.json ({\"input_shape\":[C,H,W]}) in the "
                        "archive or pass input_shape");
                delete m;
                return -1;
            }
            m->input_shape.assign(input_shape, input_shape + input_ndim);
        }
        m->input_numel = 1;
        for (int64_t s : m->input_shape) m->input_numel *= s;
        m->has_forward_to = m->mod.find_method("forward_to").has_value();

        // Discover the layers by running one zero input.
        c10::InferenceMode guard;
        std::vector<int64_t> shape{1};
        shape.insert(shape.end(), m->input_shape.begin(), m->input_shape.end());
        at::Tensor x = torch::zeros(shape, torch::TensorOptions().dtype(torch::kFloat).device(d));
        c10::IValue y;
        try {
            y = m->mod.forward({x});
        } catch (const std::exception &e) {
            set_err(err, errlen, "the model cannot run an input of this shape: " + error_text(e));
            delete m;
            return -1;
        }
        if (y.isGenericDict()) {
            m->dict_form = true;
            for (const auto &kv : y.toGenericDict()) {
                if (!kv.value().isTensor()) throw std::runtime_error("forward's dict holds a non-tensor value");
                m->names.push_back(kv.key().toStringRef());
                add_layer(m, kv.value().toTensor());
            }
        } else {
            flatten_children(m->mod, "", m);
            if (m->leaves.empty()) {
                set_err(err, errlen,
                        "no layers found: forward returns no Dict[str, Tensor] and the module has no children");
                delete m;
                return -1;
            }
            at::Tensor h = x;
            for (auto &leaf : m->leaves) {
                h = leaf.forward({h}).toTensor();
                add_layer(m, h);
            }
        }
        for (size_t i = 0; i < m->layers.size(); i++) m->layers[i].name = m->names[i].c_str();
        if (m->layers.empty()) throw std::runtime_error("the model has no layers");
        *out = m;
        return 0;
    } catch (const std::exception &e) {
        set_err(err, errlen, error_text(e));
    } catch (...) {
        set_err(err, errlen, "unknown error loading the model");
    }
    delete m;
    return -1;
}

extern "C" void shim_free(shim_model *m)
{
    try {
        delete m;
    } catch (...) {
    }
}

extern "C" int shim_set_layout(shim_model *m, int layout, char *err, size_t errlen)
{
    try {
        if (layout != SHIM_CONTIGUOUS && layout != SHIM_CHANNELS_LAST) {
            set_err(err, errlen, "unknown layout");
            return -1;
        }
        auto fmt = layout == SHIM_CHANNELS_LAST ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
        torch::NoGradGuard ng;
        for (auto p : m->mod.parameters())
            if (p.dim() == 4) p.set_data(p.contiguous(fmt));
        m->layout = layout;
        return 0;
    } catch (const std::exception &e) {
        set_err(err, errlen, error_text(e));
    } catch (...) {
        set_err(err, errlen, "unknown error changing the layout");
    }
    return -1;
}

extern "C" int shim_layout(const shim_model *m) { return m->layout; }

extern "C" const char *shim_device(const shim_model *m) { return m->device.is_cuda() ? "cuda" : "cpu"; }

extern "C" int shim_input_shape(const shim_model *m, int64_t *shape)
{
    for (size_t i = 0; i < m->input_shape.size(); i++) shape[i] = m->input_shape[i];
    return (int)m->input_shape.size();
}

extern "C" int64_t shim_input_numel(const shim_model *m) { return m->input_numel; }

extern "C" int shim_layer_count(const shim_model *m) { return (int)m->layers.size(); }

extern "C" const shim_layer *shim_layer_at(const shim_model *m, int i)
{
    if (i < 0 || (size_t)i >= m->layers.size()) return nullptr;
    return &m->layers[(size_t)i];
}

extern "C" int shim_layer_find(const shim_model *m, const char *name)
{
    for (size_t i = 0; i < m->names.size(); i++)
        if (m->names[i] == name) return (int)i;
    return -1;
}

// Copies what o asks of t ([n, ...] on any device) into o.dst.
static void copy_out(const at::Tensor &t, const shim_layer &l, int64_t n, const shim_out &o)
{
    if (t.numel() != n * l.neurons) throw std::runtime_error(std::string("layer ") + l.name + " changed size");
    if (!o.cols) {
        at::Tensor c = as_float_cpu(t);
        memcpy(o.dst, c.data_ptr<float>(), (size_t)(n * l.neurons) * sizeof(float));
        return;
    }
    for (size_t j = 0; j < o.ncols; j++)
        if ((int64_t)o.cols[j] >= l.neurons) throw std::runtime_error(std::string("a column past layer ") + l.name);
    at::Tensor flat = t.reshape({n, l.neurons});
    if (!flat.is_cuda()) {
        // On the CPU a gather loop over the contiguous floats beats index_select.
        at::Tensor c = flat.to(c10::kFloat).contiguous();
        const float *src = c.data_ptr<float>();
        for (int64_t i = 0; i < n; i++) {
            const float *row = src + i * l.neurons;
            float *dst = o.dst + (size_t)i * o.ncols;
            for (size_t j = 0; j < o.ncols; j++) dst[j] = row[o.cols[j]];
        }
        return;
    }
    // On a GPU gather there and copy only the columns back.
    at::Tensor idx = torch::from_blob(const_cast<uint32_t *>(o.cols), {(int64_t)o.ncols}, torch::kInt32)
                         .to(torch::kLong)
                         .to(flat.device());
    at::Tensor c = as_float_cpu(flat.index_select(1, idx));
    memcpy(o.dst, c.data_ptr<float>(), (size_t)n * o.ncols * sizeof(float));
}

extern "C" int shim_run(shim_model *m, const float *in, int64_t n, const shim_out *outs, int nouts, char *err,
                        size_t errlen)
{
    try {
        if (n <= 0 || nouts <= 0) {
            set_err(err, errlen, "nothing to run");
            return -1;
        }
        int deepest = -1;
        for (int j = 0; j < nouts; j++) {
            if (outs[j].layer < 0 || (size_t)outs[j].layer >= m->layers.size()) {
                set_err(err, errlen, "layer index out of range");
                return -1;
            }
            deepest = std::max(deepest, outs[j].layer);
        }
        c10::InferenceMode guard;
        std::vector<int64_t> shape{n};
        shape.insert(shape.end(), m->input_shape.begin(), m->input_shape.end());
        at::Tensor x = torch::from_blob(const_cast<float *>(in), shape, torch::kFloat);
        if (m->device.is_cuda()) x = x.to(m->device);
        if (m->layout == SHIM_CHANNELS_LAST && x.dim() == 4) x = x.contiguous(at::MemoryFormat::ChannelsLast);
        if (m->dict_form) {
            c10::IValue y = m->has_forward_to
                                ? m->mod.get_method("forward_to")({x, c10::IValue(m->names[(size_t)deepest])})
                                : m->mod.forward({x});
            auto d = y.toGenericDict();
            for (int j = 0; j < nouts; j++) {
                const shim_layer &l = m->layers[(size_t)outs[j].layer];
                copy_out(d.at(c10::IValue(m->names[(size_t)outs[j].layer])).toTensor(), l, n, outs[j]);
            }
        } else {
            at::Tensor h = x;
            for (int i = 0; i <= deepest; i++) {
                h = m->leaves[(size_t)i].forward({h}).toTensor();
                for (int j = 0; j < nouts; j++)
                    if (outs[j].layer == i) copy_out(h, m->layers[(size_t)i], n, outs[j]);
            }
        }
        return 0;
    } catch (const std::exception &e) {
        set_err(err, errlen, error_text(e));
    } catch (...) {
        set_err(err, errlen, "unknown error running the model");
    }
    return -1;
}

namespace {

// The group's aggregate per input, from the layer's output t ([n, ...]).
at::Tensor group_target(const at::Tensor &t, int64_t n, const shim_grad_req *r)
{
    at::Tensor idx = torch::from_blob(const_cast<uint32_t *>(r->neurons), {(int64_t)r->nneurons}, torch::kInt32)
                         .to(torch::kLong)
                         .to(t.device());
    at::Tensor sel = t.reshape({n, -1}).index_select(1, idx).to(torch::kFloat);
    if (r->agg == SHIM_MAX) return std::get<0>(sel.max(1));
    if (r->agg == SHIM_MIN) return std::get<0>(sel.min(1));
    if (r->weights) {
        at::Tensor w = torch::from_blob(const_cast<float *>(r->weights), {(int64_t)r->nneurons}, torch::kFloat)
                           .to(t.device());
        sel = sel * w;
    }
    at::Tensor s = sel.sum(1);
    return r->agg == SHIM_MEAN ? s / (double)r->nneurons : s;
}

void copy_tensor(const at::Tensor &t, float *dst, int64_t count, const char *what)
{
    at::Tensor c = as_float_cpu(t);
    if (c.numel() != count) throw std::runtime_error(std::string(what) + " changed size");
    memcpy(dst, c.data_ptr<float>(), (size_t)count * sizeof(float));
}

}  // namespace

extern "C" int shim_grad(shim_model *m, const float *in, int64_t n, const shim_grad_req *r, char *err, size_t errlen)
{
    try {
        int nl = (int)m->layers.size();
        if (n <= 0 || !r || r->layer < 0 || r->layer >= nl || r->cam_layer >= nl || r->cam_layer > r->layer ||
            !r->nneurons || !r->neurons) {
            set_err(err, errlen, "bad attribution request");
            return -1;
        }
        const shim_layer &gl = m->layers[(size_t)r->layer];
        for (size_t j = 0; j < r->nneurons; j++)
            if ((int64_t)r->neurons[j] >= gl.neurons) {
                set_err(err, errlen, std::string("a neuron past layer ") + gl.name);
                return -1;
            }
        c10::AutoGradMode grad_on(true);
        std::vector<int64_t> shape{n};
        shape.insert(shape.end(), m->input_shape.begin(), m->input_shape.end());
        at::Tensor x = torch::from_blob(const_cast<float *>(in), shape, torch::kFloat).to(m->device).clone();
        x.requires_grad_(true);
        at::Tensor out, cam;
        if (m->dict_form) {
            c10::IValue y = m->has_forward_to
                                ? m->mod.get_method("forward_to")({x, c10::IValue(m->names[(size_t)r->layer])})
                                : m->mod.forward({x});
            auto d = y.toGenericDict();
            out = d.at(c10::IValue(m->names[(size_t)r->layer])).toTensor();
            if (r->cam_layer >= 0) cam = d.at(c10::IValue(m->names[(size_t)r->cam_layer])).toTensor();
        } else {
            at::Tensor h = x;
            for (int i = 0; i <= r->layer; i++) {
                h = m->leaves[(size_t)i].forward({h}).toTensor();
                if (i == r->cam_layer) cam = h;
            }
            out = h;
        }
        at::Tensor t = group_target(out, n, r);
        if (r->target) copy_tensor(t.detach(), r->target, n, "the target");
        if (!t.requires_grad()) {
            set_err(err, errlen, std::string("layer ") + gl.name +
                                     " does not depend differentiably on the input (the model detaches it or "
                                     "computes it without gradients)");
            return SHIM_NOT_DIFFERENTIABLE;
        }
        std::vector<at::Tensor> wrt;
        if (r->input_grad) wrt.push_back(x);
        if (r->cam_layer >= 0) {
            if (!cam.requires_grad()) {
                set_err(err, errlen, std::string("layer ") + m->layers[(size_t)r->cam_layer].name +
                                         " does not depend differentiably on the input");
                return SHIM_NOT_DIFFERENTIABLE;
            }
            wrt.push_back(cam);
        }
        if (wrt.empty()) return 0;
        std::vector<at::Tensor> g = torch::autograd::grad({t.sum()}, wrt, {}, false, false, true);
        size_t k = 0;
        if (r->input_grad) {
            if (!g[k].defined()) {
                set_err(err, errlen, std::string("layer ") + gl.name + " does not depend on the input");
                return SHIM_NOT_DIFFERENTIABLE;
            }
            copy_tensor(g[k++], r->input_grad, n * m->input_numel, "the input gradient");
        }
        if (r->cam_layer >= 0) {
            const shim_layer &cl = m->layers[(size_t)r->cam_layer];
            copy_tensor(cam.detach(), r->cam_act, n * cl.neurons, cl.name);
            if (g[k].defined())
                copy_tensor(g[k], r->cam_grad, n * cl.neurons, cl.name);
            else  // the target does not depend on it: no gradient anywhere
                memset(r->cam_grad, 0, (size_t)(n * cl.neurons) * sizeof(float));
        }
        return 0;
    } catch (const std::exception &e) {
        std::string msg = error_text(e);
        set_err(err, errlen, msg);
        // autograd's own refusals name the model's doing (in-place edits, no grad_fn)
        if (msg.find("does not require grad") != std::string::npos ||
            msg.find("modified by an inplace operation") != std::string::npos)
            return SHIM_NOT_DIFFERENTIABLE;
    } catch (...) {
        set_err(err, errlen, "unknown error computing gradients");
    }
    return -1;
}
