"""Channel adapters: where messages go. See base.Channel for the contract."""
