"""The Guard engine: validate, run monitors (batched), apply the policy, pick fallbacks.

This module knows nothing of gRPC. Servicers decode requests into
:class:`CheckInput`, call :meth:`Guard.check`, and encode the :class:`Decision`
list; tests drive the same class directly.

Fail closed: an exception in a monitor, rule or fallback gives the agent's
``fail_safe`` fallback (verdict SUBSTITUTE), or HALT when there is none or it
fails too. Only ``fail_mode: open`` turns an internal error into ALLOW.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from interlock.batch import Batch, SignalBatch, cel_activation
from interlock.config import AgentConfig, LoadedConfig
from interlock.episodes import EpisodeFactsSource, episode_columns
from interlock.errors import ConfigError, InterlockError, InvalidRequest, UnknownAgent, shorten
from interlock.fallbacks import Fallback, build_fallback
from interlock.faultlog import FailureLog
from interlock.monitors import Monitor, build_monitor
from interlock.policies import DecisionPolicy
from interlock.policies.vectorized import batch_columns
from interlock.runtime import ModelRuntime
from interlock.spaces import AgentSpaces
from interlock.stagetimes import StageTimes, time_ns
from interlock.types import CheckInput, Decision, Verdict, new_decision_id

log = logging.getLogger(__name__)

# Re-exported: the records moved to interlock.types so the agent side can use them without the engine.
__all__ = ["AgentRuntime", "CheckInput", "Decision", "Guard", "Verdict", "new_decision_id"]


_VERDICT_OF = {
    "allow": Verdict.ALLOW,
    "substitute": Verdict.SUBSTITUTE,
    "escalate": Verdict.ESCALATE,
    "halt": Verdict.HALT,
}


class NotLoaded(RuntimeError):
    """API misuse: a :class:`Guard` was asked to decide before ``load()`` (or after ``unload()``)."""


class AgentRuntime:
    """One agent config compiled: spaces, monitors, policy and fallbacks, ready to decide."""

    def __init__(self, cfg: AgentConfig, runtime: ModelRuntime, config_version: str, where: str) -> None:
        self.config = cfg
        self.where = where
        self.config_version = config_version
        try:
            self.spaces = AgentSpaces.from_config(cfg)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        self.monitors: list[Monitor] = [
            build_monitor(m, self.spaces, runtime, f"{where}.monitors[{i}]")
            for i, m in enumerate(cfg.monitors)
        ]
        self.fallbacks: dict[str, Fallback] = {
            name: build_fallback(name, f, self.spaces, runtime, f"{where}.fallbacks.{name}")
            for name, f in cfg.fallbacks.items()
        }
        #: Rate-limited logs of failing stages ("monitor:<name>", "fallback:<name>").
        self.failure_logs: dict[str, FailureLog] = {}
        by_name = {m.name: m for m in self.monitors}
        for m in self.monitors:
            m.bind(by_name)  # monitors that read another (a reachability monitor's correction source)
        for f in self.fallbacks.values():
            f.bind(by_name)  # fallbacks that use a monitor's model (shield, backup, recover)
        self.signal_names = [f"{m.name}.{s}" for m in self.monitors for s in m.signal_names]
        #: Monitors that keep episode state (``episode.*`` in rules) and those told what was executed.
        self.episode_sources = [m for m in self.monitors if isinstance(m, EpisodeFactsSource)]
        self.after_decide = [m for m in self.monitors if type(m).after_decide is not Monitor.after_decide]
        self.policy = DecisionPolicy(
            cfg.policy,
            self.spaces.action.discrete,
            self.signal_names,
            f"{where}.policy",
            obs_size=int(np.prod(self.spaces.observation.shape)),
            episode=bool(self.episode_sources),
        )
        for i, rule in enumerate(cfg.policy.rules):
            if rule.verdict == "escalate" and not (rule.fallback or cfg.escalation.fallback or cfg.fail_safe):
                raise ConfigError(
                    f"{where}.policy.rules[{i}] ('{rule.name}') escalates but no fail-safe action exists for "
                    "when nobody answers: set the rule's fallback, escalation.fallback or fail_safe"
                )

    def load(self) -> None:
        for m in self.monitors:
            m.load()
        for f in self.fallbacks.values():
            f.load()

    def unload(self) -> None:
        for m in self.monitors:
            m.unload()
        for f in self.fallbacks.values():
            f.unload()

    # ------------------------------------------------------------------ request path

    def validate(self, item: CheckInput, field: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Observation and action coerced to the agent's spaces; raises InvalidRequest."""
        prefix = f"{field}." if field else ""
        obs = self.spaces.observation.coerce(item.observation, f"{prefix}observation")
        act = self.spaces.action.coerce(item.action, f"{prefix}action")
        return obs, act

    def decide(
        self,
        items: Sequence[CheckInput],
        observations: np.ndarray,
        actions: np.ndarray,
        times: StageTimes | None = None,
    ) -> list[Decision]:
        """Decide a batch of already-validated requests of this agent.

        Args:
            items: The requests (for ids, labels, steps).
            observations: ``[batch, *obs_shape]``.
            actions: ``[batch, *action_shape]``.
            times: Tracing on: record the stages' times here (None: tracing off, no work).
        """
        times = times.fork() if times is not None else None  # this agent's own copy
        batch = Batch(
            agent_id=items[0].agent_id,
            observations=observations,
            actions=actions,
            steps=np.fromiter((it.step for it in items), dtype=np.int64, count=len(items)),
            episode_ids=[it.episode_id for it in items],
            labels=[it.labels for it in items],
        )
        n = len(batch)
        decisions = [
            Decision(
                decision_id=new_decision_id(),
                agent_id=it.agent_id,
                verdict=Verdict.ALLOW,
                action=actions[i],
                proposed_action=actions[i],
                observation=observations[i],
                signals=[],
                reasons=[],
                config_version=self.config_version,
                episode_id=it.episode_id,
                step=it.step,
                labels=it.labels,
            )
            for i, it in enumerate(items)
        ]

        # 1. Monitors, each over the whole batch. A row whose action is outside the space reaches
        #    only the monitors defined there (action_space); the policy decides it from those.
        invalid = self.spaces.action.invalid(actions)
        signals, ran, row_errors = self._run_monitors(batch, invalid, times)
        policy_start = time_ns() if times is not None else 0

        # 2. Signals per row, then the policy (simple rules vectorized over the batch, the rest per row).
        names = list(signals)
        values = (
            np.stack([signals[k].values for k in names], axis=1).astype(np.float64)
            if names
            else np.zeros((n, 0))
        )
        trips = np.stack([signals[k].tripped for k in names], axis=1) if names else np.zeros((n, 0), bool)
        thresholds = [signals[k].threshold for k in names]
        all_vals, all_trips = values.tolist(), trips.tolist()
        episode = episode_columns(self.episode_sources, batch)  # after the monitors: "or now" counts
        episode_rows = None
        if episode is not None:
            listed = {k: v.tolist() for k, v in episode.items()}
            episode_rows = [{k: v[i] for k, v in listed.items()} for i in range(n)]

        def activation(i: int) -> dict:
            row = batch.rows()[i]
            return cel_activation(
                **row,
                signal_names=names,
                values=all_vals[i],
                tripped=all_trips[i],
                episode=episode_rows[i] if episode_rows is not None else None,
            )

        cols = batch_columns(
            batch,
            {k: values[:, j] for j, k in enumerate(names)},
            {k: trips[:, j] for j, k in enumerate(names)},
            episode,
        )
        outcomes = self.policy.decide_batch(cols, activation)
        wanted: dict[str, list[int]] = defaultdict(list)
        # Signals of monitors that did not run on a row (invalid action, failure) are left out of it.
        partial = [(j, ran[k]) for j, k in enumerate(names) if ran[k] is not None]
        for i, d in enumerate(decisions):
            vals, tr = all_vals[i], all_trips[i]
            d.signals = [(names[j], vals[j], thresholds[j], tr[j]) for j in range(len(names))]
            if partial:
                skip = {j for j, done in partial if not done[i]}
                d.signals = [s for j, s in enumerate(d.signals) if j not in skip]
            if i in row_errors:
                d.errors.extend(stage for stage, _ in row_errors[i])
                self._fail(d, [why for _, why in row_errors[i]])
                continue
            outcome = outcomes[i]
            if outcome.error is not None:
                d.errors.append("policy")
                self._fail(d, [f"rule '{outcome.rule.name}' could not be evaluated: {outcome.error}"])
                continue
            verdict = _VERDICT_OF[outcome.verdict]
            d.verdict = verdict
            if outcome.rule is not None:
                d.rule = outcome.rule.name
                d.reasons.append(outcome.rule.reason)
            elif verdict is Verdict.HALT:
                d.reasons.append("no rule allowed the action and the policy default is halt")
            if verdict is Verdict.SUBSTITUTE:
                wanted[outcome.rule.fallback].append(i)  # type: ignore[union-attr]
            elif verdict is Verdict.ESCALATE:
                esc = self.config.escalation
                fb = esc.fallback or outcome.rule.fallback or self.config.fail_safe  # type: ignore[union-attr]
                wanted[fb].append(i)  # type: ignore[index]
            elif verdict is Verdict.HALT:
                d.action = None
                if self.config.fail_safe:
                    wanted[self.config.fail_safe].append(i)

        if times is not None:
            times.add("policy", policy_start)
        # 3. Fallbacks, batched per fallback, each action checked against the space.
        for name, idx in wanted.items():
            start = time_ns() if times is not None else 0
            self._apply_fallback(name, idx, batch, signals, decisions)
            if times is not None:
                times.add(f"fallback:{name}", start, idx)
        # No rule stopped an action outside the space (no action_space rule, default allow): never execute it.
        for i in np.flatnonzero(invalid).tolist():
            d = decisions[i]
            if d.verdict is Verdict.ALLOW:
                d.rule = ""
                self._fail(d, [f"the action {_shown(d.proposed_action)} is outside the action space"])
        if self.config.shadow:
            for i, d in enumerate(decisions):
                _shadow(d, outside_space=bool(invalid[i]))
        if self.after_decide:
            start = time_ns() if times is not None else 0
            self._tell_executed(batch, decisions)
            if times is not None:
                times.add("after_decide", start)
        if times is not None:
            times.attach(decisions)
        return decisions

    def _tell_executed(self, batch: Batch, decisions: list[Decision]) -> None:
        """Monitors' ``after_decide``: each row's answered action (the proposed one where none)."""
        executed = np.stack([d.action if d.action is not None else d.proposed_action for d in decisions])
        valid = ~self.spaces.action.invalid(executed)
        for m in self.after_decide:
            try:
                m.after_decide(batch, executed, valid)
            except Exception as e:  # the decisions stand; the monitor's episode state may be stale
                self._failure_log(f"after_decide:{m.name}", f"{self.where}: monitor '{m.name}'").failed(e)

    def _run_monitors(
        self, batch: Batch, invalid: np.ndarray, times: StageTimes | None = None
    ) -> tuple[dict[str, SignalBatch], dict[str, np.ndarray | None], dict[int, list[tuple[str, str]]]]:
        """Run every monitor over the rows it is defined on.

        Args:
            batch: The batch of ``n`` rows.
            invalid: ``[n]`` bool, True where the action is outside the action space.

        Returns:
            ``signals`` (``"<monitor>.<signal>"`` -> ``[n]`` values; NaN and tripped where the
            monitor did not run), ``ran`` (``[n]`` bool per signal: the value was computed; None
            when it was for every row) and
            ``row_errors`` (row -> ``[(stage, reason)]`` for the rows a monitor failed on).
        """
        n = len(batch)
        all_rows = np.arange(n)
        valid_rows = np.flatnonzero(~invalid) if invalid.any() else all_rows
        signals: dict[str, SignalBatch] = {}
        ran: dict[str, np.ndarray | None] = {}
        row_errors: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for m in self.monitors:
            rows = all_rows if m.accepts_invalid_actions else valid_rows
            start = time_ns() if times is not None else 0
            out, done = self._monitor_over(m, batch, rows, row_errors)
            if times is not None:
                times.add(f"monitor:{m.name}", start, None if len(rows) == n else rows.tolist())
            for sig in m.signal_names:
                key = f"{m.name}.{sig}"
                signals[key] = out[sig]
                ran[key] = done
        return signals, ran, row_errors

    def _monitor_over(
        self, m: Monitor, batch: Batch, rows: np.ndarray, row_errors: dict[int, list[tuple[str, str]]]
    ) -> tuple[dict[str, SignalBatch], np.ndarray | None]:
        """Monitor ``m`` over the given rows of ``batch`` (``n`` rows): its ``[n]`` signals and where it ran.

        "Where it ran" is a ``[n]`` bool mask, or None for every row.

        The rows go in one call; only if that raises are they retried one by one, so that the
        rows it fails on (recorded in ``row_errors``) are found and the others keep their values.
        """
        n = len(batch)
        sub = batch if len(rows) == n else batch.take(rows)
        error: Exception | None = None
        out: dict[str, SignalBatch] = {}
        if len(rows):
            try:
                out = self._monitor_signals(m, sub)
            except Exception as e:
                error = e
        if error is None and len(rows) == n:  # the usual case: every row in one call, nothing to fill in
            return out, None
        values = {s: np.full(n, np.nan) for s in m.signal_names}
        tripped = {s: np.ones(n, bool) for s in m.signal_names}
        thresholds: dict[str, float] = {}
        done = np.zeros(n, bool)
        found: list[tuple[np.ndarray, dict[str, SignalBatch]]] = []
        if error is None:
            found.append((rows, out))
        elif len(rows) == 1:
            self._monitor_failed(m, error, int(rows[0]), row_errors)
        else:  # find the rows it fails on; the others keep their values
            for k, r in enumerate(rows.tolist()):
                try:
                    found.append((rows[k : k + 1], self._monitor_signals(m, sub.take([k]))))
                except Exception as e:
                    self._monitor_failed(m, e, r, row_errors)
        for at, part in found:
            for sig, sb in part.items():
                values[sig][at] = sb.values
                tripped[sig][at] = sb.tripped
                thresholds.setdefault(sig, sb.threshold)
            done[at] = True
        return {
            s: SignalBatch(values[s], thresholds.get(s, float("nan")), tripped[s]) for s in m.signal_names
        }, done

    @staticmethod
    def _monitor_signals(m: Monitor, batch: Batch) -> dict[str, SignalBatch]:
        """``m.check(batch)``, checked to hold every signal with one value per row."""
        out = m.check(batch)
        n = len(batch)
        for sig in m.signal_names:
            if len(out[sig].values) != n:
                raise ValueError(f"signal '{sig}' has {len(out[sig].values)} values for a batch of {n}")
        return {sig: out[sig] for sig in m.signal_names}

    def _monitor_failed(
        self, m: Monitor, e: Exception, row: int, row_errors: dict[int, list[tuple[str, str]]]
    ) -> None:
        stage = f"monitor:{m.name}"
        self._failure_log(stage, f"{self.where}: monitor '{m.name}'").failed(e)
        row_errors[row].append((stage, f"monitor '{m.name}' failed: {type(e).__name__}: {shorten(e, 200)}"))

    def _failure_log(self, stage: str, what: str) -> FailureLog:
        fl = self.failure_logs.get(stage)
        if fl is None:
            fl = self.failure_logs.setdefault(stage, FailureLog(log, what))
        return fl

    def _apply_fallback(
        self,
        name: str,
        idx: list[int],
        batch: Batch,
        signals: dict[str, SignalBatch],
        decisions: list[Decision],
    ) -> None:
        sub = batch.take(idx)
        sub_signals = {k: SignalBatch(s.values[idx], s.threshold, s.tripped[idx]) for k, s in signals.items()}
        try:
            proposed = np.asarray(self.fallbacks[name].propose(sub, sub_signals))
            expected = (len(idx), *self.spaces.action.shape)
            if proposed.shape != expected:
                raise ValueError(f"returned shape {list(proposed.shape)}, expected {list(expected)}")
            bad = self.spaces.action.invalid(proposed)
        except Exception as e:
            self._failure_log(f"fallback:{name}", f"{self.where}: fallback '{name}'").failed(e)
            for i in idx:
                decisions[i].errors.append(f"fallback:{name}")
                self._halt(decisions[i], f"fallback '{name}' failed: {type(e).__name__}: {shorten(e, 200)}")
            return
        for k, i in enumerate(idx):
            d = decisions[i]
            if bad[k]:
                self._halt(d, f"fallback '{name}' proposed {proposed[k].tolist()}, outside the action space")
            else:
                # On HALT this is the fail-safe action to hold while stopping.
                d.action = proposed[k]
                d.fallback = name

    def _fail(self, d: Decision, why: list[str]) -> None:
        """An internal error for this row: fail-safe fallback, HALT, or (fail_mode open) ALLOW."""
        d.reasons.extend(why)
        if self.config.fail_mode == "open" and not self.spaces.action.invalid(d.proposed_action[None])[0]:
            d.verdict = Verdict.ALLOW
            d.rule = ""
            d.action = d.proposed_action
            d.reasons.append("fail_mode is open: the unchecked action was allowed")
            return
        fs = self.config.fail_safe
        if fs is None:
            self._halt(d, "no fail_safe fallback is configured")
            return
        d.verdict = Verdict.SUBSTITUTE
        d.rule = ""
        try:
            action = self.fallback_action(fs, d)
        except Exception as e:
            d.errors.append(f"fallback:{fs}")
            self._halt(d, f"fail-safe fallback '{fs}' failed: {shorten(e, 200)}")
            return
        d.action = action
        d.fallback = fs
        d.reasons.append(f"fail-safe fallback '{fs}' applied")

    def fallback_action(self, name: str, d: Decision) -> np.ndarray:
        """Fallback ``name``'s action for the single row of decision ``d``, checked against the space.

        Raises whatever the fallback raises, or ValueError when its action is outside the space.
        """
        single = Batch(
            d.agent_id,
            d.observation[None],
            d.proposed_action[None],
            np.array([d.step], dtype=np.int64),
            [d.episode_id],
            [d.labels],
        )
        action = np.asarray(self.fallbacks[name].propose(single, {}))[0]
        if self.spaces.action.invalid(action[None])[0]:
            raise ValueError(f"fallback '{name}' action {action.tolist()} is outside the action space")
        return action

    @staticmethod
    def _halt(d: Decision, why: str) -> None:
        d.verdict = Verdict.HALT
        d.action = None
        d.fallback = ""
        d.reasons.append(why)


