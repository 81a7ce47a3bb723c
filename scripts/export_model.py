#!/usr/bin/python3
"""Turns any torch.nn.Module into deepeverest's model convention, form 1
(README.md, "The model convention"): a TorchScript module whose forward(x) returns
Dict[str, Tensor] with the outputs of the submodules you name, in forward
order, plus forward_to(x, layer) that stops computing after `layer` (the
daemon uses it to truncate inference), plus the archive's deepeverest.json
({"input_shape": [...], "layers": [...]}).

Library:  export(module, layers, input_shape, path)
CLI:      export_model.py --factory pkg.mod:function [--state-dict w.pt]
                          --layers a,b --input-shape 1,28,28 -o out.pt

The named submodules are found with torch.fx: the module is traced, the
graph is cut after each named call_module node, and the generated code
returns early at every named layer. Checked on export: the dict equals the
original submodules' outputs (forward hooks) on a random batch."""

import argparse
import importlib
import os
import json
import sys

import torch
import torch.fx


def _build_source(graph, layers):
    """Python source of forward_to, straight-line over the traced graph."""
    lines, names, env = [], {}, {}
    want = set(layers)
    done = []

    def arg(a):
        if isinstance(a, torch.fx.Node):
            return names[a]
        if isinstance(a, (list, tuple)):
            inner = ", ".join(arg(x) for x in a)
            return "[" + inner + "]" if isinstance(a, list) else "(" + inner + ("," if len(a) == 1 else "") + ")"
        return repr(a)

    for i, node in enumerate(graph.nodes):
        v = "v%d" % i
        if node.op == "placeholder":
            names[node] = "x"
            continue
        if node.op == "output":
            break
        args = ", ".join([arg(a) for a in node.args] + ["%s=%s" % (k, arg(a)) for k, a in node.kwargs.items()])
        if node.op == "call_module":
            attr = "m_" + node.target.replace(".", "_")
            env[attr] = node.target
            lines.append("%s = self.%s(%s)" % (v, attr, args))
        elif node.op == "call_function":
            fn = node.target
            mod = getattr(fn, "__module__", None) or "torch"
            infix = {"add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "matmul": "@"}
            if mod == "_operator" and fn.__name__ in infix and len(node.args) == 2 and not node.kwargs:
                # TorchScript compiles operators, not the operator module (residual adds)
                lines.append("%s = %s %s %s" % (v, arg(node.args[0]), infix[fn.__name__], arg(node.args[1])))
            elif mod == "_operator" and fn.__name__ == "getitem":
                lines.append("%s = %s[%s]" % (v, arg(node.args[0]), arg(node.args[1])))
            else:
                qual = {"_operator": "operator", "torch._C._nn": "torch._C._nn"}.get(mod, mod)
                lines.append("%s = %s.%s(%s)" % (v, qual, fn.__name__, args))
        elif node.op == "call_method":
            lines.append("%s = %s.%s(%s)" % (v, arg(node.args[0]), node.target,
                                              ", ".join([arg(a) for a in node.args[1:]] +
                                                        ["%s=%s" % (k, arg(a)) for k, a in node.kwargs.items()])))
        elif node.op == "get_attr":
            attr = "a_" + node.target.replace(".", "_")
            env[attr] = node.target
            lines.append("%s = self.%s" % (v, attr))
        names[node] = v
        if node.op == "call_module" and node.target in want:
            lines.append("out[%r] = %s" % (node.target, v))
            done.append(node.target)
            if len(done) == len(layers):
                lines.append("return out")
                break
            lines.append("if layer == %r:\n        return out" % node.target)
    missing = want - set(done)
    if missing:
        raise SystemExit("layers not found as submodules called in forward: %s" % sorted(missing))
    body = "\n    ".join(lines)
    return ("def forward_to(self, x, layer: str) -> Dict[str, torch.Tensor]:\n"
            "    out: Dict[str, torch.Tensor] = {}\n    %s\n" % body), env, done


class _Exported(torch.nn.Module):
    pass


def export(module, layers, input_shape, path, check=True):
    module = module.eval()
    want = set(layers)

    class Tracer(torch.fx.Tracer):
        # a named layer stays one call, whatever it contains
        def is_leaf_module(self, m, qualname):
            return qualname in want or super().is_leaf_module(m, qualname)

    graph = Tracer().trace(module)
    gm = torch.fx.GraphModule(module, graph)
    src, env, order = _build_source(gm.graph, layers)
    src += ("def forward(self, x) -> Dict[str, torch.Tensor]:\n"
            "    return self.forward_to(x, \"\")\n")
    # TorchScript compiles from source text: write it where inspect finds it.
    import linecache
    import tempfile
    fd, fname = tempfile.mkstemp(suffix="_deepeverest_export.py")
    with os.fdopen(fd, "w") as f:
        f.write(src)
    linecache.checkcache(fname)
    ns = {"torch": torch, "Dict": __import__("typing").Dict, "operator": __import__("operator")}
    exec(compile(src, fname, "exec"), ns)  # noqa: S102 -- source generated above from the traced graph
    cls = type("DeepEverestModel", (torch.nn.Module,), {"forward_to": ns["forward_to"], "forward": ns["forward"]})
    wrapper = cls()
    for attr, target in env.items():
        setattr(wrapper, attr, gm.get_submodule(target) if attr.startswith("m_") else getattr(gm, target))
    # forward_to must be compiled too: export it explicitly.
    cls.forward_to = torch.jit.export(cls.forward_to)
    scripted = torch.jit.script(wrapper)
    meta = {"input_shape": list(input_shape), "layers": order}
    torch.jit.save(scripted, path, _extra_files={"deepeverest.json": json.dumps(meta)})
    if check:
        _check(module, scripted, order, input_shape)
    return order


def _check(module, scripted, layers, input_shape):
    x = torch.randn(5, *input_shape)
    seen = {}
    hooks = [module.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(n, o.detach().clone())) for n in layers]
    with torch.no_grad():
        module(x)
        got = scripted(x)
        part = scripted.forward_to(x, layers[0])
    for h in hooks:
        h.remove()
    assert list(got) == list(layers), (list(got), layers)
    for n in layers:
        assert torch.equal(got[n], seen[n]), "layer %s differs from the original module" % n
    assert list(part) == [layers[0]]
    print("export check: %d layers equal the original module's outputs" % len(layers))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factory", required=True, help="pkg.module:function returning an nn.Module")
    p.add_argument("--state-dict")
    p.add_argument("--layers", required=True)
    p.add_argument("--input-shape", required=True)
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()
    mod_name, fn = a.factory.split(":")
    sys.path.insert(0, ".")
    module = getattr(importlib.import_module(mod_name), fn)()
    if a.state_dict:
        module.load_state_dict(torch.load(a.state_dict, map_location="cpu"))
    export(module, a.layers.split(","), [int(s) for s in a.input_shape.split(",")], a.output)


if __name__ == "__main__":
    main()
