"""Signal processing shared by the daemon and the training code."""
