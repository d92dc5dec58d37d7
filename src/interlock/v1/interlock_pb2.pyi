from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]
    DATA_TYPE_BOOL: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_ALLOW: _ClassVar[Verdict]
    VERDICT_SUBSTITUTE: _ClassVar[Verdict]
    VERDICT_ESCALATE: _ClassVar[Verdict]
    VERDICT_HALT: _ClassVar[Verdict]

class EscalationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ESCALATION_STATE_UNSPECIFIED: _ClassVar[EscalationState]
    ESCALATION_STATE_PENDING: _ClassVar[EscalationState]
    ESCALATION_STATE_APPROVED: _ClassVar[EscalationState]
    ESCALATION_STATE_REJECTED: _ClassVar[EscalationState]
    ESCALATION_STATE_SUBSTITUTED: _ClassVar[EscalationState]
    ESCALATION_STATE_EXPIRED: _ClassVar[EscalationState]

class Resolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOLUTION_UNSPECIFIED: _ClassVar[Resolution]
    RESOLUTION_APPROVE: _ClassVar[Resolution]
    RESOLUTION_REJECT: _ClassVar[Resolution]
    RESOLUTION_SUBSTITUTE: _ClassVar[Resolution]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT64: DataType
DATA_TYPE_BOOL: DataType
DATA_TYPE_UINT8: DataType
VERDICT_UNSPECIFIED: Verdict
VERDICT_ALLOW: Verdict
VERDICT_SUBSTITUTE: Verdict
VERDICT_ESCALATE: Verdict
VERDICT_HALT: Verdict
ESCALATION_STATE_UNSPECIFIED: EscalationState
ESCALATION_STATE_PENDING: EscalationState
ESCALATION_STATE_APPROVED: EscalationState
ESCALATION_STATE_REJECTED: EscalationState
ESCALATION_STATE_SUBSTITUTED: EscalationState
ESCALATION_STATE_EXPIRED: EscalationState
RESOLUTION_UNSPECIFIED: Resolution
RESOLUTION_APPROVE: Resolution
RESOLUTION_REJECT: Resolution
RESOLUTION_SUBSTITUTE: Resolution

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("agent_id", "episode_id", "step", "observation", "action", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    episode_id: str
    step: int
    observation: Tensor
    action: Tensor
    labels: _containers.ScalarMap[str, str]
    def __init__(self, agent_id: _Optional[str] = ..., episode_id: _Optional[str] = ..., step: _Optional[int] = ..., observation: _Optional[_Union[Tensor, _Mapping]] = ..., action: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Signal(_message.Message):
    __slots__ = ("name", "value", "threshold", "tripped")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TRIPPED_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    threshold: float
    tripped: bool
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., tripped: _Optional[bool] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("decision_id", "verdict", "action", "signals", "reasons", "fallback", "escalation_id", "config_version", "rule", "error")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    verdict: Verdict
    action: Tensor
    signals: _containers.RepeatedCompositeFieldContainer[Signal]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    fallback: str
    escalation_id: str
    config_version: str
    rule: str
    error: CheckError
    def __init__(self, decision_id: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., action: _Optional[_Union[Tensor, _Mapping]] = ..., signals: _Optional[_Iterable[_Union[Signal, _Mapping]]] = ..., reasons: _Optional[_Iterable[str]] = ..., fallback: _Optional[str] = ..., escalation_id: _Optional[str] = ..., config_version: _Optional[str] = ..., rule: _Optional[str] = ..., error: _Optional[_Union[CheckError, _Mapping]] = ...) -> None: ...

class CheckError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class CheckBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[CheckRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[CheckRequest, _Mapping]]] = ...) -> None: ...

class CheckBatchResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class CheckColumnsRequest(_message.Message):
    __slots__ = ("agent_id", "observations", "actions", "episode_ids", "steps", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_IDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    observations: Tensor
    actions: Tensor
    episode_ids: _containers.RepeatedScalarFieldContainer[str]
    steps: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, agent_id: _Optional[str] = ..., observations: _Optional[_Union[Tensor, _Mapping]] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ..., episode_ids: _Optional[_Iterable[str]] = ..., steps: _Optional[_Iterable[int]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ColumnRow(_message.Message):
    __slots__ = ("row", "reasons", "escalation_id", "no_action", "failed_stages", "error")
    ROW_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_ID_FIELD_NUMBER: _ClassVar[int]
    NO_ACTION_FIELD_NUMBER: _ClassVar[int]
    FAILED_STAGES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    row: int
    reasons: _containers.RepeatedScalarFieldContainer[str]
    escalation_id: str
    no_action: bool
    failed_stages: _containers.RepeatedScalarFieldContainer[str]
    error: CheckError
    def __init__(self, row: _Optional[int] = ..., reasons: _Optional[_Iterable[str]] = ..., escalation_id: _Optional[str] = ..., no_action: _Optional[bool] = ..., failed_stages: _Optional[_Iterable[str]] = ..., error: _Optional[_Union[CheckError, _Mapping]] = ...) -> None: ...

class CheckColumnsResponse(_message.Message):
    __slots__ = ("verdicts", "actions", "config_version", "batch_id", "signal_names", "signals", "thresholds", "tripped", "rule_names", "rule_reasons", "rules", "fallback_names", "fallbacks", "shadow_verdicts", "details")
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_NAMES_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    TRIPPED_FIELD_NUMBER: _ClassVar[int]
    RULE_NAMES_FIELD_NUMBER: _ClassVar[int]
    RULE_REASONS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_NAMES_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERDICTS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedScalarFieldContainer[Verdict]
    actions: Tensor
    config_version: str
    batch_id: str
    signal_names: _containers.RepeatedScalarFieldContainer[str]
    signals: Tensor
    thresholds: _containers.RepeatedScalarFieldContainer[float]
    tripped: Tensor
    rule_names: _containers.RepeatedScalarFieldContainer[str]
    rule_reasons: _containers.RepeatedScalarFieldContainer[str]
    rules: _containers.RepeatedScalarFieldContainer[int]
    fallback_names: _containers.RepeatedScalarFieldContainer[str]
    fallbacks: _containers.RepeatedScalarFieldContainer[int]
    shadow_verdicts: _containers.RepeatedScalarFieldContainer[Verdict]
    details: _containers.RepeatedCompositeFieldContainer[ColumnRow]
    def __init__(self, verdicts: _Optional[_Iterable[_Union[Verdict, str]]] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ..., config_version: _Optional[str] = ..., batch_id: _Optional[str] = ..., signal_names: _Optional[_Iterable[str]] = ..., signals: _Optional[_Union[Tensor, _Mapping]] = ..., thresholds: _Optional[_Iterable[float]] = ..., tripped: _Optional[_Union[Tensor, _Mapping]] = ..., rule_names: _Optional[_Iterable[str]] = ..., rule_reasons: _Optional[_Iterable[str]] = ..., rules: _Optional[_Iterable[int]] = ..., fallback_names: _Optional[_Iterable[str]] = ..., fallbacks: _Optional[_Iterable[int]] = ..., shadow_verdicts: _Optional[_Iterable[_Union[Verdict, str]]] = ..., details: _Optional[_Iterable[_Union[ColumnRow, _Mapping]]] = ...) -> None: ...

class Escalation(_message.Message):
    __slots__ = ("escalation_id", "agent_id", "episode_id", "step", "observation", "proposed_action", "signals", "state", "fallback", "fallback_action", "created_time", "deadline_time", "resolved_time", "resolved_action", "operator", "comment", "reasons", "labels", "rule", "decision_id", "mode", "config_version", "authenticated_as")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ESCALATION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_ACTION_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ACTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_ACTION_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_AS_FIELD_NUMBER: _ClassVar[int]
    escalation_id: str
    agent_id: str
    episode_id: str
    step: int
    observation: Tensor
    proposed_action: Tensor
    signals: _containers.RepeatedCompositeFieldContainer[Signal]
    state: EscalationState
    fallback: str
    fallback_action: Tensor
    created_time: float
    deadline_time: float
    resolved_time: float
    resolved_action: Tensor
    operator: str
    comment: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    rule: str
    decision_id: str
    mode: str
    config_version: str
    authenticated_as: str
    def __init__(self, escalation_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., episode_id: _Optional[str] = ..., step: _Optional[int] = ..., observation: _Optional[_Union[Tensor, _Mapping]] = ..., proposed_action: _Optional[_Union[Tensor, _Mapping]] = ..., signals: _Optional[_Iterable[_Union[Signal, _Mapping]]] = ..., state: _Optional[_Union[EscalationState, str]] = ..., fallback: _Optional[str] = ..., fallback_action: _Optional[_Union[Tensor, _Mapping]] = ..., created_time: _Optional[float] = ..., deadline_time: _Optional[float] = ..., resolved_time: _Optional[float] = ..., resolved_action: _Optional[_Union[Tensor, _Mapping]] = ..., operator: _Optional[str] = ..., comment: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., rule: _Optional[str] = ..., decision_id: _Optional[str] = ..., mode: _Optional[str] = ..., config_version: _Optional[str] = ..., authenticated_as: _Optional[str] = ...) -> None: ...

class ListEscalationsRequest(_message.Message):
    __slots__ = ("state", "agent_id", "limit")
    STATE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    state: EscalationState
    agent_id: str
    limit: int
    def __init__(self, state: _Optional[_Union[EscalationState, str]] = ..., agent_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListEscalationsResponse(_message.Message):
    __slots__ = ("escalations",)
    ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    escalations: _containers.RepeatedCompositeFieldContainer[Escalation]
    def __init__(self, escalations: _Optional[_Iterable[_Union[Escalation, _Mapping]]] = ...) -> None: ...

class GetEscalationRequest(_message.Message):
    __slots__ = ("escalation_id",)
    ESCALATION_ID_FIELD_NUMBER: _ClassVar[int]
    escalation_id: str
    def __init__(self, escalation_id: _Optional[str] = ...) -> None: ...

class ResolveEscalationRequest(_message.Message):
    __slots__ = ("escalation_id", "resolution", "action", "operator", "comment")
    ESCALATION_ID_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    escalation_id: str
    resolution: Resolution
    action: Tensor
    operator: str
    comment: str
    def __init__(self, escalation_id: _Optional[str] = ..., resolution: _Optional[_Union[Resolution, str]] = ..., action: _Optional[_Union[Tensor, _Mapping]] = ..., operator: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class WatchEscalationsRequest(_message.Message):
    __slots__ = ("agent_id", "include_pending")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PENDING_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    include_pending: bool
    def __init__(self, agent_id: _Optional[str] = ..., include_pending: _Optional[bool] = ...) -> None: ...
