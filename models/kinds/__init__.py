"""The model kinds: one module per kind, behind one adapter protocol."""
