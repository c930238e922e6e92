"""The chaos soak (issue 19): a fleet of three schedulers on one redis-server, synthetic nodes, sessions at
microphone pace whose clients resume, and faults drawn from a seed; invariants checked afterwards.
`python -m tests.soak --minutes 10 --seed 7` (or `make soak`); the short seeded run is test_soak.py."""
