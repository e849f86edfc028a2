"""Sources: where articles come from. See base.Source for the contract."""
