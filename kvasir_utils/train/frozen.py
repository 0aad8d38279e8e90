"""The frozen part of a stage's model put to use: validation on kept frozen outputs (the model's
computation split with torch.fx where its trainable part begins, and the validation passes of a stage
that reuse what the frozen start gives the validation images, checked bit for bit), and frozen
BatchNorms folded into their convolutions for the compiled training step.
"""

from __future__ import annotations

import collections
import copy
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kvasir_utils.train.hardware import Runtime, to_device

FOLDED_PAIRS = ((nn.Conv2d, nn.BatchNorm2d),)


class _LeafTracer(torch.fx.Tracer):
    """Every module without children, or with parameters or buffers of its own (timm's BatchNormAct2d),
    is one call: its own ``forward`` runs at run time, so what it decides by ``self.training``
    (dropout, stochastic depth, a BatchNorm's statistics) is decided then, and tracing never runs
    code that changes a buffer. Buffers read while tracing are proxies, not the tensors."""

    proxy_buffer_attributes = True

    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        owns = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
        return owns or not list(module.children()) or super().is_leaf_module(module, name)


def _trace(model: nn.Module) -> torch.fx.Graph | None:
    """``model``'s graph, the same in training and in eval mode (a container that branches on
    ``self.training`` would be fixed in one mode, so such a model is not traced: None); the modes of
    its modules are left as they were."""
    modes = {module: module.training for module in model.modules()}
    try:
        graphs = []
        for training in (True, False):
            model.train(training)
            graphs.append(_LeafTracer().trace(model))
    except Exception:  # noqa: BLE001 - a model torch.fx cannot trace trains unfolded
        return None
    finally:
        for module, training in modes.items():
            module.training = training
    return graphs[0] if graphs[0].python_code("self").src == graphs[1].python_code("self").src else None


