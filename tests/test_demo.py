"""The README's first command: `interlock demo cartpole` serves the example and drives the agent."""

from interlock.cli import main


def test_demo_cartpole_runs_guarded_and_unguarded(capsys):
    assert main(["demo", "cartpole", "--episodes", "2", "--epsilon", "0.3"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert "unguarded" in lines and "guarded" in lines
    guarded_interventions = int(lines["guarded"][3])
    assert guarded_interventions > 0  # the noisy agent does get corrected
    assert "SUBSTITUTE=" in out
