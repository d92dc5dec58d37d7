"""Human escalation: a durable queue of decisions waiting for an operator.

* :mod:`~interlock.escalation.model` - :class:`Escalation`, :class:`EscalationState`, :class:`Resolution`
  (plain dataclasses and enums);
* :mod:`~interlock.escalation.convert` - the edge: ``interlock.v1`` messages, stored bytes, the JSON view;
* :mod:`~interlock.escalation.manager` - :class:`EscalationManager`, which wires
  :mod:`~interlock.escalation.requests` (the request path), :mod:`~interlock.escalation.index`,
  :mod:`~interlock.escalation.expiry`, :mod:`~interlock.escalation.operator` (the operator API) and
  :mod:`~interlock.escalation.watch`; :mod:`~interlock.escalation.outcome` alone changes decisions;
* :mod:`~interlock.escalation.store` - the storage interface; :mod:`~interlock.escalation.sqlite`,
  :mod:`~interlock.escalation.postgres` implement it; :mod:`~interlock.escalation.factory` picks one.
"""
