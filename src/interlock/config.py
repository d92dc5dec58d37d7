"""The Interlock configuration file, as pydantic models.

One YAML file configures the server, ONNX Runtime and every agent. Every model
forbids unknown keys, so a typo is an error that names the file and key path
instead of a silently ignored setting. ``interlock config schema`` prints the
JSON Schema generated from these models.

Example:
    >>> cfg = parse_config({"agents": [{"id": "cartpole",
    ...     "observation": {"shape": [4]}, "action": {"type": "discrete", "n": 2}}]})
    >>> cfg.agents[0].policy.default
    'allow'
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from interlock.errors import ConfigError

VerdictName = Literal["allow", "substitute", "escalate", "halt"]
DTypeName = Literal["float32", "float64", "int32", "int64", "bool", "uint8"]
Bound = float | list[float] | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- spaces


class ObservationSpec(_Strict):
    """What the agent sends as its observation."""

    shape: list[Annotated[int, Field(ge=0)]] = Field(description="Shape of one observation; [] for a scalar.")
    dtype: DTypeName = Field("float32", description="Element type the agent sends.")
    low: Bound = Field(None, description="Optional lower bound (scalar or one per element), for rules.")
    high: Bound = Field(None, description="Optional upper bound (scalar or one per element), for rules.")
    allow_nonfinite: bool = Field(False, description="Accept NaN/Inf in observations (rejected by default).")


class DiscreteActionSpec(_Strict):
    """A discrete action: one integer in [0, n)."""

    type: Literal["discrete"] = "discrete"
    n: int = Field(gt=0, description="Number of actions.")
    dtype: Literal["int64", "int32"] = Field("int64", description="Integer type of the action tensor.")


class BoxActionSpec(_Strict):
    """A continuous action: an array within [low, high]."""

    type: Literal["box"] = "box"
    shape: list[Annotated[int, Field(ge=0)]] = Field(description="Shape of one action.")
    low: float | list[float] = Field(description="Lower bound, a scalar or one per element.")
    high: float | list[float] = Field(description="Upper bound, a scalar or one per element.")
    dtype: Literal["float32", "float64"] = "float32"


ActionSpec = Annotated[DiscreteActionSpec | BoxActionSpec, Field(discriminator="type")]


# --------------------------------------------------------------------------- monitors


class ActionSpaceMonitorConfig(_Strict):
    """Flags actions outside the declared space: out of bounds, bad index, NaN or Inf.

    Signals: ``invalid`` (1.0 when the action is not in the space) and ``distance``
    (how far a box action lies outside its bounds, L-inf; 0 inside).
    """

    kind: Literal["action_space"] = "action_space"
    name: str = "action_space"


class RulesMonitorConfig(_Strict):
    """Declarative constraints, each a CEL expression that must hold.

    Each constraint yields a signal of the same name: 1.0 (tripped) when the
    expression is false. The expressions see ``obs`` (flattened, list of double),
    ``action`` (int for discrete, list of double for box), ``labels``, ``step``.
    """

    kind: Literal["rules"] = "rules"
    name: str = "rules"
    constraints: dict[str, str] = Field(description="Constraint name -> CEL expression that must be true.")


class TabularModelConfig(_Strict):
    """A finite MDP in ``.npz``: ``P[s, a, s']`` (dense or sparse) and unsafe, terminal and goal states."""

    kind: Literal["tabular"] = "tabular"
    transitions: str = Field(description="Path of the .npz model, relative to the config file.")
    state_field: int | None = Field(
        None,
        ge=0,
        description="Flat index of the observation element that holds the state index; "
        "null when the observation is the state index itself (shape [] or [1]).",
    )
    cache: str | None = Field(
        None,
        description="Precomputed tables from `interlock shield build`; default: <transitions>.shield.npz.",
    )


class DynamicsEnsembleModelConfig(_Strict):
    """An ONNX dynamics model: (observation [N, obs_dim], action) -> next observation [K, N, obs_dim].

    The leading member axis K is optional ([N, obs_dim] is a single model, K=1).
    A model whose observation input is [K, N, obs_dim] gets each member's own states.
    """

    kind: Literal["dynamics_ensemble"] = "dynamics_ensemble"
    model: str = Field(description="Path of the .onnx model, relative to the config file.")
    predicts: Literal["next_state", "delta"] = Field(
        "next_state", description="'delta': the model outputs next_obs - obs."
    )
    obs_input: str | None = Field(None, description="Observation input; default: the first input.")
    action_input: str | None = Field(None, description="Action input; default: the second input.")
    output_name: str | None = Field(None, description="Output to read; default: the first output.")


class PythonModelConfig(_Strict):
    """A dynamics model in Python: ``callable(observations, actions) -> next observations``.

    ``observations`` ``[N, *obs_shape]`` float64, ``actions`` ``[N]`` int64 or ``[N, *action_shape]``;
    returns ``[N, *obs_shape]`` or ``[K, N, *obs_shape]`` (K members). See docs/shield.md.
    """

    kind: Literal["python"] = "python"
    callable: str = Field(
        description="'package.module:attribute' (a function, or a class built with kwargs)."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor or keyword arguments.")
    predicts: Literal["next_state", "delta"] = Field(
        "next_state", description="'delta': the model returns next_obs - obs."
    )


ReachabilityModelConfig = Annotated[
    TabularModelConfig | DynamicsEnsembleModelConfig | PythonModelConfig, Field(discriminator="kind")
]


class ContinuationConfig(_Strict):
    """What a rollout follows after its first action.

    ``backup``: the monitor's ``backup_policy``; ``policy``: another ONNX policy (e.g. the agent's
    own, so the shield judges "this action, then the agent as it is"); ``repeat``: the first action
    again at every step.
    """

    kind: Literal["backup", "policy", "repeat"] = "backup"
    model: str | None = Field(
        None, description="policy: the .onnx policy (observation batch -> action/logits)."
    )
    output: Literal["action", "logits"] = Field("logits", description="policy: 'logits' takes the argmax.")
    input_name: str | None = None
    output_name: str | None = None

    @model_validator(mode="after")
    def _model_for_policy(self) -> ContinuationConfig:
        if (self.kind == "policy") != (self.model is not None):
            raise ValueError("continuation kind 'policy' needs model: FILE.onnx (and only it takes one)")
        return self


class CorrectionConfig(_Strict):
    """Online correction of the rollout dynamics from the episode's observed residuals.

    ``monitor`` names a monitor of the same agent that is a residual source (it has
    ``residual_bias(batch) -> [batch, obs_dim]``: the episode's running mean of actual minus
    predicted next observation), e.g. a ``transition`` monitor or a ``python`` monitor whose
    object defines ``residual_bias``. Every predicted next state of a row's rollouts is shifted
    by ``gain`` times that row's bias.
    """

    monitor: str = Field(description="Name of the residual-source monitor (listed before this one).")
    gain: float = Field(1.0, ge=0, description="Multiplies the bias (0 turns the correction off).")


class CandidatesConfig(_Strict):
    """Shield mode: check every candidate action of every row, not only the proposed one.

    Candidates: every action (discrete), or ``samples`` points drawn uniformly in the box once at
    load, plus per row the proposed action and the backup policy's action when there is one.
    """

    samples: int = Field(16, gt=0, le=4096, description="Box actions: how many sampled candidates.")
    seed: int = Field(0, description="Seed of the sampler (the same candidates on every call).")


class RiskConfig(_Strict):
    """Probabilistic shield: allow actions unlikely to reach an unsafe state within ``horizon`` steps."""

    delta: float = Field(gt=0, lt=1, description="Allowed when P(stay safe for horizon steps) >= 1 - delta.")
    horizon: int = Field(100, gt=0, description="Steps over which the safety probability is computed.")
    relative: bool = Field(
        False,
        description="Compare with (1 - delta) x the safest action's probability instead of 1 - delta.",
    )


class BackupPolicyConfig(_Strict):
    """An ONNX backup policy: observation batch in, action (or logits) batch out."""

    model: str = Field(description="Path of the .onnx file, relative to the config file.")
    output: Literal["action", "logits"] = Field("action", description="'logits' takes the argmax.")
    input_name: str | None = None
    output_name: str | None = None


class ReachabilityMonitorConfig(_Strict):
    """Can the agent still avoid unsafe states after this action?

    Tabular model (exact shield): signals ``unsafe`` (1.0: the shield forbids the action),
    ``risk`` (probability of reaching an unsafe state within the risk horizon after the action,
    under the safest continuation), ``lost`` (1.0: the current state is outside the winning
    region) and ``irreversibility`` (relative reachability: expected share of reachable states
    the action makes unreachable).

    Dynamics model (recoverability): from the state the action leads to under each member, the
    backup policy is rolled out ``horizon`` steps. Signals ``irreversibility`` (share of members
    under which the rollout breaks a constraint or never re-enters the safe set), ``margin``
    (fewest steps before a constraint breaks, over members; ``horizon`` if none; tripped
    below ``min_margin``) and ``unsafe`` (1.0 when irreversibility exceeds its threshold).
    """

    kind: Literal["reachability"] = "reachability"
    name: str = "reachability"
    model: ReachabilityModelConfig
    risk: RiskConfig | None = Field(None, description="Tabular: a probabilistic instead of an exact shield.")
    relative_reachability: bool = Field(True, description="Tabular: compute the irreversibility signal.")
    irreversibility_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Tripping threshold of 'irreversibility'; default 0.5 (tabular), 0.0 "
        "(dynamics: any failing member trips it and makes the action unsafe).",
    )
    backup_policy: BackupPolicyConfig | None = Field(None, description="Dynamics: the policy rolled out.")
    constraints: dict[str, str] = Field(
        default_factory=dict,
        description="Dynamics: name -> CEL over obs that must hold at every rollout step.",
    )
    safe_set: str | None = Field(
        None,
        description="Dynamics: CEL over obs; the rollout must re-enter it within the horizon.",
    )
    horizon: int = Field(20, gt=0, le=10_000, description="Dynamics: rollout steps.")
    min_margin: int = Field(1, ge=0, description="Dynamics: 'margin' trips below this many steps.")
    continuation: ContinuationConfig | None = Field(
        None, description="Dynamics: the policy after the first action; default: the backup policy."
    )
    correction: CorrectionConfig | None = Field(
        None, description="Dynamics: shift the rollout by the episode's observed residual bias."
    )
    candidates: CandidatesConfig | None = Field(
        None,
        description="Dynamics: shield mode, every candidate action is rolled out too (signals "
        "safe_count, best_margin); the shield_choice fallback picks among them.",
    )

    @model_validator(mode="after")
    def _fits_model_kind(self) -> ReachabilityMonitorConfig:
        if self.model.kind == "tabular":
            extra = [
                k
                for k in ("backup_policy", "safe_set", "continuation", "correction", "candidates")
                if getattr(self, k) is not None
            ]
            extra += ["constraints"] if self.constraints else []
            if extra:
                raise ValueError(
                    f"{', '.join(extra)} only apply to model kind dynamics_ensemble; the "
                    "tabular model's unsafe states come from its transitions file"
                )
        else:
            kind = self.model.kind
            continuation = self.continuation.kind if self.continuation else "backup"
            if self.backup_policy is None and continuation == "backup":
                raise ValueError(
                    f"model kind {kind} needs backup_policy: {{model: FILE.onnx}}, or a continuation "
                    "of kind policy or repeat"
                )
            if not self.constraints and self.safe_set is None:
                raise ValueError(f"model kind {kind} needs constraints and/or safe_set (CEL over obs)")
            if self.correction is not None and self.correction.monitor == self.name:
                raise ValueError("correction.monitor must name another monitor, not this one")
            if self.risk is not None:
                raise ValueError(
                    "risk applies to tabular models only; use horizon and irreversibility_threshold"
                )
        return self


class UncertaintyMonitorConfig(_Strict):
    """Disagreement of a fused ensemble (``interlock ensemble compile|train``), see docs/ensembles.md.

    Signals by ``ensemble``: q: ``q_std``, ``q_std_ratio``; policy: ``mutual_info``,
    ``disagreement``; dynamics: ``disagreement``, ``disagreement_max``.
    """

    kind: Literal["uncertainty"] = "uncertainty"
    name: str = "uncertainty"
    model: str = Field(
        description="Fused ensemble .onnx (outputs [members, batch, ...]), relative to the config."
    )
    ensemble: Literal["q", "policy", "dynamics"] = Field(
        description="q: obs -> Q [K,B,n]; policy: obs -> logits [K,B,n]; dynamics: obs, action -> next state."
    )
    output_name: str | None = Field(None, description="Graph output to read; defaults to the first output.")
    policy_output: Literal["logits", "probs"] = Field("logits", description="What a policy ensemble outputs.")
    state_scale: list[float] | None = Field(
        None,
        description="Dynamics: per-dimension scale of the disagreement; default from the model metadata.",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Signal -> threshold; overrides thresholds_file."
    )
    thresholds_file: str | None = Field(
        None, description="JSON written by `interlock calibrate`, relative to the config file."
    )


class TransitionMonitorConfig(_Strict):
    """Did the world do what the dynamics ensemble expected? (docs/shift.md)

    For each check, the agent's previous observation and executed action in the same episode go
    through the dynamics ensemble; its mean prediction is compared with the observation that
    arrived. Signals: ``surprise`` (the residual over its calibrated in-distribution scale, RMS or
    max over dimensions; 0 when the episode has no previous step), ``shift`` (CUSUM of surprise
    minus ``drift`` over the episode, or with ``statistic: signed`` two-sided CUSUMs of each dimension's
    signed normalised residual; tripped above ``threshold``), ``shifted`` (1.0 from the first
    trip of ``shift`` to the end of the episode), ``residual_bias`` (RMS over dimensions of the
    episode's exponentially weighted mean residual, in scale units) and ``scored`` (how many of the
    episode's transitions the monitor has scored so far; never trips). Rules also read
    ``episode.shifted``, ``episode.steps_since_shift`` and ``episode.steps``.
    """

    kind: Literal["transition"] = "transition"
    name: str = "transition"
    model: str = Field(
        description="Fused dynamics ensemble .onnx (obs, action -> [members, batch, obs_dim]), "
        "relative to the config; `interlock ensemble train --kind dynamics` makes one."
    )
    predicts: Literal["delta", "next_state"] = Field(
        "delta",
        description="'delta' (what `interlock ensemble train` makes): the model outputs next_obs - obs.",
    )
    output_name: str | None = Field(None, description="Graph output to read; defaults to the first output.")
    dims: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        description="Flat observation indices the surprise covers (e.g. leave out contact flags); "
        "default all.",
    )
    aggregate: Literal["rms", "max", "mean_sq"] = Field(
        "rms",
        description="How per-dimension normalised residuals z combine into the surprise: rms, max |z|, "
        "or mean_sq (mean of z^2: the residual energy, about 1 in distribution).",
    )
    clip: float | None = Field(
        None,
        gt=0,
        description="Cap each dimension's z^2 at this value before aggregating (a contact spike then "
        "weighs at most clip); default none.",
    )
    drift_rule: Literal["episode_quantile", "step_mean"] = Field(
        "episode_quantile",
        description="How `interlock calibrate` sets the CUSUM drift: the (1 - per-episode rate) quantile "
        "of in-distribution episode mean surprise (default), or the mean in-distribution per-step "
        "surprise (faster detection; the threshold then absorbs the climb of the more surprising "
        "in-distribution episodes).",
    )
    spread: Literal["global", "per_action"] = Field(
        "global",
        description="How residuals are normalised: 'global', one in-distribution scale per dimension, or "
        "'per_action' (discrete action spaces only), one per executed action and dimension, so that "
        "actions whose outcome is nearly deterministic (a LunarLander noop) are not judged by the "
        "spread of noisy ones (its main engine); calibrated by `interlock calibrate`.",
    )
    score_when: str | None = Field(
        None,
        description="CEL condition over `obs` (list of double): only transitions for which it holds for "
        "both the observation acted on and the one that arrived are scored (e.g. LunarLander: "
        "'obs[6] < 0.5 && obs[7] < 0.5', the lander in the air: ground contacts are not what the "
        "model predicts well, and the wind does not blow then); other transitions have surprise 0 "
        "and leave the statistic and the residual bias as they were. Default: every transition.",
    )
    score_actions: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        description="Discrete actions only: score only transitions whose executed action is one of these "
        "(e.g. LunarLander's engines [1, 2, 3] for a monitor that watches the engines: a noop has no "
        "actuator to change, and a model's small bias on long runs of noops would add up in a signed "
        "statistic); other transitions are treated like those `score_when` rejects. Default: all.",
    )
    scale_statistic: Literal["rms", "median_abs"] = Field(
        "rms",
        description="How `interlock calibrate` measures a residual scale: 'rms' (root mean square), or "
        "'median_abs' (1.4826 x the median absolute residual: the RMS of normal residuals, but not "
        "inflated by rare large ones such as LunarLander's ground contacts, whose z^2 `clip` caps).",
    )
    spread_floor: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="With spread: per_action, each action's scale is at least this quantile of the "
        "absolute in-distribution residual of its dimension (all actions pooled), so that an action "
        "the model predicts almost exactly cannot make a tiny residual look huge.",
    )
    spread_min_rows: int = Field(
        50,
        ge=1,
        description="With spread: per_action, an action seen fewer times than this in the calibration "
        "data keeps the global scale.",
    )
    disagreement: Literal["none", "add"] = Field(
        "none",
        description="'add': each normalised residual is r / sqrt(scale^2 + (disagreement_scale * std)^2), "
        "std the standard deviation of the ensemble members' predictions of that dimension, so that "
        "transitions the model is unsure of (epistemic) weigh less while a shift in states the members "
        "agree on still stands out; for agents whose states differ from the calibration data. "
        "'none' (default): the calibrated scale alone. `interlock calibrate` records it.",
    )
    disagreement_scale: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="With disagreement: add, the factor on the members' standard deviation.",
    )
    residual_scale: list[float] | None = Field(
        None,
        description="Per-dimension in-distribution residual scale (one per observation element); "
        "overrides the thresholds file.",
    )
    statistic: Literal["energy", "signed"] = Field(
        "energy",
        description="The episode statistic behind `shift`: 'energy' (default), a one-sided CUSUM of the "
        "surprise (an aggregate of z^2): large changes such as wind; 'signed', a two-sided CUSUM of each "
        "selected dimension's normalised residual z (per executed action with spread: per_action), "
        "S+ = max(0, S+ + z - drift), S- = max(0, S- - z - drift), shift = the largest: a small persistent "
        "bias (a weaker or stronger actuator, a heavier load) that z^2 barely shows. `interlock calibrate` "
        "records it; docs/shift.md.",
    )
    drift: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="CUSUM drift k subtracted at each step; overrides the file with statistic: energy. "
        "With statistic: signed it is in z units (default 0.5: tuned to a mean shift of about one scale "
        "unit) and is not calibrated: `interlock calibrate` sets the threshold at it.",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Signal -> threshold (surprise, shift, residual_bias); overrides thresholds_file.",
    )
    thresholds_file: str | None = Field(
        None, description="JSON written by `interlock calibrate`, relative to the config file."
    )
    bias_halflife: float = Field(
        20.0, gt=0, description="Half-life in steps of the EW mean residual (residual_bias, shields)."
    )
    max_episodes: int = Field(
        10_000, gt=0, description="Episodes whose state is kept per monitor (least recently seen dropped)."
    )
    episode_ttl_seconds: float = Field(
        600.0, gt=0, description="An episode not checked for this long is forgotten (it restarts if seen)."
    )


