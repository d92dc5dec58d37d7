"""The operator web console (see ``interlock.server.console.server``)."""
