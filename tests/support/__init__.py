"""Helpers the tests share (not tests themselves), one module per area.

* :mod:`tests.support.fixtures` - small configs and models for engine and server tests;
* :mod:`tests.support.ops` - subprocess servers, certificates, metrics, PostgreSQL;
* :mod:`tests.support.escalation` - agents and operators around the escalation example;
* :mod:`tests.support.ensembles` - ONNX ensemble members and transitions;
* :mod:`tests.support.bench` - the ``interlock bench --quick`` smoke harness.
"""
