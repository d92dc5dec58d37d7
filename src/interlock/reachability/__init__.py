"""Reachability: exact and probabilistic shields over finite models, recoverability over learned ones.

See ``docs/reachability.md``. Modules:

* :mod:`~interlock.reachability.tabular` - finite models and the games solved on them;
* :mod:`~interlock.reachability.shield_build` - the cached tables (``interlock shield build`` writes them);
* :mod:`~interlock.reachability.constraints` - CEL conditions over batches of states;
* :mod:`~interlock.reachability.recoverability` - backup-policy rollouts under an ensemble.

Public helpers for building models (used by the examples' export scripts; documented in
``docs/reachability.md``):

* :mod:`~interlock.reachability.gym_models` - tabular models of Gymnasium's CliffWalking and FrozenLake;
* :mod:`~interlock.reachability.onnx_build` - small ONNX policies and dynamics ensembles without torch.

``interlock shield build`` lives in :mod:`interlock.cli.shield`.
"""
