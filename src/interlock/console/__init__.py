"""The operator web console (see ``interlock.console.server``)."""