def _shown(action: np.ndarray) -> str:
    """An action for a message, shortened (a client chose it)."""
    return shorten(np.asarray(action).tolist())


def _shadow(d: Decision, outside_space: bool = False) -> None:
    """Shadow mode: answer ALLOW but keep the would-be verdict in ``shadow_verdict``, signals and reasons.

    A decision whose monitors or policy failed was not checked, and an action outside the action space
    can never be executed: both keep their fail-closed verdict (shadow mode observes; it does not
    let through what no mode would).
    """
    would = d.verdict
    if outside_space or any(e == "policy" or e.startswith("monitor:") for e in d.errors):
        return
    d.shadow_verdict = would
    d.signals.append(("shadow.would_verdict", float(int(would)), float(int(Verdict.ALLOW)), would > 1))
    if would is Verdict.ALLOW:
        return
    rule = f" (rule '{d.rule}')" if d.rule else ""
    d.reasons.insert(
        0, f"shadow mode: would have answered {would.name}{rule}; the proposed action is allowed"
    )
    d.verdict = Verdict.ALLOW
    d.action = d.proposed_action
    d.fallback = ""


class Guard:
    """All agents of one config, compiled and loaded.

    Example:
        >>> guard = Guard.from_file("examples/cartpole/interlock.yaml")   # doctest: +SKIP
        >>> guard.load()                                                  # doctest: +SKIP
        >>> [d] = guard.check([CheckInput("cartpole", obs, np.int64(1))])  # doctest: +SKIP
    """

    MAX_CACHED_IDS = 10_000

    def __init__(self, loaded: LoadedConfig, runtime: ModelRuntime | None = None) -> None:
        self.loaded = loaded
        self.version = loaded.version
        self.runtime = runtime or ModelRuntime.for_config(loaded)
        self.agents = [
            AgentRuntime(a, self.runtime, loaded.version, f"{loaded.source}: agents[{i}] ({a.id})")
            for i, a in enumerate(loaded.config.agents)
        ]
        self._by_id: dict[str, AgentRuntime] = {}
        self.ready = False

    @classmethod
    def from_file(cls, path: str) -> Guard:
        from interlock.config import load_config

        return cls(load_config(path))

    def load(self) -> Guard:
        """Load every model; raises ConfigError naming the model that failed."""
        for a in self.agents:
            a.load()
        self.ready = True
        return self

    def unload(self) -> None:
        self.ready = False
        for a in self.agents:
            a.unload()

    def agent(self, agent_id: str) -> AgentRuntime:
        """The runtime for ``agent_id`` (exact id or first glob); raises UnknownAgent."""
        rt = self._by_id.get(agent_id)
        if rt is not None:
            return rt
        if not agent_id:
            raise InvalidRequest("agent_id is empty; set it to one of the configured agents")
        for a in self.agents:
            if a.config.matches(agent_id):
                if len(self._by_id) < self.MAX_CACHED_IDS:
                    self._by_id[agent_id] = a
                return a
        known = ", ".join(a.config.id for a in self.agents)
        raise UnknownAgent(
            f"agent_id '{shorten(agent_id)}' matches no agent in the config (configured: {known})"
        )

    def validate(
        self, items: Sequence[CheckInput], indexed: bool = False
    ) -> list[tuple[AgentRuntime, np.ndarray, np.ndarray]]:
        """Resolve the agent and coerce arrays of every request; the first bad one raises."""
        out = []
        for i, item in enumerate(items):
            where = f"requests[{i}]" if indexed else ""
            try:
                rt = self.agent(item.agent_id)
            except (UnknownAgent, InvalidRequest) as e:
                if indexed:
                    e.message = f"{where}: {e.message}"
                    e.args = (e.message,)
                raise
            obs, act = rt.validate(item, where)
            out.append((rt, obs, act))
        return out

    def check(
        self, items: Sequence[CheckInput], indexed: bool = False, times: StageTimes | None = None
    ) -> list[Decision]:
        """Decide every request, batching the requests of each agent together.

        Returns decisions in request order. Raises InvalidRequest/UnknownAgent for
        the first malformed request (nothing is decided then), and NotLoaded before
        :meth:`load` (or after :meth:`unload`). ``times`` (tracing on) receives the stages' times.
        """
        self._require_ready()
        start = time_ns() if times is not None else 0
        validated = self.validate(items, indexed)
        if times is not None:
            times.add("validate", start)
        return self._decide(items, validated, times)

    def _require_ready(self) -> None:
        if not self.ready:
            raise NotLoaded(
                "Guard.check called on a Guard whose models are not loaded: call guard.load() first "
                "(Guard.from_file(path).load()), and do not check after guard.unload()"
            )

    def check_each(
        self, items: Sequence[CheckInput], times: StageTimes | None = None
    ) -> list[Decision | InterlockError]:
        """Decide independent requests together; a malformed one gets its error, the others decide.

        This is the micro-batcher's entry point: requests from different calls
        share one run of every monitor, and one bad request fails only itself.
        """
        self._require_ready()
        out: list[Decision | InterlockError] = list(items)  # type: ignore[arg-type]
        good: list[int] = []
        validated = []
        start = time_ns() if times is not None else 0
        for i, item in enumerate(items):
            try:
                validated.append(self.validate([item])[0])
                good.append(i)
            except InterlockError as e:
                out[i] = e
        if times is not None:
            times.add("validate", start)
        if good:
            for i, d in zip(good, self._decide([items[i] for i in good], validated, times), strict=True):
                out[i] = d
        return out

    def _decide(
        self,
        items: Sequence[CheckInput],
        validated: list[tuple[AgentRuntime, np.ndarray, np.ndarray]],
        times: StageTimes | None = None,
    ) -> list[Decision]:
        if len(items) == 1:
            rt, obs, act = validated[0]
            return rt.decide(items, obs[None], act[None], times)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, (rt, _, _) in enumerate(validated):
            groups[id(rt)].append(i)
        result: list[Decision | None] = [None] * len(items)
        for idx in groups.values():
            rt = validated[idx[0]][0]
            obs = np.stack([validated[i][1] for i in idx])
            act = np.stack([validated[i][2] for i in idx])
            for i, d in zip(idx, rt.decide([items[i] for i in idx], obs, act, times), strict=True):
                result[i] = d
        return result  # type: ignore[return-value]
