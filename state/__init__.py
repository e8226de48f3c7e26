"""Journey state, moment detection and policy. Pure: no Bytewax, Kafka or ClickHouse imports.

Compiled with mypyc when the build could (setup.py); ``BUILD`` says which build this process runs, and
sources edited since they were compiled run as pure Python rather than be shadowed (``state/_build.py``).
"""

from pathlib import Path

from state._build import Build, choose

BUILD: Build = choose(Path(__file__).resolve().parent)
