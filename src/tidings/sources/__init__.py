"""Sources: publications fed into the node's broker from outside (DESIGN.md, sources). One
module per kind."""
