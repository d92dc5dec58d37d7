"""Train a deep ensemble with torch (CPU) and write it as one fused, verified ONNX graph.

Each of the K members gets its own bootstrap resample of the data and its own
random initialisation (Lakshminarayanan et al. 2017); optionally each also gets
a fixed random *prior* network added to its output (Osband et al. 2018,
"Randomized prior functions"), which keeps members apart where there is no data.
All K members train at once as one batched network (``[K, batch, in] x [K, in,
out]``), so K costs little more than 1 on a CPU.

Input standardisation and output scaling are folded into the first and last
layer, and a prior network into a block-diagonal layer of twice the width, so
every member is a plain MLP that :mod:`interlock.ensembles.compile` stacks into
one batched MatMul per layer. The fused graph is verified against the members
exactly as ``interlock ensemble compile`` does.

torch is imported lazily: install the ``train`` extra (``pip install 'interlock[train]'``).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interlock.ensembles.common import META_KIND, META_STATE_SCALE, EnsembleError
from interlock.ensembles.compile import CompileReport, fuse, verify
from interlock.ensembles.data import KINDS, Transitions, discounted_returns, load_transitions
from interlock.ensembles.mlp import ACTIVATIONS, mlp_member


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_ensemble` (the CLI flags of ``interlock ensemble train``)."""

    kind: str
    members: int = 5
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    prior_scale: float = 0.0
    bootstrap: bool = True
    gamma: float = 0.99
    n_actions: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    #: torch CPU threads; 1 is fastest for these small batched MLPs (2 threads measured 20x slower here).
    threads: int = 1


@dataclass
class TrainReport:
    """Losses (in standardised units) per member, and the compile/verification result."""

    kind: str
    members: int
    samples: int
    train_loss: list[float]
    val_loss: list[float]
    seconds: float
    compile: CompileReport
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"trained {self.members} {self.kind} members on {self.samples} samples in {self.seconds:.1f} s",
            "loss per member (standardised): train "
            + ", ".join(f"{v:.4f}" for v in self.train_loss)
            + "; held-out "
            + ", ".join(f"{v:.4f}" for v in self.val_loss),
            *self.notes,
            self.compile.summary(),
            f"wrote {self.compile.path}",
        ]
        return "\n".join(lines)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise EnsembleError(
            "training needs torch, which is not installed: pip install 'interlock[train]' "
            "(the CPU build is enough)"
        ) from None
    return torch


@dataclass
class _Problem:
    x_obs: np.ndarray  # [N, obs_dim]
    x_extra: np.ndarray | None  # [N, extra] one-hot or box action (dynamics)
    y: np.ndarray  # targets: [N, out] float, or [N] int (policy)
    mask: np.ndarray | None  # [N, out] which outputs have a target (q with taken-action targets)
    out_dim: int
    loss: str  # "mse" or "ce"
    n_actions: int | None
    act_dim: int | None
    y_mean: np.ndarray  # [out]
    y_std: np.ndarray  # [out]
    notes: list[str]


def _n_actions(data: Transitions, cfg: TrainConfig) -> int:
    if not data.discrete:
        raise EnsembleError(
            f"{data.source}: --kind {cfg.kind} needs discrete actions ([N] integers); 'action' has shape "
            f"{list(data.action.shape)} and dtype {data.action.dtype}"
        )
    seen = int(data.action.max()) + 1
    if data.action.min() < 0:
        raise EnsembleError(f"{data.source}: 'action' has negative indices")
    n = cfg.n_actions or seen
    if seen > n:
        raise EnsembleError(f"{data.source}: 'action' holds index {seen - 1} but --actions is {n}")
    return n


