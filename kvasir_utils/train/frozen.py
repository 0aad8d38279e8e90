"""Validation on kept frozen outputs: a model's computation split (torch.fx) where its trainable part
begins, and the validation passes of a stage that reuse what the frozen start gives the validation
images, checked bit for bit.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kvasir_utils.train.hardware import Runtime, to_device


def split_frozen(model: nn.Module) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule] | None:
    """The model's computation in two parts: ``prefix``, everything that no trainable parameter
    reaches, returning a tuple of the values the rest needs, and ``suffix``, taking those values and
    returning the logits, so ``suffix(*prefix(x))`` runs exactly ``model(x)``'s operations. Traced
    with torch.fx in eval mode (for validation and prediction only) and sharing every module with
    ``model``, which is not changed. None when the model cannot be traced or nothing before the
    first trainable parameter is worth keeping (everything trains)."""
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
