"""Reachability: exact and probabilistic shields over finite models, recoverability over learned ones.

See ``docs/reachability.md``. Modules:

* :mod:`~interlock.reachability.tabular` - finite models and the games solved on them;
* :mod:`~interlock.reachability.shield_build` - the cached tables and ``interlock shield build``;
* :mod:`~interlock.reachability.constraints` - CEL conditions over batches of states;
* :mod:`~interlock.reachability.recoverability` - backup-policy rollouts under an ensemble.
"""
