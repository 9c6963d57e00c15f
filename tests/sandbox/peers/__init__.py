"""Driver scripts run by peer clients' own virtualenvs (`tests/peer_venvs.py`).

Each reads one JSON argument (where the simulators are, the demo credentials), drives a
published client the way its README shows, and prints one JSON line of what it saw. They import
nothing from this repository: the peer's virtualenv has only the peer installed.
"""
