"""Stream handling: generator-style gadgets (iterator in, iterator out) and the
Gadgetron entry points. Items the chain does not consume are passed on unchanged."""