def _problem(data: Transitions, cfg: TrainConfig) -> _Problem:
    notes: list[str] = []
    if cfg.kind == "q":
        n = _n_actions(data, cfg)
        target = data.get("q_target")
        if target is None:
            reward = data.get("reward")
            if reward is None:
                raise EnsembleError(
                    f"{data.source}: --kind q needs 'q_target' ([N] or [N, n_actions]) or 'reward' "
                    f"to compute "
                    "discounted returns from"
                )
            target = discounted_returns(reward, data.episodes(), cfg.gamma)
            notes.append(f"Q targets: discounted returns (gamma {cfg.gamma}) of the logged behaviour")
        target = np.asarray(target, np.float64)
        if target.ndim == 1:
            y = np.zeros((len(data), n))
            mask = np.zeros((len(data), n), bool)
            rows = np.arange(len(data))
            y[rows, data.action] = target
            mask[rows, data.action] = True
            mean, std = np.full(n, target.mean()), np.full(n, target.std() + 1e-6)
        elif target.shape[1] == n:
            y, mask = target, None
            mean, std = np.full(n, target.mean()), np.full(n, target.std() + 1e-6)
        else:
            raise EnsembleError(
                f"{data.source}: 'q_target' has shape {list(target.shape)}; expected [N] or [N, {n}]"
            )
        return _Problem(data.obs, None, y, mask, n, "mse", n, None, mean, std, notes)
    if cfg.kind == "policy":
        labels = data.get("action_label")
        labels = data.action if labels is None else np.asarray(labels)
        n = _n_actions(Transitions(data.obs, labels, data.arrays, data.source), cfg)
        return _Problem(
            data.obs, None, labels.astype(np.int64), None, n, "ce", n, None, np.zeros(n), np.ones(n), notes
        )
    if cfg.kind == "dynamics":
        nxt = data.get("next_obs")
        if nxt is None:
            raise EnsembleError(f"{data.source}: --kind dynamics needs 'next_obs' [N, obs_dim]")
        delta = np.asarray(nxt, np.float64).reshape(len(data), -1) - data.obs
        if delta.shape[1] != data.obs.shape[1]:
            raise EnsembleError(
                f"{data.source}: 'next_obs' has {delta.shape[1]} columns, 'obs' has {data.obs.shape[1]}"
            )
        # Terminal transitions of gymnasium envs are real steps; keep them.
        n_actions: int | None = None
        act_dim: int | None = None
        if data.discrete:
            n_actions = _n_actions(data, cfg)
            extra = np.eye(n_actions)[data.action]
        else:
            extra = np.asarray(data.action, np.float64).reshape(len(data), -1)
            act_dim = extra.shape[1]
        std = delta.std(axis=0)
        std = np.maximum(std, 1e-6 * max(float(std.max()), 1e-6))
        return _Problem(
            data.obs, extra, delta, None, delta.shape[1], "mse", n_actions, act_dim, delta.mean(0), std, notes
        )
    raise EnsembleError(f"--kind must be one of {', '.join(KINDS)}, not '{cfg.kind}'")


def _init_layers(torch, k: int, sizes: list[int], gen) -> list[tuple]:
    """PyTorch-Linear-style uniform init, independently per member: ``[(W [K,in,out], b [K,1,out])]``."""
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(k, fan_in, fan_out, generator=gen) * 2 - 1) * bound
        b = (torch.rand(k, 1, fan_out, generator=gen) * 2 - 1) * bound
        layers.append((w, b))
    return layers


def _forward(torch, layers, x, act):
    for i, (w, b) in enumerate(layers):
        x = torch.baddbmm(b, x, w)
        if i < len(layers) - 1:
            x = act(x)
    return x


class _Adam:
    """Adam (Kingma & Ba 2015, L2 weight decay as torch.optim.Adam) in a few lines.

    ``torch.optim`` pulls in torch._dynamo on first use, about 3 s of start-up on a
    small CPU: longer than training a small ensemble.
    """

    def __init__(
        self,
        torch,
        params,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.torch, self.params, self.lr, self.wd, self.betas, self.eps = (
            torch,
            params,
            lr,
            weight_decay,
            betas,
            eps,
        )
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        with self.torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v, strict=True):
                g = p.grad if not self.wd else p.grad + self.wd * p
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)


