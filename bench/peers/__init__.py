"""Sync scripts written on peer clients, run by each peer's own virtualenv (`bench/sync_peers.py`).

Each reads one JSON argument (where the simulator is, its credentials, the SQLite file), fetches
the whole list the way the client's README shows, writes every record into SQLite with one
`executemany` transaction — what a script built on the public client does — and prints one JSON
line (`fetched`). They import nothing from this repository: the peer's virtualenv holds only the
peer.
"""