class PluginSignalConfig(_Strict):
    """One signal a python monitor returns, and when it trips."""

    threshold: float = Field(description="The signal trips beyond this value.")
    direction: Literal["above", "below"] = Field(
        "above", description="above: trips when value > threshold; below: when value < threshold."
    )


class PythonMonitorConfig(_Strict):
    """An operator's detector in Python: ``callable(observations, actions, batch) -> {signal: [batch]}``.

    See docs/shield.md (plugins) for the interface and the trust model.
    """

    kind: Literal["python"] = "python"
    name: str = "python"
    callable: str = Field(
        description="'package.module:attribute' (a function, or a class built with kwargs)."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor or keyword arguments.")
    signals: dict[str, PluginSignalConfig] = Field(
        min_length=1, description="Every signal the callable returns, with its threshold."
    )


MonitorConfig = Annotated[
    ActionSpaceMonitorConfig
    | RulesMonitorConfig
    | UncertaintyMonitorConfig
    | ReachabilityMonitorConfig
    | TransitionMonitorConfig
    | PythonMonitorConfig,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- fallbacks


class ConstantFallbackConfig(_Strict):
    """Always the same action, e.g. a no-op."""

    kind: Literal["constant"] = "constant"
    action: float | int | list[float] | list[int] = Field(
        description="The action, shaped like the action space."
    )


class OnnxPolicyFallbackConfig(_Strict):
    """A backup policy in ONNX: observation batch in, action (or logits) batch out."""

    kind: Literal["onnx_policy"] = "onnx_policy"
    model: str = Field(description="Path to the .onnx file, relative to the config file.")
    output: Literal["action", "logits"] = Field(
        "action", description="'logits' takes the argmax (discrete actions); 'action' uses the output as is."
    )
    input_name: str | None = Field(None, description="Graph input to feed; defaults to the first input.")
    output_name: str | None = Field(None, description="Graph output to read; defaults to the first output.")


class ClipFallbackConfig(_Strict):
    """Projects the proposed action onto the box bounds (NaN becomes the midpoint)."""

    kind: Literal["clip"] = "clip"


class ShieldFallbackConfig(_Strict):
    """Among the actions a tabular reachability monitor allows, the one the agent prefers.

    Preference: ``scores`` (the agent's Q-values or logits, higher first) when given, else
    ``order``, else the lowest action index. Where no action is allowed (a lost state), the
    action with the highest probability of staying safe.
    """

    kind: Literal["shield"] = "shield"
    monitor: str = Field("reachability", description="Name of the tabular reachability monitor.")
    scores: str | None = Field(
        None,
        description="The agent's preferences: a .npy table [n_states, n_actions], or an .onnx model "
        "from observation batch to [batch, n_actions] Q-values or logits.",
    )
    order: list[int] | None = Field(
        None, description="Actions from most to least preferred (used without scores)."
    )


class BackupFallbackConfig(_Strict):
    """The backup policy of a dynamics reachability monitor: the Simplex-architecture switch."""

    kind: Literal["backup"] = "backup"
    monitor: str = Field("reachability", description="Name of the dynamics reachability monitor.")


class RecoverFallbackConfig(_Strict):
    """The candidate action with the best worst-case recoverability under a dynamics reachability monitor.

    Candidates: every action (discrete), or ``candidates`` samples in the box plus the backup
    policy's action and the proposed action clipped to the box. Ranked by the share of failing
    members, then the worst-case margin, then closeness to the proposed action.
    """

    kind: Literal["recover"] = "recover"
    monitor: str = Field("reachability", description="Name of the dynamics reachability monitor.")
    candidates: int = Field(16, gt=0, le=4096, description="Box actions: how many random candidates.")
    seed: int = Field(0, description="Seed of the candidate sampler (fixed candidates across calls).")


class ShieldChoiceFallbackConfig(_Strict):
    """The model-predictive shield's choice among a dynamics reachability monitor's candidates.

    Per row: the proposed action if its worst case over members stays inside the constraints;
    else, among the safe candidates, the one the agent scores highest (``scores``: its logits or
    Q-values, discrete actions) or, without scores, the one with the largest worst-case margin;
    else (no safe candidate) the candidate with the fewest failing members, then the largest
    worst-case margin.
    """

    kind: Literal["shield_choice"] = "shield_choice"
    monitor: str = Field("reachability", description="Name of the dynamics reachability monitor.")
    scores: str | None = Field(
        None, description="The agent's preferences: .onnx from observation batch to [batch, n_actions]."
    )
    candidates: int = Field(
        16, gt=0, le=4096, description="Box actions, when the monitor has no candidates: samples."
    )
    seed: int = Field(0, description="Seed of the candidate sampler (when the monitor has no candidates).")


class PythonFallbackConfig(_Strict):
    """An operator's controller in Python: ``callable(observations, actions, batch) -> actions``.

    Returns ``[batch]`` (discrete) or ``[batch, *action_shape]``; see docs/shield.md (plugins).
    """

    kind: Literal["python"] = "python"
    callable: str = Field(
        description="'package.module:attribute' (a function, or a class built with kwargs)."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor or keyword arguments.")


class RobustFallbackConfig(_Strict):
    """The action with the best lower confidence bound of a Q-ensemble (maximin over members)."""

    kind: Literal["robust"] = "robust"
    model: str = Field(description="Fused Q-ensemble .onnx: obs -> Q [members, batch, n_actions].")
    output_name: str | None = Field(None, description="Graph output to read; defaults to the first output.")
    bound: Literal["min", "mean_minus_std"] = Field(
        "min", description="min: the worst member's Q; mean_minus_std: mean - k * std over members."
    )
    k: float = Field(1.0, ge=0, description="Std multiplier for bound: mean_minus_std.")


class QuantilizerFallbackConfig(_Strict):
    """Samples from the top-q share of a reference policy's mass, ranked by ensemble-mean Q (Taylor 2016)."""

    kind: Literal["quantilizer"] = "quantilizer"
    model: str = Field(description="Fused Q-ensemble .onnx: obs -> Q [members, batch, n_actions].")
    output_name: str | None = Field(None, description="Q-ensemble output to read; defaults to the first.")
    reference: str | None = Field(
        None, description="Reference policy .onnx (obs -> logits or probs [batch, n]); none: uniform."
    )
    reference_output: Literal["logits", "probs"] = "logits"
    q: float = Field(0.1, gt=0, le=1, description="Share of the reference mass kept (1 = the reference).")
    seed: int = Field(0, description="Seed of the sampler (reproducible sequence of substitutes).")


FallbackConfig = Annotated[
    ConstantFallbackConfig
    | OnnxPolicyFallbackConfig
    | ClipFallbackConfig
    | RobustFallbackConfig
    | QuantilizerFallbackConfig
    | ShieldFallbackConfig
    | BackupFallbackConfig
    | RecoverFallbackConfig
    | ShieldChoiceFallbackConfig
    | PythonFallbackConfig,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- policy


class DecisionRule(_Strict):
    """One rule of the ordered decision policy: the first rule whose condition holds decides."""

    name: str = Field(description="Shown in decisions, metrics and the audit log.")
    when: str = Field(
        description="CEL condition over signals, tripped, obs, action, labels, step, agent_id, episode_id."
    )
    verdict: VerdictName
    fallback: str | None = Field(None, description="Fallback that supplies the action (substitute/escalate).")
    reason: str | None = Field(None, description="Human-readable reason added to the decision.")
    hold_while: str | None = Field(
        None,
        description="CEL condition (the same names as when): once this rule decided an episode's step, "
        "it keeps deciding the episode's next steps while this holds, even when `when` no longer does "
        "(hysteresis; needs episode_id and step on the checks). Earlier rules still come first.",
    )

    @model_validator(mode="after")
    def _needs_fallback(self) -> DecisionRule:
        if self.verdict == "substitute" and not self.fallback:
            raise ValueError(f"rule '{self.name}' has verdict substitute but names no fallback")
        return self


class PolicyConfig(_Strict):
    """Ordered rules from signals to verdicts; compiled once when the config loads."""

    rules: list[DecisionRule] = Field(default_factory=list)
    default: Literal["allow", "halt"] = Field("allow", description="Verdict when no rule fires.")


class EscalationConfig(_Strict):
    """How ESCALATE verdicts reach a human operator."""

    mode: Literal["blocking", "deferred"] = Field(
        "deferred",
        description="blocking: Check waits up to timeout for the operator; deferred: answer at once with the "
        "fail-safe fallback and follow the operator's answer once given.",
    )
    timeout_seconds: float = Field(5.0, gt=0, description="Deadline for the operator's answer.")
    fallback: str | None = Field(
        None, description="Fail-safe fallback on timeout or reject; default: the rule's."
    )
    max_pending: int = Field(
        100, gt=0, description="At most this many pending escalations per agent_id; beyond, the fail-safe."
    )
    while_pending: Literal["fallback", "halt"] = Field(
        "fallback",
        description="deferred mode, while an escalation of this agent_id waits: 'fallback' answers its later "
        "escalations with the fail-safe (no new escalation); 'halt' answers every decision with HALT until "
        "an operator answers.",
    )
    remember_seconds: float | None = Field(
        None,
        ge=0,
        description="How long an operator's answer also applies to later escalations of the same agent_id "
        "and rule without asking again. Default: 0 (ask every time) in blocking mode, 300 in deferred mode.",
    )

    @property
    def remember(self) -> float:
        """Seconds an answer is remembered (``remember_seconds`` with its mode-dependent default)."""
        if self.remember_seconds is not None:
            return self.remember_seconds
        return 300.0 if self.mode == "deferred" else 0.0


class AgentConfig(_Strict):
    """Everything Interlock knows about one agent (or a family matched by a glob)."""

    id: str = Field(description="Exact agent_id, or a glob such as 'robot-*'. The first match wins.")
    observation: ObservationSpec
    action: ActionSpec
    monitors: list[MonitorConfig] = Field(
        default_factory=lambda: list[MonitorConfig]([ActionSpaceMonitorConfig()]),
        description="Signal sources, run in order on each batch.",
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    fallbacks: dict[str, FallbackConfig] = Field(default_factory=dict)
    fail_safe: str | None = Field(
        None, description="Fallback used when a monitor, rule or fallback fails; none means HALT."
    )
    fail_mode: Literal["closed", "open"] = Field(
        "closed", description="'open' lets actions through (ALLOW) on internal errors. Use with care."
    )
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    shadow: bool = Field(
        False,
        description="Shadow mode: monitors and policy run and are recorded, but the answer is always ALLOW "
        "(the would-be verdict is in the signals and reasons). Internal errors still fail closed.",
    )

    @field_validator("monitors")
    @classmethod
    def _unique_monitor_names(cls, monitors: list[Any]) -> list[Any]:
        names = [m.name for m in monitors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"monitor names must be unique; repeated: {', '.join(dupes)} (set 'name:')")
        return monitors

    @model_validator(mode="after")
    def _fallbacks_exist(self) -> AgentConfig:
        known = set(self.fallbacks)
        wanted = [(f"policy.rules[{i}].fallback", r.fallback) for i, r in enumerate(self.policy.rules)]
        wanted += [("fail_safe", self.fail_safe), ("escalation.fallback", self.escalation.fallback)]
        for where, name in wanted:
            if name and name not in known:
                have = ", ".join(sorted(known)) or "none defined"
                raise ValueError(f"{where} names fallback '{name}', which is not in fallbacks ({have})")
        return self

    def matches(self, agent_id: str) -> bool:
        return self.id == agent_id or fnmatch.fnmatchcase(agent_id, self.id)


class OnnxConfig(_Strict):
    """ONNX Runtime settings shared by every model."""

    providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="Execution providers in order of preference; those not available here are skipped.",
    )
    intra_op_threads: int = Field(1, ge=0, description="Threads per operator (1 is fastest for small MLPs).")
    inter_op_threads: int = Field(1, ge=0)
    allow_spinning: bool = Field(False, description="Busy-wait between runs (costs CPU, saves latency).")


class BatchingConfig(_Strict):
    """Dynamic micro-batching of concurrent Check/CheckStream requests (one engine run for many agents)."""

    max_batch: int = Field(64, gt=0, description="Most requests decided together.")
    max_delay_ms: float = Field(
        0.0, ge=0, description="Longest wait of a request for others to batch with; 0 turns batching off."
    )


class AuditRetention(_Strict):
    """How long audit records are kept; pruned in the background by the writer."""

    max_age_days: float | None = Field(None, gt=0, description="Delete records older than this.")
    max_rows: int | None = Field(None, gt=0, description="Keep at most this many records (newest kept).")
    interval_seconds: float = Field(300.0, gt=0, description="How often retention runs.")


class AuditConfig(_Strict):
    """The durable decision log (SQLite in WAL mode, or PostgreSQL).

    Records are committed before the answer is returned; concurrent writes share
    one transaction (group commit).
    """

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str = Field("interlock-audit.db", description="SQLite file, relative to the config file's folder.")
    dsn: str | None = Field(
        None,
        description="PostgreSQL connection string (backend postgres); '${ENV}' reads an environment "
        "variable, e.g. '${INTERLOCK_AUDIT_DSN}'.",
    )
    record: Literal["non_allow", "all"] = Field(
        "non_allow", description="non_allow: every decision except a plain ALLOW; all: every decision."
    )
    sample_allow: float = Field(
        0.0, ge=0, le=1, description="With record non_allow, this share of plain ALLOWs is recorded too."
    )
    fail_mode: Literal["closed", "open"] = Field(
        "closed",
        description="closed: when a record cannot be written the call fails with UNAVAILABLE (the agent "
        "must not act); open: answer anyway and count interlock_audit_errors_total.",
    )
    synchronous: Literal["full", "normal"] = Field(
        "full", description="SQLite: full fsyncs every commit (survives power loss); normal survives crashes."
    )
    max_batch: int = Field(1024, gt=0, description="Most records in one group-commit transaction.")
    retention: AuditRetention = Field(default_factory=AuditRetention)


class TlsConfig(_Strict):
    """TLS for every service on the port; client_ca turns on mutual TLS. Reloaded with the config."""

    cert: str = Field(description="PEM server certificate chain, relative to the config file.")
    key: str = Field(description="PEM private key of the certificate.")
    client_ca: str | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."
    )


class ReloadConfig(_Strict):
    """Hot reload: SIGHUP always reloads; watch polls the config and model files' mtimes."""

    watch: bool = Field(True, description="Reload when the config file or a model file changes.")
    poll_seconds: float = Field(2.0, gt=0, description="How often to look at the files' mtimes.")


class ServerConfig(_Strict):
    """Where and how the gRPC service listens."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int | None = Field(9464, ge=0, le=65535, description="Prometheus port; null disables.")
    max_message_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Largest request accepted.")
    max_batch: int = Field(4096, gt=0, description="Most requests in one CheckBatch.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    max_concurrent_rpcs: int | None = Field(
        None, gt=0, description="Calls in flight beyond this get RESOURCE_EXHAUSTED (health is exempt)."
    )
    grace_seconds: float = Field(10.0, ge=0, description="On SIGTERM, time for in-flight calls to finish.")
    drain_seconds: float = Field(
        0.0, ge=0, description="On SIGTERM, report NOT_SERVING this long before refusing new calls."
    )
    audit: AuditConfig | None = Field(None, description="Durable decision log; none disables it.")
    tls: TlsConfig | None = Field(None, description="TLS / mTLS; none serves plaintext (loopback only!).")
    reload: ReloadConfig = Field(default_factory=ReloadConfig)
    console_port: int | None = Field(
        None, ge=0, le=65535, description="Port of the operator web console (0 = any free); null disables."
    )


class TokenSourceConfig(_Strict):
    """Where bearer tokens come from: an environment variable and/or a file.

    The variable holds one token; ``name`` is the name resolutions, the audit log and the
    console show for it (default: the role, ``operator`` or ``agent``). The file holds one
    token per line, optionally preceded by a name and a space (``alice 3f9c...``); blank
    lines and ``#`` comments are ignored. Tokens must be at least 16 characters.

    A source written in the config must deliver: an unset or empty variable, or a missing,
    unreadable or empty file, stops the server at start and is rejected on hot reload. Only
    the built-in default (``$INTERLOCK_OPERATOR_TOKEN`` when ``auth.operator_tokens`` is not
    written) may be absent.
    """

    env: str | None = Field(None, description="Environment variable holding one token.")
    name: str | None = Field(
        None,
        min_length=1,
        pattern=r"^\S+$",
        description="Name of the token in 'env' (one word; default: the role, 'operator' or 'agent'). "
        "Token files name their tokens per line ('NAME TOKEN').",
    )
    file: str | None = Field(None, description="Token file, relative to the config file.")

    @model_validator(mode="after")
    def _name_needs_env(self) -> TokenSourceConfig:
        if self.name is not None and self.env is None:
            raise ValueError(
                "'name' names the token in 'env', and no 'env' is set; "
                "in a token file write 'NAME TOKEN' lines instead"
            )
        return self


class AuthConfig(_Strict):
    """Credentials of operators (Operator service, web console) and, optionally, agents (Guard)."""

    operator_tokens: TokenSourceConfig = Field(
        default_factory=lambda: TokenSourceConfig(env="INTERLOCK_OPERATOR_TOKEN"),
        description="Bearer tokens accepted on the Operator service and the console.",
    )
    agent_tokens: TokenSourceConfig = Field(
        default_factory=TokenSourceConfig,
        description="When any is configured, Guard calls must present one; they never work as operators.",
    )
    operator_common_names: list[str] = Field(
        default_factory=list,
        description="mTLS: client-certificate common names accepted as operators (needs a TLS server that "
        "verifies client certificates).",
    )


class SqliteStoreConfig(_Strict):
    """Escalations in one SQLite file (WAL mode, synchronous=FULL)."""

    kind: Literal["sqlite"] = "sqlite"
    path: str = Field("escalations.db", description="Database file, relative to the config file.")


class PostgresStoreConfig(_Strict):
    """Escalations in PostgreSQL, shared by every replica (``pip install 'interlock[postgres]'``)."""

    kind: Literal["postgres"] = "postgres"
    dsn: str = Field(description="Connection string; '${ENV}' reads an environment variable.")


class EscalationsConfig(_Strict):
    """The escalation queue shared by all agents."""

    store: Annotated[SqliteStoreConfig | PostgresStoreConfig, Field(discriminator="kind")] = Field(
        default_factory=SqliteStoreConfig
    )
    max_pending_total: int = Field(1000, gt=0, description="At most this many pending escalations in all.")


class InterlockConfig(_Strict):
    """The whole configuration file."""

    version: str | None = Field(
        None, description="Shown as config_version in every decision; default: a hash of the file."
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    onnx: OnnxConfig = Field(default_factory=OnnxConfig)
    agents: list[AgentConfig] = Field(min_length=1)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    escalations: EscalationsConfig = Field(default_factory=EscalationsConfig)

    @property
    def escalations_enabled(self) -> bool:
        """True when the config has an ``escalations:`` section or any rule escalates."""
        return "escalations" in self.model_fields_set or any(
            r.verdict == "escalate" for a in self.agents for r in a.policy.rules
        )

    def agent_for(self, agent_id: str) -> AgentConfig | None:
        return next((a for a in self.agents if a.matches(agent_id)), None)


# --------------------------------------------------------------------------- loading


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the configuration:"]
    for e in err.errors():
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        # Discriminated unions add the tag to the path ("monitors[0].rules.constraints"); keep it, it helps.
        lines.append(f"  {path or '<root>'}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> InterlockConfig:
    """Validate already-parsed YAML/JSON data; raises :class:`ConfigError` naming ``source``."""
    try:
        return InterlockConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None


class LoadedConfig:
    """A validated config with where it came from and its version string."""

    def __init__(self, config: InterlockConfig, base_dir: Path, version: str, source: str) -> None:
        self.config = config
        self.base_dir = base_dir
        self.version = version
        self.source = source

    def resolve(self, path: str) -> Path:
        """Resolve a model path relative to the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate a YAML config file.

    Raises:
        ConfigError: the file is missing, not YAML, or invalid; the message names the
            file, the key path and what is wrong.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping with at least 'agents:'")
    cfg = parse_config(data, source=str(p))
    version = cfg.version or hashlib.sha256(text.encode()).hexdigest()[:12]
    return LoadedConfig(cfg, p.resolve().parent, version, str(p))


def json_schema() -> str:
    """The JSON Schema of the configuration file, as a string."""
    return json.dumps(InterlockConfig.model_json_schema(), indent=2)