def _member_layers(
    trained: list[tuple[np.ndarray, np.ndarray]],
    prior: list[tuple[np.ndarray, np.ndarray]] | None,
    beta: float,
    x_mean: np.ndarray,
    x_std: np.ndarray,
    y_mean: np.ndarray,
    y_std: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One member as a plain MLP: prior folded in block-diagonally, normalisation folded into the ends."""
    if prior is None:
        layers = [(w.copy(), b.copy()) for w, b in trained]
    else:
        layers = []
        last = len(trained) - 1
        for i, ((wf, bf), (wp, bp)) in enumerate(zip(trained, prior, strict=True)):
            if i == 0:
                w, b = np.concatenate([wf, wp], axis=1), np.concatenate([bf, bp])
            elif i < last:
                w = np.block(
                    [[wf, np.zeros((wf.shape[0], wp.shape[1]))], [np.zeros((wp.shape[0], wf.shape[1])), wp]]
                )
                b = np.concatenate([bf, bp])
            else:
                w, b = np.concatenate([wf, beta * wp], axis=0), bf + beta * bp
            layers.append((w, b))
    w0, b0 = layers[0]
    layers[0] = (w0 / x_std[:, None], b0 - (x_mean / x_std) @ w0)
    wl, bl = layers[-1]
    layers[-1] = (wl * y_std[None, :], bl * y_std + y_mean)
    return layers


def train_ensemble(
    data: str | Path | dict[str, np.ndarray] | Transitions,
    output: str | Path,
    cfg: TrainConfig,
    progress: bool = True,
    members_dir: str | Path | None = None,
) -> TrainReport:
    """Train ``cfg.members`` members on ``data`` and write the fused ensemble to ``output``.

    Args:
        data: A transitions ``.npz`` path, a dict of arrays, or loaded :class:`Transitions`.
        output: Where the fused ``.onnx`` goes (written only after verification).
        cfg: Hyper-parameters.
        progress: Show a tqdm progress bar.
        members_dir: If given, also write each member there as ``member_<k>.onnx``.

    Raises:
        EnsembleError: torch missing, bad data for the kind, or a failed verification.
    """
    torch = _import_torch()
    from tqdm import tqdm

    if cfg.members < 2:
        raise EnsembleError(f"--members must be at least 2 (got {cfg.members}): one model has no spread")
    if cfg.activation not in ACTIVATIONS:
        raise EnsembleError(f"--activation must be one of {', '.join(ACTIVATIONS)}, not '{cfg.activation}'")
    if not cfg.hidden:
        raise EnsembleError("--hidden needs at least one hidden layer size")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    ds = data if isinstance(data, Transitions) else load_transitions(data)
    prob = _problem(ds, cfg)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    x_parts = [prob.x_obs]
    obs_mean, obs_std = prob.x_obs.mean(0), prob.x_obs.std(0) + 1e-6
    x_mean, x_std = obs_mean, obs_std
    if prob.x_extra is not None:
        x_parts.append(prob.x_extra)
        if prob.n_actions is None:  # box action: standardise too
            a_mean, a_std = prob.x_extra.mean(0), prob.x_extra.std(0) + 1e-6
        else:  # one-hot stays as is
            a_mean, a_std = np.zeros(prob.x_extra.shape[1]), np.ones(prob.x_extra.shape[1])
        x_mean, x_std = np.concatenate([obs_mean, a_mean]), np.concatenate([obs_std, a_std])
    x = (np.concatenate(x_parts, axis=1) - x_mean) / x_std
    n = len(x)
    perm = rng.permutation(n)
    n_val = round(cfg.val_fraction * n) if n >= 20 else 0
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    k = cfg.members
    boot = (
        np.stack([rng.choice(fit_idx, size=len(fit_idx), replace=True) for _ in range(k)])
        if cfg.bootstrap
        else np.stack([fit_idx] * k)
    )

    xt = torch.as_tensor(x, dtype=torch.float32)
    if prob.loss == "ce":
        yt = torch.as_tensor(prob.y, dtype=torch.int64)
    else:
        yt = torch.as_tensor((prob.y - prob.y_mean) / prob.y_std, dtype=torch.float32)
    mt = None if prob.mask is None else torch.as_tensor(prob.mask, dtype=torch.float32)

    sizes = [x.shape[1], *cfg.hidden, prob.out_dim]
    params = [torch.nn.Parameter(t) for layer in _init_layers(torch, k, sizes, gen) for t in layer]
    layers = [(params[2 * i], params[2 * i + 1]) for i in range(len(sizes) - 1)]
    prior = None
    if cfg.prior_scale > 0:
        prior_sizes = [x.shape[1], *cfg.hidden, prob.out_dim]
        prior = _init_layers(torch, k, prior_sizes, gen)
    act = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[cfg.activation]
    opt = _Adam(torch, params, cfg.lr, cfg.weight_decay)

    def predict(xb):  # xb [K, B, in]
        out = _forward(torch, layers, xb, act)
        if prior is not None:
            with torch.no_grad():
                p = _forward(torch, prior, xb, act)
            out = out + cfg.prior_scale * p
        return out

    def loss_of(out, idx):  # out [K, B, out]; idx [K, B] rows; returns [K]
        if prob.loss == "ce":
            logp = torch.log_softmax(out, dim=-1)
            return -logp.gather(-1, yt[idx].unsqueeze(-1)).squeeze(-1).mean(dim=1)
        err = (out - yt[idx]) ** 2
        if mt is not None:
            m = mt[idx]
            return (err * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp(min=1)
        return err.mean(dim=(1, 2))

    bs = min(cfg.batch_size, len(fit_idx))
    steps = max(1, len(fit_idx) // bs)
    bar = tqdm(range(cfg.epochs), desc=f"training {k} {cfg.kind} members", unit="epoch", disable=not progress)
    train_loss = torch.zeros(k)
    for _ in bar:
        order = np.stack([rng.permutation(boot.shape[1]) for _ in range(k)])
        running = torch.zeros(k)
        for s in range(steps):
            idx = torch.as_tensor(np.take_along_axis(boot, order[:, s * bs : (s + 1) * bs], axis=1))
            out = predict(xt[idx])
            per_member = loss_of(out, idx)
            opt.zero_grad()
            per_member.sum().backward()
            opt.step()
            running += per_member.detach()
        train_loss = running / steps
        bar.set_postfix(loss=f"{float(train_loss.mean()):.4f}")
    with torch.no_grad():
        if n_val:
            vidx = torch.as_tensor(np.stack([val_idx] * k))
            val_loss = loss_of(predict(xt[vidx]), vidx).tolist()
        else:
            val_loss = [float("nan")] * k

    members = []
    for m in range(k):
        trained = [(w[m].detach().double().numpy(), b[m, 0].detach().double().numpy()) for w, b in layers]
        pr = None if prior is None else [(w[m].double().numpy(), b[m, 0].double().numpy()) for w, b in prior]
        mlayers = _member_layers(trained, pr, cfg.prior_scale, x_mean, x_std, prob.y_mean, prob.y_std)
        model = mlp_member(mlayers, cfg.activation, cfg.kind, ds.obs.shape[1], prob.n_actions, prob.act_dim)
        members.append((f"#{m}", model))
    if members_dir is not None:
        import onnx

        d = Path(members_dir)
        d.mkdir(parents=True, exist_ok=True)
        for m, (_, model) in enumerate(members):
            onnx.save(model, str(d / f"member_{m}.onnx"))
    fused, why = fuse(members, "auto")
    import onnx

    meta = {META_KIND: cfg.kind}
    if cfg.kind == "dynamics":
        meta[META_STATE_SCALE] = json.dumps([float(v) for v in prob.y_std])
    for key, value in meta.items():
        fused.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    # Verification inputs: random ones and real rows (discrete actions are valid indices either way).
    # Standard-normal inputs would sit far outside the data (an angle of std 0.02 fed N(0, 1)), where
    # huge cancelling terms make float32 rounding, not the fusion, dominate: check on real rows.
    feeds = []
    for size in (1, 7, 256):
        rows = rng.choice(n, size=min(n, size), replace=False)
        real = {"obs": ds.obs[rows].astype(np.float32)}
        if cfg.kind == "dynamics":
            real["action"] = ds.action[rows].astype(np.int64 if ds.discrete else np.float32)
        feeds.append(real)
    # Tolerance 1e-5 in standardised output units: the members compute in those and scale by the
    # target std at the end (a Q std of 30 makes float32 rounding 30x larger in absolute terms).
    atol = 1e-5 * max(1.0, float(np.max(prob.y_std)))
    diff, shapes = verify(fused, members, batches=(), seed=cfg.seed, feeds=feeds, atol=atol)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(fused, str(out))
    report = CompileReport(
        k,
        "stacked" if not why else "parallel",
        why,
        diff,
        atol,
        shapes,
        str(out),
        checked_on="rows of the training data (batches of 1, 7 and 256)",
    )
    notes = list(prob.notes)
    if cfg.prior_scale > 0:
        notes.append(f"randomized priors: scale {cfg.prior_scale:g} (folded into each member)")
    if not cfg.bootstrap:
        notes.append("no bootstrap: members differ by initialisation and data order only")
    return TrainReport(
        cfg.kind,
        k,
        n,
        [float(v) for v in train_loss],
        [float(v) for v in val_loss],
        time.perf_counter() - start,
        report,
        notes,
    )
