"""The experiment scripts, run from the repository root as ``python -m experiments.<name>``.

Each script is its flags plus one call; the flags of a config dataclass come from its fields
(experiments/cli.py, shared by every script).
"""
