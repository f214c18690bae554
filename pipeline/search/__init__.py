"""The searchable index: database codes + everything needed to encode a new query."""
