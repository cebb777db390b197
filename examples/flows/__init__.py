"""The examples' workflows, in an importable package (``examples.flows``).

A workflow defined in the script you run is named ``__main__.X``: its runs recover
only under the same entry point, and no other process (``dbos-llama runs show``,
DBOS's tools) can read its recorded values. Defined here, they are
``examples.flows.<module>.X`` everywhere.
"""
