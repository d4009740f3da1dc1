"""RDP of individual mechanisms and their composition."""