def fold_frozen_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """``model`` for a stage's training step with each convolution whose output only a BatchNorm
    reads folded into one convolution (``torch.nn.utils.fusion.fuse_conv_bn_weights``), where neither
    has a trainable parameter and the BatchNorm keeps running statistics: in training such a
    BatchNorm is in eval mode (``train.frozen_batchnorm: eval``), an affine map that the convolution
    can carry. Traced with torch.fx (``_trace``); every module not folded is ``model``'s own (shared,
    not copied), so a step trains ``model`` and its checkpoint keeps the unfolded form; ``model`` is
    not changed. Returns the module and the number of pairs folded; ``model`` itself and 0 when it
    cannot be traced the same in both modes or nothing folds (timm's BatchNormAct2d is no plain pair).

    Measured on EfficientNet-B0 (224 px, batch 32, bf16, 2 cores of an AMD EPYC with AVX512-BF16),
    compiled with and without folding, paired: 1.47x the training steps per second with only the
    head training, 1.30x with ``last_tensors:10``. Eager, it gains nothing (0.97x and 1.07x)."""
    graph = _trace(model)
    if graph is None:
        return model, 0
    traced = torch.fx.GraphModule(model, graph)
    modules = dict(traced.named_modules())
    calls = collections.Counter(node.target for node in traced.graph.nodes if node.op == "call_module")
    folded, folded_targets = 0, set()
    for node in list(traced.graph.nodes):
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not isinstance(source, torch.fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        if calls[source.target] != 1 or calls[node.target] != 1 or source.target in folded_targets:
            continue  # a module called twice, or a convolution already carrying a BatchNorm
        conv, norm = modules[source.target], modules[node.target]
        if (type(conv), type(norm)) not in FOLDED_PAIRS or not norm.track_running_stats or any(
                p.requires_grad for p in (*conv.parameters(), *norm.parameters())):
            continue
        parent, _, name = source.target.rpartition(".")
        if parent and traced.get_submodule(parent) is model.get_submodule(parent):
            continue  # a container of the model itself: replacing in it would change the model
        setattr(traced.get_submodule(parent) if parent else traced, name, _folded(conv, norm))
        folded_targets.add(source.target)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        folded += 1
    if not folded:
        return model, 0
    traced.recompile()
    return traced, folded


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A new frozen convolution computing ``norm(conv(x))`` with the BatchNorm's running statistics."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                                        norm.weight, norm.bias)
    fused.weight, fused.bias = (nn.Parameter(t.detach(), requires_grad=False) for t in (weight, bias))
    return fused


def split_frozen(model: nn.Module, for_training: bool = False
                 ) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule] | None:
    """The model's computation in two parts: ``prefix``, everything that no trainable parameter
    reaches, returning a tuple of the values the rest needs, and ``suffix``, taking those values and
    returning the logits, so ``suffix(*prefix(x))`` runs exactly ``model(x)``'s operations. Traced
    with torch.fx in eval mode (for validation and prediction), or, ``for_training``, with every
    module that decides by its mode a call of its own (``_trace``: dropout and stochastic depth act as
    the mode they are run in). Shares every module with ``model``, which is not changed. None when
    the model cannot be traced or nothing before the first trainable parameter is worth keeping
    (everything trains)."""
    if for_training:
        graph = _trace(model)
        if graph is None:
            return None
        traced = torch.fx.GraphModule(model, graph)
    else:
        was_training = model.training
        model.eval()
        try:
            traced = torch.fx.symbolic_trace(model)
        except Exception:  # noqa: BLE001 - any model torch.fx cannot trace simply runs whole
            return None
        finally:
            model.train(was_training)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}

    def reaches_trainable(node: torch.fx.Node) -> bool:
        if node.op in ("call_module", "get_attr"):
            return any(n == node.target or n.startswith(node.target + ".") for n in trainable)
        return False

    frozen: set[torch.fx.Node] = set()  # nodes computed from the input by frozen operations only
    for node in traced.graph.nodes:
        inputs = node.all_input_nodes
        if node.op == "placeholder" or (node.op not in ("output", "get_attr") and not reaches_trainable(node)
                                        and inputs and all(i in frozen or i.op == "get_attr" for i in inputs)
                                        and any(i in frozen for i in inputs)):
            frozen.add(node)
    rest = [n for n in traced.graph.nodes if n not in frozen and n.op != "placeholder"]
    boundary = list(dict.fromkeys(i for n in rest for i in n.all_input_nodes if i in frozen))
    if any(n.op == "placeholder" for n in boundary):
        return None  # the rest needs the input itself: nothing worth keeping

    prefix_graph, env = torch.fx.Graph(), {}
    for node in traced.graph.nodes:
        if node in frozen or (node.op == "get_attr" and any(u in frozen for u in node.users)):
            env[node] = prefix_graph.node_copy(node, lambda n: env[n])
    prefix_graph.output(tuple(env[n] for n in boundary))
    suffix_graph, env = torch.fx.Graph(), {}
    for i, node in enumerate(boundary):
        env[node] = suffix_graph.placeholder(f"boundary_{i}")
    for node in rest:
        env[node] = suffix_graph.node_copy(node, lambda n: env[n])
    return torch.fx.GraphModule(traced, prefix_graph), torch.fx.GraphModule(traced, suffix_graph)


class ChunkedFrozen(nn.Module):
    """A training step's model that runs its frozen part (``prefix``, under no_grad) on ``chunk``
    images at a time and the rest (``suffix``) on the whole batch, so the loss, the gradients and the
    optimizer step are the whole batch's. Each image's frozen computation is its own (BatchNorms in
    eval mode, folded): what differs from the whole model is rounding, and the order in which the
    frozen part's dropout and stochastic depth (EfficientNet's, in training) draw for the images.
    Built by ``chunked``."""

    def __init__(self, prefix: nn.Module, suffix: nn.Module, chunk: int):
        super().__init__()
        self.prefix, self.suffix, self.chunk = prefix, suffix, chunk

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            parts = [self.prefix(part) for part in images.split(self.chunk)]
        return self.suffix(*(torch.cat(values) for values in zip(*parts)))


def _batch_values(prefix: nn.Module, image_size: int) -> bool:
    """Whether every value ``prefix`` hands on is a tensor with one row per image (a batch size
    handed on as a number, as a ViT's reshape may, would be the chunk's): one eager pass on 2 and 3
    small images in eval mode, with torch's random state and each module's mode restored."""
    modes = {module: module.training for module in prefix.modules()}
    prefix.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng():
            device = next(prefix.parameters()).device
            return all(isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n
                       for n in (2, 3) for v in prefix(torch.zeros(n, 3, image_size, image_size, device=device)))
    except Exception:  # noqa: BLE001 - a prefix that cannot run on these images is not chunked
        return False
    finally:
        for module, training in modes.items():
            module.training = training


