"""A batched kinematic model of highway-fast-v0 for a shield over the five meta-actions.

Input is only what the agent sees: highway-env's default ``Kinematics`` observation (5 rows x 5
features: presence, x, y, vx, vy; row 0 the ego in absolute normalised coordinates, rows 1-4 the
nearest vehicles relative to the ego; see ``interlock.yaml`` for the normalisation), flattened or
not. An agent on the wire therefore needs to send nothing new.

For every candidate meta-action (0 LANE_LEFT, 1 IDLE, 2 LANE_RIGHT, 3 FASTER, 4 SLOWER) the model
rolls the ego forward ``horizon`` decisions (one decision per second, ``simulation_frequency``
sub-steps each) with a copy of highway-env's own controllers
(``highway_env/vehicle/controller.py``, highway-env 1.12):

* speed: ``MDPVehicle`` -- FASTER / SLOWER set the target speed to the grid point one above /
  below the grid point nearest the *current* speed (clipped to the grid); the speed then follows
  the proportional controller ``a = (target - v) / 0.6 s`` (no acceleration limit for the ego);
* lane: LANE_LEFT / LANE_RIGHT move the *target* lane by one (clipped to the road); the steering
  is the cascaded lateral-position -> heading -> steering controller (``TAU_LATERAL`` 0.6 s,
  ``TAU_HEADING`` 0.2 s) integrated through the kinematic bicycle model of ``Vehicle.step``; a
  lane change takes about 2-3 s and the ego occupies both lanes meanwhile;
* the first decision is the candidate; the following ``horizon - 1`` decisions follow each of the
  ``followups`` plans ("hold": IDLE, "brake": SLOWER every decision). A candidate is as safe as
  its best follow-up (run-time assurance: an action is safe if some backup keeps the car safe
  after it).

The other vehicles move at constant velocity (their observed vx, vy, so a lane change in progress
continues); optionally, vehicles ahead of the ego brake at ``lead_decel`` m/s^2 until they stop
(the worst case of highway-env's IDM drivers is -6 m/s^2).

The margin of a candidate is the smallest bumper-to-bumper gap in metres, over the predicted
sub-steps ``t > 0`` and over the observed vehicles whose lateral distance to the ego is below
``lateral_clearance`` at that instant (two 2 m wide cars overlap below 2 m), capped at
``max_margin``. A negative margin is a predicted collision. Unobserved vehicles (beyond the 4
nearest, or more than 10 m behind: highway-env's default ``see_behind=False``) cannot enter it.

The interface is plain numpy, batch first, so it can serve as an Interlock ``kind: python``
model::

    model = KinematicModel(target_speeds=(0, 5, 10, 15, 20, 25, 30), horizon=2)
    model.margins(obs, actions)   # obs [batch, 25] or [batch, 5, 5], actions [batch] -> [batch]
    model.margins_all(obs)        # -> [batch, 5], one column per meta-action
    model.rollout(obs, actions)   # the predicted trajectories, for inspection
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER = range(5)
N_ACTIONS = 5
ACTION_NAMES = ("LANE_LEFT", "IDLE", "LANE_RIGHT", "FASTER", "SLOWER")
#: highway-env's defaults for highway-fast-v0 (Kinematics observation, 3 lanes).
OBS_ROWS = 5
OBS_FEATURES = 5
X_SCALE = 200.0  # 5 * Vehicle.MAX_SPEED
V_SCALE = 80.0  # 2 * Vehicle.MAX_SPEED
LANE_WIDTH = 4.0
VEHICLE_LENGTH = 5.0
# ControlledVehicle constants (highway_env/vehicle/controller.py).
TAU_ACC = 0.6
TAU_HEADING = 0.2
TAU_LATERAL = 0.6
MAX_STEERING_ANGLE = np.pi / 3
_FOLLOWUP_ACTIONS = {"hold": IDLE, "brake": SLOWER, "left": LANE_LEFT, "right": LANE_RIGHT}


class Rollout(NamedTuple):
    """Predicted trajectories; T = horizon * simulation_frequency sub-steps after now.

    ``ego_x``, ``ego_y``, ``ego_v``: [batch, n_followups, T] (x relative to the ego's position now);
    ``others_x``, ``others_y``: [batch, n_followups, T, 4] in the same frame; ``present``: [batch, 4];
    ``gaps``: [batch, n_followups, T, 4] bumper gap in metres where laterally overlapping, else +inf.
    """

    ego_x: np.ndarray
    ego_y: np.ndarray
    ego_v: np.ndarray
    others_x: np.ndarray
    others_y: np.ndarray
    present: np.ndarray
    gaps: np.ndarray


@dataclass
class KinematicModel:
    """Predicts the ego's gap to the observed vehicles under each meta-action (see module doc).

    Attributes:
        target_speeds: the env's ``action.target_speeds`` in m/s (uniformly spaced, ascending);
            highway-env's default is (20, 25, 30).
        horizon: decisions to roll out (the first is the candidate).
        followups: plans after the candidate: "hold" (IDLE), "brake" (SLOWER), "left" (LANE_LEFT
            then IDLE), "right" (LANE_RIGHT then IDLE).
        lead_decel: worst-case braking (m/s^2, >= 0) of every vehicle ahead of the ego; 0 keeps
            constant velocity.
        others_model: "constant" (constant velocity, optionally ``lead_decel`` / observed
            accelerations) or "idm": each observed vehicle follows highway-env's IDM
            (``IDMVehicle.acceleration``: comfort 3 m/s^2, jam distance 10 m centre to centre,
            time gap 1.5 s, delta 4, clipped to +-6 m/s^2) behind the nearest vehicle ahead of it in
            its lane among the ego and the observed ones (none: free road), with target speed
            ``max(observed speed, idm_target_speed)`` (highway-env draws the others' target speeds
            around 21-24 m/s; it is not observed). Lateral motion stays constant velocity.
        idm_target_speed: the lowest target speed assumed for "idm" (m/s).
        lateral_clearance: lateral distance (m) below which the ego and a vehicle share a lane.
        max_margin: cap on the margin (m) when no vehicle is in the ego's way.
        lanes_count: lanes of the road (lane 0 at y = 0 m, the leftmost).
        simulation_frequency: sub-steps per decision (highway-fast-v0: 5 per 1 s decision).
    """

    target_speeds: tuple[float, ...] = (20.0, 25.0, 30.0)
    horizon: int = 2
    followups: tuple[str, ...] = ("hold", "brake")
    lead_decel: float = 0.0
    others_model: str = "constant"
    idm_target_speed: float = 21.0
    lateral_clearance: float = 2.0
    max_margin: float = 100.0
    lanes_count: int = 3
    simulation_frequency: int = 5
    _speeds: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._speeds = np.asarray(self.target_speeds, dtype=np.float64)
        if self._speeds.ndim != 1 or self._speeds.size < 2 or np.any(np.diff(self._speeds) <= 0):
            raise ValueError(
                f"target_speeds must be at least 2 ascending speeds, got {self.target_speeds}"
            )
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1 decision, got {self.horizon}")
        unknown = set(self.followups) - set(_FOLLOWUP_ACTIONS)
        if not self.followups or unknown:
            raise ValueError(
                f"followups must be a non-empty subset of {sorted(_FOLLOWUP_ACTIONS)}, got {self.followups}"
            )
        if self.others_model not in ("constant", "idm"):
            raise ValueError(f"others_model must be 'constant' or 'idm', got {self.others_model!r}")
        if self.lead_decel < 0:
            raise ValueError(f"lead_decel is a deceleration magnitude (>= 0), got {self.lead_decel}")

    # -- helpers ---------------------------------------------------------------------------
    def _speed_to_index(self, speed: np.ndarray) -> np.ndarray:
        """MDPVehicle.speed_to_index: nearest grid point of a uniform grid. [...] -> [...] int."""
        s = self._speeds
        x = (speed - s[0]) / (s[-1] - s[0])
        return np.clip(np.round(x * (s.size - 1)), 0, s.size - 1).astype(np.int64)

    @staticmethod
    def _rows(obs: np.ndarray) -> np.ndarray:
        """[batch, 25] or [batch, 5, 5] -> [batch, 5, 5] float64."""
        obs = np.asarray(obs, dtype=np.float64)
        if obs.ndim == 2 and obs.shape[1] == OBS_ROWS * OBS_FEATURES:
            return obs.reshape(-1, OBS_ROWS, OBS_FEATURES)
        if obs.ndim == 3 and obs.shape[1:] == (OBS_ROWS, OBS_FEATURES):
            return obs
        raise ValueError(
            f"obs must be [batch, 25] or [batch, 5, 5] (highway-env Kinematics, presence/x/y/vx/vy), "
            f"got shape {obs.shape}"
        )

    # -- the model -------------------------------------------------------------------------
    def rollout(self, obs: np.ndarray, actions: np.ndarray,
                others_accel: np.ndarray | None = None) -> Rollout:
        """Roll out each row's candidate meta-action followed by each follow-up plan.

        Args:
            obs: [batch, 25] or [batch, 5, 5] normalised Kinematics observations.
            actions: [batch] meta-action indices in 0..4.
            others_accel: [batch, 4] longitudinal accelerations (m/s^2) of the observed vehicles,
                held over the horizon (a braking vehicle stops at 0 m/s), e.g. estimated from the
                episode's previous observation (``highway_shield.EpisodeMemory``); None or 0:
                constant velocity. ``lead_decel`` still applies on top to vehicles ahead.

        Returns:
            A :class:`Rollout` with arrays [batch, n_followups, T, ...].
        """
        rows = self._rows(obs)
        actions = np.asarray(actions, dtype=np.int64).reshape(-1)
        if actions.shape[0] != rows.shape[0]:
            raise ValueError(f"actions must be [batch={rows.shape[0]}], got shape {actions.shape}")
        if np.any((actions < 0) | (actions >= N_ACTIONS)):
            raise ValueError(f"actions must be meta-action indices 0..4, got {actions}")
        batch, n_plans = rows.shape[0], len(self.followups)
        dt = 1.0 / self.simulation_frequency

        # The ego, in metres: x = 0 now; y absolute (lane k at 4k m); speed and heading from vx, vy.
        ego = rows[:, 0, :]
        y0 = ego[:, 2] * LANE_WIDTH * self.lanes_count
        vx0, vy0 = ego[:, 3] * V_SCALE, ego[:, 4] * V_SCALE
        speed0 = np.hypot(vx0, vy0)
        heading0 = np.arctan2(vy0, vx0)
        # The target lane is not observed: the nearest lane centre, or the next one in the direction
        # of a lane change in progress (|vy| > 0.5 m/s).
        drift = np.where(np.abs(vy0) > 0.5, np.sign(vy0) * 0.49, 0.0)
        lane0 = np.clip(np.round(y0 / LANE_WIDTH + drift), 0, self.lanes_count - 1)
        # The target speed is not observed either: the grid point nearest the speed (the P
        # controller closes 87% of a step within one decision, so this is exact after one).
        target0 = self._speeds[self._speed_to_index(speed0)]

        def tile(a: np.ndarray) -> np.ndarray:  # [batch] -> [batch, n_plans]
            return np.repeat(a[:, None], n_plans, axis=1).astype(np.float64)

        x, y, v, heading = np.zeros((batch, n_plans)), tile(y0), tile(speed0), tile(heading0)
        lane, target = tile(lane0), tile(target0)
        plan_actions = np.array([_FOLLOWUP_ACTIONS[f] for f in self.followups])  # [n_plans]
        # After its first decision a lane-change plan holds (IDLE); brake keeps braking.
        plan_later = np.where(plan_actions == SLOWER, SLOWER, IDLE)

        # Others, absolute velocities in the ego's frame (their observed features are relative).
        oth = rows[:, 1:, :]
        present = oth[:, :, 0] > 0.5  # [batch, 4]
        ox = np.repeat((oth[:, :, 1] * X_SCALE)[:, None, :], n_plans, axis=1)  # [batch, P, 4]
        oy = np.repeat((y0[:, None] + oth[:, :, 2] * LANE_WIDTH * self.lanes_count)[:, None, :],
                       n_plans, axis=1)
        ovx = np.repeat((vx0[:, None] + oth[:, :, 3] * V_SCALE)[:, None, :], n_plans, axis=1)
        ovy = np.repeat((vy0[:, None] + oth[:, :, 4] * V_SCALE)[:, None, :], n_plans, axis=1)
        ahead = ox > 0.0
        if others_accel is None:
            acc = np.zeros_like(ovx)
        else:
            acc = np.asarray(others_accel, dtype=np.float64).reshape(batch, 4)
            if not np.all(np.isfinite(acc)):
                raise ValueError("others_accel must be finite (m/s^2), got non-finite values")
            acc = np.repeat(acc[:, None, :], n_plans, axis=1)
        accelerating = acc != 0.0
        idm_v0 = np.maximum(ovx, self.idm_target_speed)  # [batch, P, 4]
        not_self = ~np.eye(4, 5, k=1, dtype=bool)  # [4 followers, 5 candidates: ego, others]

        steps = self.horizon * self.simulation_frequency
        out = {k: np.empty((batch, n_plans, steps)) for k in ("ex", "ey", "ev")}
        out_ox = np.empty((batch, n_plans, steps, 4))
        out_oy = np.empty((batch, n_plans, steps, 4))
        for k in range(steps):
            if k % self.simulation_frequency == 0:  # a decision: candidate first, then the plan
                if k == 0:
                    act = np.repeat(actions[:, None], n_plans, axis=1)
                elif k == self.simulation_frequency:  # a plan's own action, then it holds
                    act = np.broadcast_to(plan_actions, (batch, n_plans))
                else:
                    act = np.broadcast_to(plan_later, (batch, n_plans))
                idx = self._speed_to_index(v)
                target = np.where(act == FASTER, self._speeds[np.clip(idx + 1, 0, self._speeds.size - 1)],
                                  target)
                target = np.where(act == SLOWER, self._speeds[np.clip(idx - 1, 0, self._speeds.size - 1)],
                                  target)
                lane = np.where(act == LANE_LEFT, np.maximum(lane - 1, 0), lane)
                lane = np.where(act == LANE_RIGHT, np.minimum(lane + 1, self.lanes_count - 1), lane)
            # ControlledVehicle.steering_control on a straight lane (lane heading 0).
            v_nz = np.where(np.abs(v) < 1e-2, 1e-2, v)  # utils.not_zero
            lateral = y - lane * LANE_WIDTH
            heading_cmd = np.arcsin(np.clip(-lateral / TAU_LATERAL / v_nz, -1, 1))
            heading_ref = np.clip(heading_cmd, -np.pi / 4, np.pi / 4)
            heading_rate = (heading_ref - heading + np.pi) % (2 * np.pi) - np.pi
            heading_rate /= TAU_HEADING
            slip = np.arcsin(np.clip(VEHICLE_LENGTH / 2 / v_nz * heading_rate, -1, 1))
            steering = np.clip(np.arctan(2 * np.tan(slip)), -MAX_STEERING_ANGLE, MAX_STEERING_ANGLE)
            accel = (target - v) / TAU_ACC  # ControlledVehicle.speed_control
            if self.others_model == "idm":  # the others' IDM, from the state before this sub-step
                idm_accel = self._idm(x, y, v, ox, oy, ovx, present, idm_v0, not_self)
            # Vehicle.step: position with the old speed, then heading and speed.
            beta = np.arctan(0.5 * np.tan(steering))
            x = x + v * np.cos(heading + beta) * dt
            y = y + v * np.sin(heading + beta) * dt
            heading = heading + v * np.sin(beta) / (VEHICLE_LENGTH / 2) * dt
            v = v + accel * dt
            # Others: constant velocity, vehicles ahead optionally braking to a stop.
            ox = ox + ovx * dt
            oy = oy + ovy * dt
            if accelerating.any():  # observed accelerations, braking no further than a stop
                ovx = np.where(accelerating, np.where(acc < 0, np.maximum(ovx + acc * dt, 0.0),
                                                      ovx + acc * dt), ovx)
            if self.lead_decel > 0:
                ovx = np.where(ahead, np.maximum(ovx - self.lead_decel * dt, 0.0), ovx)
            if self.others_model == "idm":
                ovx = np.maximum(ovx + idm_accel * dt, 0.0)
            out["ex"][:, :, k], out["ey"][:, :, k], out["ev"][:, :, k] = x, y, v
            out_ox[:, :, k, :], out_oy[:, :, k, :] = ox, oy

        overlap = (np.abs(out_oy - out["ey"][..., None]) < self.lateral_clearance) & present[:, None, None, :]
        gaps = np.where(overlap, np.abs(out_ox - out["ex"][..., None]) - VEHICLE_LENGTH, np.inf)
        return Rollout(out["ex"], out["ey"], out["ev"], out_ox, out_oy, present, gaps)

    def _idm(self, x, y, v, ox, oy, ovx, present, v0, not_self) -> np.ndarray:
        """highway-env's IDM acceleration of each observed vehicle: [batch, P, 4] m/s^2.

        ``x, y, v``: the ego [batch, P]; ``ox, oy, ovx``: the others [batch, P, 4];
        ``present`` [batch, 4]; ``v0`` target speeds [batch, P, 4]; ``not_self`` [4, 5].
        """
        all_x = np.concatenate([x[..., None], ox], axis=-1)  # [B, P, 5]: ego first
        all_y = np.concatenate([y[..., None], oy], axis=-1)
        all_v = np.concatenate([v[..., None], ovx], axis=-1)
        all_present = np.concatenate([np.ones_like(present[:, :1]), present], axis=-1)  # [B, 5]
        ahead = all_x[..., None, :] - ox[..., :, None]  # [B, P, 4 followers, 5 candidates]
        same_lane = np.abs(all_y[..., None, :] - oy[..., :, None]) < self.lateral_clearance
        front = same_lane & (ahead > 0) & all_present[:, None, None, :] & not_self
        distance = np.where(front, ahead, np.inf)
        nearest = np.argmin(distance, axis=-1)[..., None]  # [B, P, 4, 1]
        d = np.take_along_axis(distance, nearest, axis=-1)[..., 0]
        front_v = np.take_along_axis(np.broadcast_to(all_v[..., None, :], distance.shape), nearest,
                                     axis=-1)[..., 0]
        speed = np.maximum(ovx, 0.0)
        accel = 3.0 * (1.0 - np.power(speed / np.maximum(v0, 1e-2), 4.0))
        gap = 10.0 + ovx * 1.5 + ovx * (ovx - front_v) / (2.0 * np.sqrt(15.0))
        has_front = np.isfinite(d)
        safe_d = np.where(has_front, np.maximum(d, 1e-2), 1.0)
        accel = accel - np.where(has_front, 3.0 * np.square(gap / safe_d), 0.0)
        return np.clip(accel, -6.0, 6.0)

    def margins(self, obs: np.ndarray, actions: np.ndarray,
                others_accel: np.ndarray | None = None) -> np.ndarray:
        """Safety margin (m) of each row's candidate: its best follow-up's smallest gap.

        Args:
            obs: [batch, 25] or [batch, 5, 5].
            actions: [batch] meta-actions 0..4.
            others_accel: [batch, 4] m/s^2 or None (see :meth:`rollout`).

        Returns:
            [batch] float64 in [-inf, max_margin]; negative = predicted collision.
        """
        r = self.rollout(obs, actions, others_accel)
        per_plan = r.gaps.min(axis=(2, 3))  # [batch, n_plans]
        return np.minimum(per_plan.max(axis=1), self.max_margin)

    def margins_all(self, obs: np.ndarray, others_accel: np.ndarray | None = None) -> np.ndarray:
        """Margins of all five meta-actions: obs [batch, 25] or [batch, 5, 5] (others_accel
        [batch, 4] m/s^2 or None) -> [batch, 5]."""
        rows = self._rows(obs)
        batch = rows.shape[0]
        rep = np.repeat(rows, N_ACTIONS, axis=0)  # [batch * 5, 5, 5], row-major per observation
        acts = np.tile(np.arange(N_ACTIONS), batch)
        acc = None if others_accel is None else np.repeat(np.asarray(others_accel).reshape(batch, 4),
                                                          N_ACTIONS, axis=0)
        return self.margins(rep, acts, acc).reshape(batch, N_ACTIONS)


def shield_choice(margins: np.ndarray, q: np.ndarray | None, proposed: np.ndarray,
                  threshold: float, tie_tolerance: float = 0.0) -> np.ndarray:
    """The shield's action per row: the proposal if safe, else the safe action the agent
    prefers (highest ``q``; without ``q``: the largest margin), else the largest margin
    (among the actions within ``tie_tolerance`` metres of the largest, the one with the highest
    ``q``: several actions often share the same closest vehicle, hence the same margin). When
    nothing is safe and the proposal itself is within ``tie_tolerance`` of the largest margin, the
    proposal is kept (:func:`improvable`: nothing is strictly better; for a greedy agent whose
    ``q`` this is, the Q tie-break picks the proposal anyway).

    Args:
        margins: [batch, 5] from :meth:`KinematicModel.margins_all`.
        q: [batch, 5] the agent's Q-values or logits, or None.
        proposed: [batch] the agent's actions.
        threshold: the margin (m) an action needs to count as safe.
        tie_tolerance: margins (m) this close to the largest count as equally good when no
            action is safe; 0 takes the first largest.

    Returns:
        [batch] int64 actions.
    """
    proposed = np.asarray(proposed, dtype=np.int64)
    safe = margins >= threshold
    prefer = q if q is not None else margins
    best_safe = np.argmax(np.where(safe, prefer, -np.inf), axis=1)
    near_best = margins >= margins.max(axis=1, keepdims=True) - tie_tolerance
    least_bad = np.argmax(np.where(near_best, prefer, -np.inf), axis=1)
    fallback = np.where(safe.any(axis=1), best_safe, least_bad)
    keep = ~improvable(margins, proposed, threshold, tie_tolerance)
    return np.where(keep, proposed, fallback).astype(np.int64)


def improvable(margins: np.ndarray, proposed: np.ndarray, threshold: float,
               tie_tolerance: float = 0.0) -> np.ndarray:
    """[batch] bool: some meta-action is strictly safer than the proposal, so the shield changes it.

    The proposal is kept when it is safe (margin >= ``threshold``) and also when nothing is safe
    and its margin is within ``tie_tolerance`` of the largest: the shield then has nothing strictly
    better to offer (it would only trade one least-bad action for another by the agent's Q).

    Args:
        margins: [batch, n] margins (m); a proposal outside the columns must be given as a column
            of -inf (then it is always improvable).
        proposed: [batch] column indices.
        threshold, tie_tolerance: as :func:`shield_choice`.
    """
    proposed = np.asarray(proposed, dtype=np.int64)
    rows = np.arange(margins.shape[0])
    own = margins[rows, proposed]
    safe_exists = (margins >= threshold).any(axis=1)
    near_best = own >= margins.max(axis=1) - tie_tolerance
    return ~(own >= threshold) & (safe_exists | ~near_best)


def estimate_accel(previous: np.ndarray, current: np.ndarray, dt: float = 1.0, match_tolerance: float = 4.0,
                   accel_range: tuple[float, float] = (-6.0, 3.0)) -> np.ndarray:
    """Longitudinal accelerations (m/s^2) of the vehicles observed now, from the previous observation.

    The observation has no vehicle identities, so each vehicle seen now is matched to the previous
    observation's vehicle whose predicted position (constant velocity over ``dt``, in the ego's
    frame, the ego having moved at its mean speed) is nearest along the road, within
    ``match_tolerance`` metres and 2.5 m laterally; its acceleration is the change of its absolute
    vx over ``dt``, clipped to ``accel_range`` (highway-env's IDM: -6 .. +3 m/s^2). Unmatched or
    absent vehicles get 0 (constant velocity).

    Args:
        previous, current: [batch, 25] or [batch, 5, 5] observations one decision (``dt`` s) apart
            in the same episode.

    Returns:
        [batch, 4] float64, one column per observed vehicle of ``current`` (rows 1-4).
    """
    prev, cur = KinematicModel._rows(previous), KinematicModel._rows(current)
    if prev.shape != cur.shape:
        raise ValueError(f"previous and current observations differ in shape: {prev.shape} vs {cur.shape}")
    lat_scale = LANE_WIDTH * 3  # y normalisation of the 3-lane road

    def absolute(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        ego = rows[:, 0, :]
        dx = rows[:, 1:, 1] * X_SCALE
        y = (ego[:, 2:3] + rows[:, 1:, 2]) * lat_scale
        vx = (ego[:, 3:4] + rows[:, 1:, 3]) * V_SCALE
        vy = (ego[:, 4:5] + rows[:, 1:, 4]) * V_SCALE
        return rows[:, 1:, 0] > 0.5, dx, y, vx, vy

    p_present, p_dx, p_y, p_vx, p_vy = absolute(prev)
    c_present, c_dx, c_y, c_vx, _ = absolute(cur)
    ego_shift = 0.5 * (prev[:, 0, 3] + cur[:, 0, 3]) * V_SCALE * dt  # [batch]
    pred_dx = p_dx + p_vx * dt - ego_shift[:, None]  # [batch, 4] in the current ego frame
    pred_y = p_y + p_vy * dt
    dist = np.abs(c_dx[:, :, None] - pred_dx[:, None, :])  # [batch, cur 4, prev 4]
    ok = (c_present[:, :, None] & p_present[:, None, :]
          & (np.abs(c_y[:, :, None] - pred_y[:, None, :]) < 2.5) & (dist < match_tolerance))
    dist = np.where(ok, dist, np.inf)
    nearest = np.argmin(dist, axis=2)  # [batch, 4]
    matched = np.isfinite(np.take_along_axis(dist, nearest[..., None], axis=2)[..., 0])
    accel = (c_vx - np.take_along_axis(p_vx, nearest, axis=1)) / dt
    return np.where(matched, np.clip(accel, *accel_range), 0.0)


def shield_choice_ranked(margins: np.ndarray, ranking: np.ndarray, q: np.ndarray | None,
                         proposed: np.ndarray, threshold: float, tie_tolerance: float = 0.0) -> np.ndarray:
    """:func:`shield_choice` whose substitute also looks further ahead.

    Whether the proposal is kept is decided by ``margins`` alone (the short horizon, so nominal
    interventions stay those of :func:`shield_choice`). A substitute is then the action the agent
    prefers (highest ``q``) among those safe under both ``margins`` and ``ranking`` (a longer
    horizon's margins, e.g. two decisions with lane-change follow-ups); else, among the actions
    safe under ``margins`` -- or, when none is, among the least bad ones (within ``tie_tolerance``
    of the largest margin) -- the largest ``ranking`` margin (``q`` breaking ties within
    ``tie_tolerance``).

    Args:
        margins, ranking: [batch, 5] margins (m) of the short and the long horizon.
        q: [batch, 5] or None; proposed: [batch]; threshold, tie_tolerance: as :func:`shield_choice`.

    Returns:
        [batch] int64 actions.
    """
    proposed = np.asarray(proposed, dtype=np.int64)
    prefer = q if q is not None else ranking
    safe = margins >= threshold
    both = safe & (ranking >= threshold)
    best_both = np.argmax(np.where(both, prefer, -np.inf), axis=1)
    # Nothing safe: the candidates are the least bad under ``margins`` (within tie_tolerance).
    least_bad = margins >= margins.max(axis=1, keepdims=True) - tie_tolerance
    pool = np.where(safe.any(axis=1, keepdims=True), safe, least_bad)
    ranked = np.where(pool, ranking, -np.inf)
    near = pool & (ranked >= ranked.max(axis=1, keepdims=True) - tie_tolerance)
    best_pool = np.argmax(np.where(near, prefer, -np.inf), axis=1)
    choice = np.where(both.any(axis=1), best_both, best_pool)
    keep = ~improvable(margins, proposed, threshold, tie_tolerance)
    return np.where(keep, proposed, choice).astype(np.int64)


def trapped_margins(margins: np.ndarray, ranking: np.ndarray, trap_threshold: float) -> np.ndarray:
    """``margins`` [batch, 5] with every action whose longer-horizon ``ranking`` margin is below
    ``trap_threshold`` (a predicted collision a decision later whatever follows, e.g. 0 m) lowered
    to that ranking margin: an action safe for one decision but leading into a trap is unsafe."""
    return np.where(ranking < trap_threshold, np.minimum(margins, ranking), margins)
