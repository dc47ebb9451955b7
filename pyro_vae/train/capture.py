r"""Captured training steps: the ELBO and its gradient replayed as one recorded graph.

Every Pyro training step re-runs the model and the guide under Pyro's effect handlers:
traces, messengers, site dicts, distribution objects. For a small network that Python
work, not the arithmetic, dominates the step (``benchmarks/throughput.py`` measures
how much). When the program's structure does not change from step to step, the
same sequence of tensor operations runs every time; only the data, the parameters and the
random draws differ. :class:`CapturedStep` records that sequence once, forward and backward,
with :func:`torch.fx.experimental.proxy_tensor.make_fx`, and replays it on later batches.

**What is recorded.** ``loss = loss_fn(x, **kwargs)`` (any Pyro ELBO used as an
``nn.Module``) followed by ``torch.autograd.grad(loss, params)``, as a graph of ATen
operations whose inputs are the trainable parameters, the modules' buffers and the batch.
Random draws (``normal_``, ``bernoulli_``, ...) are operations in the graph, so each replay
draws fresh randomness from the global torch generator, consuming it exactly as the Pyro
path would. Pyro's ``torch_item`` (which turns the ELBO value into a Python float, and so
would be frozen into the graph) is replaced by ``detach`` while recording, and its NaN
warning is skipped; the training loop checks for NaN itself.

**log1p on the CPU.** The vectorised ``log1p`` of torch's CPU kernels is several times
slower than its ``log`` (torch 2.14, AVX-512), and it is in the
softplus of every hidden layer and in the Bernoulli log-likelihood
(``binary_cross_entropy_with_logits``). On the CPU, the recording therefore replaces those
operations (and ``logsigmoid``) by torch's reference decompositions and ``log1p`` by
``log(u) * x / (u - 1)`` with ``u = 1 + x`` (``x`` where ``u == 1``; D. Goldberg's formula,
accurate to a few units in the last place). The backward formulas are unchanged. The step
gets faster (``benchmarks/throughput.py`` measures it); the graph then agrees with the Pyro
path to rounding instead of bit for bit.

**When it applies.** The capture is refused, and the caller keeps the ordinary Pyro path,
whenever any of these holds:

- recording fails (e.g. a program that converts a tensor to a Python number on its way);
- the graph reads a tensor's value into Python (``.item()``, ``bool(tensor)``): that is
  data-dependent control flow, which a fixed graph would silently freeze;
- the graph writes in place into a parameter, a buffer or a constant (e.g. batch-norm
  running statistics);
- a tensor frozen into the graph as a constant shares memory with a parameter or buffer;
- verification fails (below).

A graph is specific to the shapes, dtypes and devices of its inputs: a batch of another
shape (the last, smaller batch of an epoch) is captured and verified separately, up to
``max_graphs`` shapes, and runs the Pyro path beyond that.

**How it is verified.** Right after recording, with the random generator saved and
restored around the check so that training is not perturbed, the Pyro path and the graph
are run from the *same* random state on the same batch. The capture is used only if both
give the same loss and the same gradient for every parameter (to ``rtol=1e-5``, relative
to each tensor's largest magnitude; on other devices than the CPU they agree bit for bit
because the graph runs the same kernels), and leave the random generator in the same state
(the same number of draws). Replays are deterministic: a resumed run reproduces the
uninterrupted one exactly. Model structure that depends on the data in ways the check
cannot see (Python branching on non-tensor attributes that change between steps, or tensors
outside the modules that are replaced by new objects) is not supported: pass
``capture=False`` to :func:`pyro_vae.fit` for such programs.

**Compilation (opt-in).** With ``compile=True`` each verified graph is also compiled by
TorchInductor (:func:`torch._inductor.compile_fx.compile_fx`, which fuses the elementwise
work into generated C++ or Triton kernels, reuses buffers and calls the library's matrix
products), and the compiled graph is verified against the Pyro path in the same way before
it is used. Random operations are not replaced by Inductor's own generator
(``fallback_random=True``), so a compiled step draws from the global generator exactly as
the Pyro path does (the verification checks the generator's state); on the CPU, ``log1p``
is computed as above. Fused kernels sum in another order, so a compiled graph is verified to
``compile_rtol`` (relative to each tensor's largest magnitude). Its replays are
deterministic too. When compilation or its verification fails, the shape keeps its
uncompiled graph and ``compile_reasons`` says why. Compiling runs a C++ compiler and takes
seconds (a graph already in Inductor's on-disk cache) to minutes per input shape, so it is
off by default and pays off in long runs: ``benchmarks/throughput.py --compile`` measures
the step's speed.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyro.infer.trace_elbo as _trace_elbo
import pyro.infer.trace_mean_field_elbo as _trace_mean_field_elbo
import torch
from torch import fx, nn
from torch._decomp import get_decompositions
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["CaptureError", "CapturedStep", "compile_graph"]

# Operations that read a tensor's value into Python: a graph containing one froze a
# data-dependent decision.
_SCALAR_READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.item.default,
    torch.ops.aten.equal.default,
}


class CaptureError(RuntimeError):
    """A training step cannot be captured safely; the message says why."""


def _detach_item(value: Any) -> Any:
    return value if isinstance(value, numbers.Number) else value.detach()


@contextlib.contextmanager
def _tensor_valued_elbo() -> Iterator[None]:
    """While recording: Pyro's ELBO value stays a (detached) tensor instead of a Python
    float, and the NaN warning (a tensor-to-bool read) is skipped."""
    modules = (_trace_elbo, _trace_mean_field_elbo)
    saved = [(m, m.torch_item, m.warn_if_nan) for m in modules]
    try:
        for m in modules:
            m.torch_item = _detach_item  # type: ignore[attr-defined]
            m.warn_if_nan = lambda *args, **kwargs: None  # type: ignore[attr-defined]
        yield
    finally:
        for m, item, warn in saved:
            m.torch_item, m.warn_if_nan = item, warn  # type: ignore[attr-defined]


def _storages(tensors: Sequence[torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if t.device.type != "meta"}


def _check_graph(gm: fx.GraphModule, protected: set[int]) -> None:
    """Refuse graphs that froze a data-dependent decision, write into their inputs or
    constants, or hold a constant that aliases a parameter or buffer."""
    external: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            external.add(node)
        elif node.op == "get_attr":
            external.add(node)
            value = getattr(gm, node.target)
            if isinstance(value, torch.Tensor) and _storages([value]) & protected:
                raise CaptureError(
                    f"the graph froze the tensor {node.target} that shares memory with a "
                    "parameter or buffer"
                )
        elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if node.target in _SCALAR_READS:
                raise CaptureError(
                    f"the program reads a tensor value into Python ({node.target}), so its "
                    "control flow may depend on the data"
                )
            schema = node.target._schema
            args = [a for a in node.args if isinstance(a, fx.Node)]
            if node.target.is_view and args and args[0] in external:
                external.add(node)
            for arg, spec in zip(node.args, schema.arguments, strict=False):
                written = spec.alias_info is not None and spec.alias_info.is_write
                if written and isinstance(arg, fx.Node) and arg in external:
                    raise CaptureError(
                        f"the program writes in place into an input or constant "
                        f"({node.target}), e.g. batch-norm running statistics"
                    )


def _close(a: torch.Tensor | None, b: torch.Tensor | None, rtol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    atol = rtol * float(a.detach().abs().max()) if a.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=False))


def _rng_states(device: torch.device) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _set_rng_states(device: torch.device, states: list[torch.Tensor]) -> None:
    torch.set_rng_state(states[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states[1], device)


def _input_key(x: torch.Tensor, kwargs: dict[str, torch.Tensor]) -> tuple:
    # strides too: a compiled graph is specialised to its inputs' memory layout
    return tuple(
        (name, tuple(t.shape), t.stride(), t.dtype, t.device)
        for name, t in (("x", x), *sorted(kwargs.items()))
    )


def _log1p(x: torch.Tensor) -> torch.Tensor:
    """``log1p`` from ``log`` (D. Goldberg, "What every computer scientist should know about
    floating-point arithmetic", 1991, theorem 4): ``u = 1 + x`` rounds, and
    ``log(u) * x / (u - 1)`` corrects the rounding; ``x`` itself where ``u == 1``, and
    ``u`` where it is infinite."""
    u = 1 + x
    exact = (u == 1) | (u == float("inf"))
    return torch.where(exact, x, torch.log(u) * (x / (u - 1)))


def _cpu_decompositions() -> dict[Any, Callable[..., Any]]:
    """Recording on the CPU: the operations whose CPU kernels evaluate ``log1p`` (softplus,
    the Bernoulli log-likelihood's ``binary_cross_entropy_with_logits``, ``logsigmoid``)
    become torch's reference decompositions, and ``log1p`` becomes :func:`_log1p`."""
    aten = torch.ops.aten
    table = get_decompositions(
        [aten.softplus, aten.log_sigmoid_forward, aten.binary_cross_entropy_with_logits]
    )
    table[aten.log1p.default] = _log1p
    return table


def compile_graph(
    graph: fx.GraphModule, example_inputs: list[Any], *, cpu: bool = True
) -> Callable[..., Any]:
    """Compile a recorded graph with TorchInductor for replays under ``torch.no_grad``:
    random operations run as in eager mode (``fallback_random``), and on the ``cpu``
    ``log1p`` as :func:`_log1p`. ``graph`` itself is left unchanged."""
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    decompositions = dict(select_decomp_table())
    if cpu:
        decompositions[torch.ops.aten.log1p.default] = _log1p
    with inductor_config.patch(fallback_random=True), torch.no_grad():
        compiled = compile_fx(copy.deepcopy(graph), example_inputs, decompositions=decompositions)
    if not callable(compiled):  # an ahead-of-time artefact (a path), not a function
        raise TypeError(f"Inductor returned {type(compiled).__name__}, not a function")
    return compiled


class CapturedStep:
    r"""The loss and gradient of a Pyro ELBO, recorded once per input shape and replayed.

    ``step(x, **kwargs)`` computes ``loss_fn(x, **kwargs)`` and sets ``p.grad`` of every
    parameter to :math:`\partial\,\mathrm{loss} / \partial p` (``None`` where the loss does
    not depend on ``p``), exactly like ``loss.backward()`` after
    ``optimizer.zero_grad(set_to_none=True)``, and returns the detached loss. Batches whose
    shapes have a verified graph replay it; the first batch of a new shape is recorded and
    verified (see the module documentation), and any batch whose shape cannot be captured
    runs the ordinary Pyro path. ``reasons`` records why a shape was refused.

    Run it with Pyro's validation disabled (as :func:`pyro_vae.fit` does after its fully
    validated first evaluation): validation reads tensor values into Python and so makes
    the program uncapturable.

    :param loss_fn: the ELBO as a module, ``elbo(model, guide)``.
    :param params: the trainable parameters (leaf tensors), e.g. module parameters and
        ``pyro.param`` values.
    :param modules: the modules whose buffers the program reads (passed to the graph as
        inputs, so in-place updates and ``load_state_dict`` are seen).
    :param max_graphs: the most input shapes to capture; later shapes run the Pyro path.
    :param rtol: relative tolerance of the verification.
    :param compile: also compile each verified graph with TorchInductor (see the module
        documentation); a shape whose compilation or its verification fails replays its
        uncompiled graph, and ``compile_reasons`` says why.
    :param compile_rtol: relative tolerance of a compiled graph's verification.
    """

    def __init__(
        self,
        loss_fn: Callable[..., torch.Tensor],
        params: Sequence[torch.Tensor],
        modules: Sequence[nn.Module] = (),
        *,
        max_graphs: int = 2,
        rtol: float = 1e-5,
        compile: bool = False,
        compile_rtol: float = 1e-4,
    ) -> None:
        self.loss_fn = loss_fn
        self.params = list(params)
        self.buffers = [b for m in modules for b in m.buffers()]
        self.max_graphs = max_graphs
        self.rtol = rtol
        self.compile, self.compile_rtol = compile, compile_rtol
        self.graphs: dict[tuple, fx.GraphModule] = {}
        self.reasons: dict[tuple, str] = {}
        #: the compiled graphs, and why a shape's graph was not compiled.
        self.compiled: dict[tuple, Callable[..., Any]] = {}
        self.compile_reasons: dict[tuple, str] = {}
        #: wall-clock seconds spent compiling and verifying compiled graphs.
        self.compile_seconds = 0.0
        self._replays: dict[tuple, Callable[..., Any]] = {}
        #: number of steps that replayed a graph / ran the Pyro path.
        self.num_captured_steps = 0
        self.num_pyro_steps = 0

    # ----------------------------------------------------------------- public

    def step(self, x: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """One loss-and-gradient evaluation; returns the detached loss."""
        key = _input_key(x, kwargs)
        graph = self._replays.get(key)
        if graph is None and key not in self.reasons:
            graph = self._capture(key, x, kwargs)
        if graph is None:
            self.num_pyro_steps += 1
            loss = self.loss_fn(x, **kwargs)
            for p in self.params:
                p.grad = None
            loss.backward()
            return loss.detach()
        self.num_captured_steps += 1
        with torch.no_grad():
            grads, loss = graph(self.params, self.buffers, x, kwargs)
        for p, g in zip(self.params, grads, strict=True):
            # dense, like autograd's own gradients, so in-place use (all_reduce) is safe
            p.grad = g if g is None or g.is_contiguous() else g.contiguous()
        return loss

    # ----------------------------------------------------------------- capture

    def _traced(
        self,
        params: list[torch.Tensor],
        buffers: list[torch.Tensor],
        x: torch.Tensor,
        kwargs: dict[str, torch.Tensor],
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        # ``params`` and ``buffers`` are the very tensors the modules hold, so when the
        # program reads them they are recognised as graph inputs, not constants.
        loss = self.loss_fn(x, **kwargs)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return list(grads), loss.detach()

    def _capture(
        self, key: tuple, x: torch.Tensor, kwargs: dict[str, torch.Tensor]
    ) -> Callable[..., Any] | None:
        if len(self.graphs) >= self.max_graphs:
            self.reasons[key] = f"more than max_graphs={self.max_graphs} input shapes"
            return None
        devices = [x.device] if x.device.type == "cuda" else []
        saved_buffers = [b.detach().clone() for b in self.buffers]
        try:
            with torch.random.fork_rng(devices=devices):  # capture draws no training randomness
                with _tensor_valued_elbo(), torch.enable_grad():
                    graph = make_fx(
                        lambda p, b, x, kw: self._traced(p, b, x, kw),
                        decomposition_table=_cpu_decompositions() if x.device.type == "cpu" else {},
                    )(self.params, self.buffers, x, kwargs)
                graph.graph.eliminate_dead_code()
                graph.recompile()
                _check_graph(graph, _storages([*self.params, *self.buffers]))
                self._verify(graph, x, kwargs, self.rtol)
                replay = self._compile(key, graph, x, kwargs) if self.compile else None
        except CaptureError as e:
            self.reasons[key] = str(e)
            return None
        except Exception as e:  # recording failed: the Pyro path still works
            first_line = str(e).strip().split("\n")[0]
            self.reasons[key] = f"recording failed: {type(e).__name__}: {first_line}"
            return None
        finally:  # recording and verification ran the program: undo any buffer updates
            with torch.no_grad():
                for b, value in zip(self.buffers, saved_buffers, strict=True):
                    b.copy_(value)
        self.graphs[key] = graph
        self._replays[key] = replay or graph
        return self._replays[key]

    def _compile(
        self, key: tuple, graph: fx.GraphModule, x: torch.Tensor, kwargs: dict[str, torch.Tensor]
    ) -> Callable[..., Any] | None:
        """The compiled graph, verified; ``None`` (and a reason) where that fails."""
        started = time.perf_counter()
        try:
            inputs = [self.params, self.buffers, x, kwargs]
            compiled = compile_graph(graph, inputs, cpu=x.device.type == "cpu")
            self._verify(compiled, x, kwargs, self.compile_rtol)
        except CaptureError as e:
            self.compile_reasons[key] = f"compiled graph refused: {e}"
            return None
        except Exception as e:  # no C++ compiler, an unsupported operation, ...
            first_line = str(e).strip().split("\n")[0]
            self.compile_reasons[key] = f"compilation failed: {type(e).__name__}: {first_line}"
            return None
        finally:
            self.compile_seconds += time.perf_counter() - started
        self.compiled[key] = compiled
        return compiled

    def _verify(
        self,
        graph: Callable[..., Any],
        x: torch.Tensor,
        kwargs: dict[str, torch.Tensor],
        rtol: float,
    ) -> None:
        start = _rng_states(x.device)
        ref_loss = self.loss_fn(x, **kwargs)
        ref_grads = torch.autograd.grad(ref_loss, self.params, allow_unused=True)
        after_ref = _rng_states(x.device)
        _set_rng_states(x.device, start)
        with torch.no_grad():
            grads, loss = graph(self.params, self.buffers, x, kwargs)
        after_graph = _rng_states(x.device)
        if not all(torch.equal(a, b) for a, b in zip(after_ref, after_graph, strict=True)):
            raise CaptureError("the graph draws random numbers differently from the Pyro path")
        if not _close(ref_loss.detach(), loss, rtol):
            raise CaptureError(
                f"the graph's loss {float(loss):.6g} differs from Pyro's {float(ref_loss):.6g}"
            )
        for i, (a, b) in enumerate(zip(ref_grads, grads, strict=True)):
            if not _close(a, b, rtol):
                raise CaptureError(f"the gradient of parameter {i} differs from Pyro's")