def chunked(model: nn.Module, chunk: int, batch_size: int, image_size: int, compile_part) -> ChunkedFrozen | None:
    """``model`` (a stage's training form) as a ``ChunkedFrozen``, its two parts passed through
    ``compile_part`` (``hardware.compiled``), where it applies: ``chunk`` is at least 1 and less than
    the batch, the model splits where its trainable part begins (``split_frozen(for_training=True)``)
    with no trainable parameter in the frozen part (a parameter the model reads directly, such as a
    ViT's position embedding, would get no gradient under no_grad), and every value its frozen part
    hands on has one row per image. Else None (the step runs whole). On a CPU the frozen part's
    activations for a few images stay in the core's cache; what that gains is in docs/performance.md."""
    if not 1 <= chunk < batch_size:
        return None
    parts = split_frozen(model, for_training=True)
    if parts is None or any(p.requires_grad for p in parts[0].parameters()) or not _batch_values(parts[0], image_size):
        return None
    return ChunkedFrozen(compile_part(parts[0]), compile_part(parts[1]), chunk)


class ValidationFeatures:
    """The validation passes of a stage that freezes the start of the network. Every pass runs
    ``model(x)``'s operations split in two (``split_frozen``): the frozen part's outputs for
    the validation images are computed on the first pass and kept (up to ``max_bytes``), and later
    passes run only the rest while the frozen part's weights and buffers are unchanged, checked bit
    for bit against a copy at every pass (BatchNorm statistics that move,
    ``train.frozen_batchnorm=train``, are noticed and recomputed). The results are the same bits as
    whole forward passes; a stage that trains only the head then pays one linear layer a pass."""

    def __init__(self, model: nn.Module, max_bytes: int = 4 * 2**30):
        self.parts = split_frozen(model)
        self.max_bytes = max_bytes
        self.saved: dict[str, torch.Tensor] | None = None
        self.batches: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]] = []
        self.source = None  # (loader, precision, device) the kept outputs came from
        self.keep = True  # false once the frozen part changed between passes: keeping would not pay
        self.computed = 0  # passes that ran the frozen part (for the tests and the bench)

    @classmethod
    def for_model(cls, model: nn.Module) -> ValidationFeatures | None:
        """None for a model with nothing frozen at its start (or that torch.fx cannot trace)."""
        features = cls(model)
        return features if features.parts is not None else None

    def _frozen_state(self) -> dict[str, torch.Tensor]:
        return self.parts[0].state_dict()

    def _unchanged(self, source) -> bool:
        if self.saved is None or source != self.source:
            return False
        state = self._frozen_state()
        same = state.keys() == self.saved.keys() and all(torch.equal(v, self.saved[k]) for k, v in state.items())
        self.keep = same  # BatchNorm statistics that move (frozen_batchnorm=train): stop keeping
        return same

    @torch.inference_mode()
    def predict(self, loader, runtime: Runtime, desc: str) -> tuple[np.ndarray, np.ndarray, float]:
        prefix, suffix = self.parts
        prefix.eval()
        suffix.eval()
        start, probs = time.perf_counter(), []
        source = (id(loader), runtime.precision, runtime.device)
        if self._unchanged(source):
            for values, _ in self.batches:
                with runtime.autocast():
                    probs.append(torch.softmax(suffix(*values).float(), dim=1).cpu())
            targets = torch.cat([t for _, t in self.batches])
            return torch.cat(probs).numpy(), targets.numpy(), time.perf_counter() - start
        self.batches, self.saved, self.source = [], None, source  # free what was kept before
        kept, batches, targets = 0, [] if self.keep else None, []
        for images, batch_targets in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=2):
            with runtime.autocast():
                values = prefix(to_device(images, runtime))
                probs.append(torch.softmax(suffix(*values).float(), dim=1).cpu())
            targets.append(batch_targets)
            tensors = all(isinstance(v, torch.Tensor) for v in values)
            kept += sum(v.numel() * v.element_size() for v in values) if tensors else self.max_bytes + 1
            if batches is not None and kept <= self.max_bytes:
                batches.append((values, batch_targets))
            else:
                batches = None  # too large to keep: every pass runs whole
        self.computed += 1
        self.batches = batches or []
        self.saved = {k: v.clone() for k, v in self._frozen_state().items()} if batches else None
        return torch.cat(probs).numpy(), torch.cat(targets).numpy(), time.perf_counter() - start
