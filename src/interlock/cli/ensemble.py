"""CLI for ensembles: ``interlock ensemble compile|train`` and ``interlock calibrate``.

Registered by :mod:`interlock.cli.main` through ``register(subparsers)``. An
:class:`~interlock.ensembles.common.EnsembleError` (a bad member file, unusable data) is a problem
with the inputs: a :class:`~interlock.cli.errors.UsageError`, exit status 2.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

from interlock.cli.errors import UsageError
from interlock.ensembles.common import EnsembleError


def _inputs_checked(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except EnsembleError as e:
            raise UsageError(e.message) from None

    return run


def _cmd_compile(args: argparse.Namespace) -> int:
    from interlock.ensembles.compile import compile_ensemble

    report = compile_ensemble(
        args.members,
        args.output,
        strategy=args.strategy,
        atol=args.atol,
        kind=args.kind,
        seed=args.seed,
        int_high=args.int_high,
    )
    print(report.summary())
    print(f"wrote {report.path}")
    return 0


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden takes comma-separated sizes such as 64,64, not '{text}'"
        ) from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError("--hidden needs positive sizes such as 64,64")
    return sizes


def _cmd_train(args: argparse.Namespace) -> int:
    from interlock.ensembles.train import TrainConfig, train_ensemble

    cfg = TrainConfig(
        kind=args.kind,
        members=args.members,
        hidden=args.hidden,
        activation=args.activation,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        prior_scale=args.prior_scale,
        bootstrap=not args.no_bootstrap,
        gamma=args.gamma,
        n_actions=args.actions,
        seed=args.seed,
        threads=args.threads,
    )
    report = train_ensemble(
        args.data, args.output, cfg, progress=not args.quiet, members_dir=args.members_dir
    )
    print(report.summary())
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from interlock.monitors.calibrate import calibrate

    report = calibrate(
        args.config,
        args.agent,
        args.data,
        rate=args.false_alarm_rate,
        holdout=args.holdout,
        seed=args.seed,
        monitors=args.monitor or None,
        output=args.output,
        episode_rate=args.episode_false_alarm_rate,
        env=args.env,
        policy=args.policy,
        episodes=args.episodes,
        env_seed=args.env_seed,
        policy_output=args.policy_output,
        progress=not args.quiet,
        group_by=args.group_by,
        intervention_budget=args.intervention_budget,
        joint=args.joint,
        under_rules=args.under_rule or None,
    )
    print(report.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ensemble`` (compile, train) and ``calibrate`` to the ``interlock`` command."""
    ens = sub.add_parser(
        "ensemble",
        help="fuse or train uncertainty ensembles (ONNX)",
        description="Build the ensembles the 'uncertainty' monitor and the 'robust' and 'quantilizer' "
        "fallbacks read: one ONNX graph whose outputs carry a leading member axis [K, batch, ...].",
    )
    esub = ens.add_subparsers(dest="ensemble_command", metavar="ACTION", required=True)

    c = esub.add_parser(
        "compile",
        help="fuse K member .onnx files into one ensemble graph",
        description="Fuse K member models with the same inputs and outputs into one ONNX graph whose "
        "outputs are [K, batch, ...]. MLP members of one architecture (Gemm/MatMul, Add, Relu/Tanh/...) "
        "are stacked so each layer is one batched MatMul for all members; anything else runs as parallel "
        "subgraphs. The fused graph is checked against every member on random inputs before it is "
        "written.",
        epilog="example: interlock ensemble compile q0.onnx q1.onnx q2.onnx q3.onnx q4.onnx -o "
        "q_ensemble.onnx",
    )
    c.add_argument("members", nargs="+", metavar="MEMBER.onnx", help="the member models (at least 2)")
    c.add_argument(
        "-o", "--output", required=True, metavar="ENSEMBLE.onnx", help="where to write the fused model"
    )
    c.add_argument(
        "--strategy",
        choices=["auto", "stacked", "parallel"],
        default="auto",
        help="auto (default): stacked when possible, else parallel",
    )
    c.add_argument(
        "--kind", choices=["q", "policy", "dynamics"], default=None, help="record the ensemble kind"
    )
    c.add_argument("--atol", type=float, default=1e-5, help="largest allowed |fused - member| (default 1e-5)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    c.add_argument(
        "--int-high",
        type=int,
        default=2,
        help="integer inputs (e.g. discrete actions) are drawn from [0, INT_HIGH) (default 2)",
    )
    c.set_defaults(func=_inputs_checked(_cmd_compile))

    t = esub.add_parser(
        "train",
        help="train a deep ensemble on logged transitions (needs the 'train' extra: torch)",
        description="Train K MLP members on a transitions .npz (layout in docs/ensembles.md), each on its "
        "own bootstrap resample with its own initialisation (optionally with a randomized prior), then "
        "fuse and verify them like 'ensemble compile'. q: obs -> Q-values (targets 'q_target' or "
        "discounted returns of 'reward'); policy: obs -> logits ('action_label' or 'action'); dynamics: "
        "obs, action -> next_obs - obs.",
        epilog="example: interlock ensemble train --kind q --data transitions.npz --members 5 -o "
        "q_ensemble.onnx",
    )
    t.add_argument("--kind", required=True, choices=["q", "policy", "dynamics"])
    t.add_argument("--data", required=True, metavar="FILE.npz", help="transitions (see docs/ensembles.md)")
    t.add_argument("--members", type=int, default=5, help="ensemble size K (default 5)")
    t.add_argument("-o", "--output", required=True, metavar="ENSEMBLE.onnx")
    t.add_argument("--hidden", type=_hidden, default=(64, 64), help="hidden layer sizes (default 64,64)")
    t.add_argument("--activation", choices=["relu", "tanh", "sigmoid"], default="relu")
    t.add_argument("--epochs", type=int, default=30, help="passes over each member's resample (default 30)")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument(
        "--prior-scale",
        type=float,
        default=0.0,
        help="add a fixed random prior network times this scale to each member (Osband et al. 2018); 0 = off",
    )
    t.add_argument("--no-bootstrap", action="store_true", help="train every member on all the data")
    t.add_argument("--gamma", type=float, default=0.99, help="discount for returns when q_target is absent")
    t.add_argument("--actions", type=int, default=None, help="number of discrete actions (default: max + 1)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1, fastest for small MLPs)"
    )
    t.add_argument("--members-dir", default=None, help="also write each member as DIR/member_<k>.onnx")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_inputs_checked(_cmd_train))

    cal = sub.add_parser(
        "calibrate",
        help="set uncertainty and transition thresholds from in-distribution data",
        description="Score in-distribution transitions with every 'uncertainty' monitor of an agent, set "
        "each signal's threshold to the conformal (1 - rate) quantile on a calibration split, write the "
        "thresholds file the monitor's thresholds_file names, and report the false-alarm rate measured on "
        "a held-out split (whole episodes when the data has an 'episode' array or end flags). "
        "'transition' monitors: fit the per-dimension residual scale (with `spread: per_action`, one per "
        "executed discrete action and dimension, floored at the `spread_floor` quantile of the absolute "
        "residual), the surprise threshold (per-step rate), the CUSUM drift and the shift threshold "
        "(per-episode rate) on whole in-distribution episodes (docs/shift.md); the data is a .npz of "
        "episodes (the agent's own discrete actions) or a rollout of --policy in --env.",
        epilog="examples: interlock calibrate --config interlock.yaml --agent cartpole --data in_dist.npz "
        "--false-alarm-rate 0.01\n  interlock calibrate --config interlock.yaml --agent cartpole --env "
        "CartPole-v1 --policy policy.onnx --episodes 200 --episode-false-alarm-rate 0.05",
    )
    cal.add_argument("--config", required=True, metavar="FILE", help="the Interlock YAML config")
    cal.add_argument("--agent", required=True, metavar="ID", help="the agent whose monitors to calibrate")
    cal.add_argument(
        "--data",
        default=None,
        metavar="FILE.npz",
        help="in-distribution obs and action arrays (whole episodes, next_obs, for transition monitors)",
    )
    cal.add_argument("--env", default=None, metavar="ID", help="instead of --data: a Gymnasium env id")
    cal.add_argument(
        "--policy", default=None, metavar="POLICY.onnx", help="with --env: the policy to roll out"
    )
    cal.add_argument(
        "--policy-output", choices=["logits", "action"], default="logits", help="what --policy outputs"
    )
    cal.add_argument(
        "--episodes", type=int, default=100, help="with --env: episodes to roll out (default 100)"
    )
    cal.add_argument(
        "--env-seed", type=int, default=0, help="with --env: episode e resets with seed ENV_SEED + e"
    )
    cal.add_argument(
        "--episode-false-alarm-rate",
        type=float,
        default=0.05,
        help="transition monitors: share of in-distribution episodes the shift signal may trip in "
        "(default 0.05)",
    )
    cal.add_argument(
        "--intervention-budget",
        type=float,
        default=None,
        metavar="SHARE",
        help="transition monitors: share of in-distribution steps that may come at or after a shift trip, "
        "what a response latched on episode.shifted (a handover for the rest of the episode) intervenes "
        "on; the shift threshold is raised until the calibration episodes stay within it (e.g. 0.01 for "
        "each of two monitors under a 2%% budget; with --joint, for all of them together)",
    )
    cal.add_argument(
        "--joint",
        action="store_true",
        help="transition monitors: the per-episode false-alarm rate and the intervention budget hold for "
        "episode.shifted, the union of the agent's transition monitors (any one tripping), not for each; "
        "all of them are calibrated together, each threshold at the same rank of its calm episode maxima "
        "(docs/shift.md, Calibration)",
    )
    cal.add_argument(
        "--under-rule",
        action="append",
        metavar="NAME",
        help="with --env: roll --policy out through Interlock with only this rule of the agent's policy "
        "(repeatable; its monitors as configured now), and calibrate on the actions executed: the "
        "episodes the guard will produce before a trip, e.g. with a probe rule (docs/shift.md)",
    )
    cal.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    cal.add_argument(
        "--false-alarm-rate",
        type=float,
        default=0.01,
        help="share of in-distribution rows each signal may flag (default 0.01)",
    )
    cal.add_argument("--holdout", type=float, default=0.3, help="share held out to measure (default 0.3)")
    cal.add_argument(
        "--group-by",
        default=None,
        metavar="ARRAY",
        help="transition monitors, --data: an array of the .npz naming each row's group (e.g. 'policy', the "
        "behaviour policy that recorded it); the shift threshold is then the largest of the groups' own "
        "per-episode quantiles, so the per-episode target holds for every group, not only pooled",
    )
    cal.add_argument("--monitor", action="append", metavar="NAME", help="only this monitor (repeatable)")
    cal.add_argument(
        "-o", "--output", default=None, help="thresholds file (default: the monitor's thresholds_file)"
    )
    cal.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    cal.set_defaults(func=_inputs_checked(_cmd_calibrate))
