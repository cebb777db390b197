"""A module no test imports: a crafted event naming it must not get it imported."""

raise AssertionError("tests.untrusted_marker was imported because of a crafted event")
