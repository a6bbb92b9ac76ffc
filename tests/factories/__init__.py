"""What the tests build and share besides fixtures: test files, API calls, broker helpers,
webhook receivers. Test modules import helpers from here only (fixtures come by injection from
the conftest files); tests/unit/test_layout.py holds the tree to that."""
